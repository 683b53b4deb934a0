"""Scientific data end to end: synthetic FITS sets (Sersic galaxies, log-normal
radiation fields with NaN pixels and a cube) through invert, sample and FITS
output in physical units, on a small converted model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from convert.writer import convert_checkpoint
from discovery_jax import configlib, settings
from discovery_jax.data import inputs as inversion
from discovery_jax.data import fits_output, scientific, transforms
from tests import synthetic_fields as synthetic
from discovery_jax.data.bank import LatentBank
from tests import helpers

pytestmark = pytest.mark.slow  # end-to-end runs of the entry points: the full tier only


@pytest.fixture(scope="module")
def fields(tmp_path_factory, vectors_available):
  root = tmp_path_factory.mktemp("science")
  ckpt = str(root / "ckpt")
  convert_checkpoint(helpers.vector_state_dict("ddpm"), ckpt, helpers.vector_model_config("ddpm"))
  rad = synthetic.write_radiation_set(str(root / "fewshot"), count=9, size=48, seed=0, cube_planes=3)
  synthetic.write_radiation_set(str(root / "heldout"), count=10, size=48, seed=1, cube_planes=0)
  cfg = helpers.write_config(
      root / "config.py",
      "radiation.py",
      "ddpm",
      ckpt,
      {
          "data.ood_dir": str(root / "fewshot"),
          "data.eval_dir": str(root / "heldout"),
          "data.cube_slices": "all",
          "sample.num_samples": 4,
          "sample.evaluate": False,
          # The random-weight test model cannot make images of any domain, which the default
          # 'typical' search rightly refuses (31 of 32 candidates "too far"); this test is about
          # the physical-units pipeline, so it takes the paper's latent-space search.
          "discovery.mode": "rejection",
      },
  )
  return {"root": root, "config": cfg, "rad": rad}


def test_fits_set_to_model_space_never_passes_nan(fields):
  config = configlib.load_config_file(fields["config"])
  inputs = inversion.open_inputs(config.data.ood_dir, settings.input_options(config))
  assert inputs.kind == "scientific" and len(inputs) == 12  # 9 fields + 3 cube planes.
  assert any("[" in item.name for item in inputs.items)  # cube planes are named file[plane].
  x = inputs.load(list(range(len(inputs))))
  assert x.shape == (12, 32, 32, 3) and np.isfinite(x).all() and x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6
  np.testing.assert_array_equal(x[..., 0], x[..., 2])  # one field replicated to the model's 3 channels.
  assert sum(int(f.get("n_nonfinite", 0)) for f in inputs.fields_info) > 0  # the NaN pixels were there.
  t = transforms.Transform.from_dict(inputs.transform)
  assert t.kind == "log" and t.clip_lo is not None
  # Model space back to physical units: the resized physical field, up to float32.
  phys = scientific.from_model_output(x[:1], t, channels=1)
  expected = scientific.load_field_set([inputs.paths[0]], settings.scientific_options(config))[0].data
  clipped = np.clip(expected, t.clip_lo, t.clip_hi)  # percentile clipping: the one lossy step.
  np.testing.assert_allclose(phys[0], clipped, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_invert_and_sample_write_physical_fits(fields):
  workdir = fields["root"] / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "discovery_jax.sample", f"--config={fields['config']}", f"--workdir={workdir}"],
      capture_output=True,
      text=True,
      cwd=helpers.REPO,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  bank = LatentBank.open(str(workdir / "banks" / "ood"))
  assert bank.metadata["input_kind"] == "scientific" and bank.metadata["physical_channels"] == 1
  transform = transforms.Transform.from_dict(bank.metadata["intensity_transform"])
  out = workdir / "samples" / "discovery"
  files = sorted((out / "fits").glob("*.fits"))
  assert len(files) == 4
  samples = np.load(out / "samples.npy")
  physical = np.load(out / "samples_physical.npy")
  assert physical.shape == (4, 32, 32, 1) and np.isfinite(physical).all() and (physical > 0).all()
  with fits.open(files[2]) as hdul:
    data = hdul[0].data
    assert data.shape == (32, 32)
  prov = fits_output.read_provenance(str(files[2]))
  assert prov["sample_index"] == 2 and prov["seed"] == 0 and prov["config_name"] == "radiation"
  assert prov["model_fingerprint"] == bank.metadata["model_fingerprint"]
  # The FITS pixels are the denoised sample taken back through the stored transform.
  again = scientific.from_model_output(samples[2:3], prov["transform"], channels=1, clip=True)[0, ..., 0]
  np.testing.assert_allclose(data, again, rtol=1e-5)
  np.testing.assert_allclose(physical[2, ..., 0], again, rtol=1e-5)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["outputs"]["discovery"]["grid_physical"].endswith("grid_physical.png")


def test_evaluation_compares_fields_in_physical_units(fields):
  from discovery_jax import evaluate

  config = configlib.load_config_file(fields["config"])
  workdir = fields["root"] / "run"
  if not (workdir / "samples" / "discovery" / "samples.npy").exists():
    pytest.skip("needs the sample run of the previous test")
  config.evaluate.features = "random_conv"
  report = evaluate.run_evaluation(config, str(workdir))
  sci = report["science"]["discovery"]
  assert "power_spectrum_distance" in sci and "histogram_distances" in sci
  assert os.path.isfile(sci["plots"]["power_spectrum"])
