"""DDPM on LSUN-Church-Outdoor 256 (`church_outdoor.ckpt`): the original DDPM UNet (ch 128, ch_mult 1,1,2,2,4,4)."""

from discovery_jax import configlib


def get_config():
  config = configlib.load_sibling(__file__, "ddpm256.py")
  config.name = "church"
  config.checkpoint = "checkpoints/church"
  return config
