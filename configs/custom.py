"""Template for your own base model and target domain: copy, then edit.

  python -m convert --torch_checkpoint=my_model.pt --config=configs/custom.py --output=checkpoints/custom
  python -m discovery_jax.sample --config=configs/custom.py --workdir=runs/custom

Pick the base family (any config of either family works; field names follow the
original constructors), point data.ood_dir at 10-1000 images (or FITS/npy files)
of the new domain, and data.eval_dir at held-out ones if you want the evaluation.
"""

from discovery_jax import configlib


def get_config():
  # A DDPM base (CelebA-HQ / LSUN architecture); use "afhq.py" for an iDDPM base.
  config = configlib.load_sibling(__file__, "celeba.py")
  config.name = "custom"
  config.checkpoint = "checkpoints/custom"
  config.data.ood_dir = "data/custom/fewshot"
  config.data.eval_dir = None
  config.data.id_dir = None  # optional: in-domain images; otherwise the model's own latents
  config.sample.num_samples = 100
  config.sample.methods = ("discovery", "gaussian", "renoise")
  return config
