"""DDPM on CelebA-HQ 256 (`celeba_hq.ckpt`): the original DDPM UNet (ch 128, ch_mult 1,1,2,2,4,4)."""

from discovery_jax import configlib


def get_config():
  config = configlib.load_sibling(__file__, "ddpm256.py")
  config.name = "celeba"
  config.checkpoint = "checkpoints/celeba"
  return config
