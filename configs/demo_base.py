"""The small in-domain base model of the embedded demo: a DDPM UNet trained from
scratch by this project's own `train` on Animal-MNIST silhouettes (32x32, 1 channel).

  pip install --no-deps animal-mnist==0.4 firstgalaxydata==0.2.1
  python -m discovery_jax.demo.prepare --train_out=runs/demo_data/id_train.npz
  XLA_FLAGS=--xla_force_host_platform_device_count=2 \
    python -m discovery_jax.train --config=configs/demo_base.py --workdir=runs/demo_base

The result is committed as discovery_jax/assets/demo/model (see TRAINING.md there).
"""

from discovery_jax import configlib


def get_config():
  config = configlib.load_sibling(__file__, "base.py")
  config.name = "demo_base"
  config.model.arch = "ddpm"
  config.model.image_size = 32
  config.model.in_channels = 1
  config.model.out_ch = 1
  config.model.ch = 32
  config.model.ch_mult = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (8,)
  config.model.dropout = 0.0
  config.model.resamp_with_conv = True
  config.model.dtype = "float32"

  config.train.data = "runs/demo_data/id_train.npz"
  config.train.steps = 6000
  config.train.batch_size = 64
  config.train.learning_rate = 3e-4
  config.train.warmup_steps = 200
  config.train.grad_clip = 1.0
  config.train.ema_decay = 0.999
  config.train.log_every = 50
  config.train.checkpoint_every = 250
  config.train.num_preview = 64
  config.sampling.n_steps = 50
  return config
