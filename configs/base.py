"""Settings every base model shares: the diffusion schedule and DDIM sampling.

Base-model configs (afhq.py, celeba.py, church.py, bedroom.py) add ``model`` and
``checkpoint``; target-domain configs (galaxy.py, ...) choose a base and data.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.name = "base"
  config.seed = 0
  # A checkpoint directory written by `python -m convert` (or `train`).
  config.checkpoint = ""
  config.model = ml_collections.ConfigDict()

  # The real bases were trained with linear betas 1e-4..0.02 over T = 1000.
  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.beta_schedule = "linear"  # 'linear', 'cosine' or 'quadratic'.
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02
  config.diffusion.num_timesteps = 1000

  # Deterministic DDIM inversion / generation (METHOD.md step 1).
  config.sampling = ml_collections.ConfigDict()
  config.sampling.t_0 = 900
  config.sampling.n_steps = 80
  config.sampling.eta = 0.0
  config.sampling.batch_size = 8
  return config
