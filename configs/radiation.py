"""Radiation fields of molecular clouds (physical quantities in FITS) as the new
domain, on the AFHQ-Dog iDDPM.

  python -m discovery_jax.sample --config=configs/radiation.py --workdir=runs/radiation \
      --config.data.ood_dir=data/radiation/fewshot --config.data.eval_dir=data/radiation/heldout

Each FITS file holds one 2-D field (or a cube: pick planes with data.cube_slices).
Mapping to the model (documented in discovery_jax/data/scientific.py): NaN/Inf
pixels filled with the median; the field resized in physical units (area
average); a log10 intensity transform fitted on the few-shot set maps it to
[-1, 1]; the single field is replicated to the model's 3 channels (R = G = B), as
the paper renders these fields as RGB images. Generated samples go back through
the channel mean and the inverse transform to physical units, and are written as
FITS with the transform, model, config and seed in the header.
"""

from discovery_jax import configlib


def get_config():
  config = configlib.load_sibling(__file__, "afhq.py")
  config.name = "radiation"
  config.data.format = "scientific"
  config.data.ood_dir = "data/radiation/fewshot"
  config.data.eval_dir = "data/radiation/heldout"
  config.data.fill = "median"
  config.data.transform.kind = "log"
  config.data.transform.clip_percentiles = (0.1, 99.9)
  config.sample.num_samples = 1000
  config.sampling.batch_size = 16
  config.discovery.num_id_latents = 128
  config.output.formats = ("fits", "png")
  # Physical statistics (histograms, power spectra) are always computed for
  # scientific data; Inception features are still used for FD/KID when given.
  config.evaluate.features = "random_conv"
  return config
