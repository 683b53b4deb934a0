"""The embedded demo: a small base model trained by this project on animal
silhouettes meets real FIRST radio galaxies it has never seen (bundled, offline).

  python -m discovery_jax.sample --config=configs/demo.py --workdir=runs/demo

Inverts the 32 few-shot galaxies, discovers 64 new latents, denoises them,
evaluates them against 256 held-out galaxies and 200 held-out silhouettes, and
writes grids, the samples and WORKDIR/summary.json (with ood_hit_rate). Data and
model: discovery_jax/assets/demo (see TRAINING.md and PROVENANCE.md there).
"""

import os

import discovery_jax
from discovery_jax import configlib

ASSETS = os.path.join(os.path.dirname(discovery_jax.__file__), "assets", "demo")


def get_config():
  config = configlib.load_sibling(__file__, "demo_base.py")
  config.name = "demo"
  config.checkpoint = os.path.join(ASSETS, "model")
  config.data.ood_dir = os.path.join(ASSETS, "ood_fewshot")
  config.data.eval_dir = os.path.join(ASSETS, "ood_heldout")
  config.data.id_dir = None  # the model's own latents are the ID reference bank
  config.evaluate.id_dir = os.path.join(ASSETS, "id_heldout")
  config.evaluate.features = "learned"  # the project's feature network (assets/feature_net); Inception is for 256 RGB
  # The largest t_0 <= 400 at which the few-shot images still reconstruct (structure error
  # <= 0.1): 400 for these galaxies; a domain the model cannot carry that far gets less.
  config.sampling.t_0 = "auto"
  config.sampling.t_0_max = 400
  config.sampling.n_steps = 20
  config.sampling.batch_size = 32
  config.sample.num_samples = 64
  config.sample.methods = ("discovery",)
  config.discovery.num_id_latents = 64
  config.output.shard_size = 64
  # config.finetune.data stays None: fine-tuning trains on data.ood_dir, whatever folder that is given
  config.finetune.steps = 300
  config.finetune.batch_size = 16
  config.finetune.learning_rate = 1e-4
  config.finetune.num_samples = 64
  return config
