"""iDDPM on AFHQ-Dog 256 (`afhqdog_p2.pt`, guided-diffusion UNetModel, AFHQ_DICT)."""

from discovery_jax import configlib


def get_config():
  config = configlib.load_sibling(__file__, "base.py")
  config.name = "afhq"
  config.model.arch = "iddpm"
  config.model.image_size = 256
  config.model.in_channels = 3
  config.model.num_channels = 128
  config.model.num_res_blocks = 1
  config.model.channel_mult = (1, 1, 2, 2, 4, 4)
  config.model.attention_resolutions = (16,)
  config.model.num_head_channels = 64
  config.model.num_heads = 4  # ignored: num_head_channels sets 8 heads at 512 channels.
  config.model.learn_sigma = True
  config.model.use_scale_shift_norm = True
  config.model.resblock_updown = True
  config.model.use_new_attention_order = False
  config.model.dropout = 0.0
  config.model.dtype = "float32"
  config.checkpoint = "checkpoints/afhq"
  return config
