"""The embedded demo: the bundled model and data, end to end through the README's main command.

Smaller than the README run (16 samples, 32 ID latents) to keep the suite fast, with the
same model, data, t_0, steps and discovery settings.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers

ASSETS = os.path.join(helpers.REPO, "discovery_jax", "assets", "demo")


def test_bundled_assets_are_complete():
  from discovery_jax import checkpoint
  cfg = checkpoint.read_model_config(os.path.join(ASSETS, "model"))
  assert (cfg["arch"], cfg["image_size"], cfg["in_channels"]) == ("ddpm", 32, 1)
  counts = {d: len(os.listdir(os.path.join(ASSETS, d))) for d in ("ood_fewshot", "ood_heldout", "id_heldout")}
  assert counts == {"ood_fewshot": 32, "ood_heldout": 256, "id_heldout": 200}
  assert not set(os.listdir(os.path.join(ASSETS, "ood_fewshot"))) & set(os.listdir(os.path.join(ASSETS, "ood_heldout")))
  for doc in ("TRAINING.md", "PROVENANCE.md"):
    assert os.path.getsize(os.path.join(ASSETS, doc)) > 500


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("demo") / "run"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # as the README runs it: a device per core
  proc = subprocess.run(
      [sys.executable, "-m", "discovery_jax.sample", "--config=configs/demo.py", f"--workdir={workdir}",
       "--config.sample.num_samples=16", "--config.discovery.num_id_latents=32"],
      capture_output=True, text=True, cwd=helpers.REPO, env=env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return workdir, proc


def test_demo_discovers_galaxies_not_animals(demo_run):
  """The frozen silhouette model, given 32 radio galaxies, makes new galaxies: a classifier
  trained on real held-out galaxies vs real held-out silhouettes calls them galaxies."""
  workdir, proc = demo_run
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["num_samples"] == 16 and summary["acceptance_rate"] > 0
  assert summary["ood_hit_rate"] >= 0.8, summary["ood_hit_rate"]
  assert "OOD hit rate" in proc.stdout
  samples = np.load(workdir / "samples" / "discovery" / "samples.npy")
  assert samples.shape == (16, 32, 32, 1) and np.isfinite(samples).all()
  fewshot = np.load(workdir / "banks" / "ood" / "latents.npy")
  assert fewshot.shape == (32, 32, 32, 1)
  row = next(r for r in summary["evaluation"]["rows"] if r["name"] == "discovery")
  # New images, not copies: nearest few-shot neighbours are no closer than held-out galaxies' are.
  assert row["memorization"]["num_exact_copies"] == 0
  assert row["nn_ratio"] >= 1.0, row["nn_ratio"]
