"""Galaxy Zoo-style RGB galaxy images as the new domain, on the AFHQ-Dog iDDPM.

  python -m convert --torch_checkpoint=afhqdog_p2.pt --config=configs/afhq.py --output=checkpoints/afhq
  python -m discovery_jax.sample --config=configs/galaxy.py --workdir=runs/galaxy \
      --config.data.ood_dir=data/galaxy/fewshot --config.data.eval_dir=data/galaxy/heldout

Galaxy Zoo cut-outs are ordinary RGB JPEGs (424x424): read as images, stretched
to 256x256 with LANCZOS like the official loader. For FITS cut-outs in physical
flux units use configs/radiation.py as the template (data.format='scientific').
"""

from discovery_jax import configlib


def get_config():
  config = configlib.load_sibling(__file__, "afhq.py")
  config.name = "galaxy"
  config.data.ood_dir = "data/galaxy/fewshot"
  config.data.eval_dir = "data/galaxy/heldout"
  config.data.id_dir = None  # no dog photos needed: the model's own latents are the ID reference.
  config.sample.num_samples = 1000
  config.sample.methods = ("discovery",)
  config.sampling.batch_size = 16
  config.discovery.num_id_latents = 128
  config.evaluate.features = "inception"
  config.evaluate.inception_path = "checkpoints/inception"  # python -m convert.inception --pth=... --output=...
  return config
