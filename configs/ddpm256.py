"""The 256x256 DDPM architecture shared by the CelebA-HQ, LSUN-Church and
LSUN-Bedroom checkpoints (SDEdit/DDIM releases)."""

from discovery_jax import configlib


def get_config():
  config = configlib.load_sibling(__file__, "base.py")
  config.model.arch = "ddpm"
  config.model.image_size = 256
  config.model.in_channels = 3
  config.model.out_ch = 3
  config.model.ch = 128
  config.model.ch_mult = (1, 1, 2, 2, 4, 4)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.0
  config.model.resamp_with_conv = True
  config.model.dtype = "float32"
  return config
