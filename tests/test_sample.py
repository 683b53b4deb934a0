"""`sample`, `analyze`, `evaluate` and `finetune` end to end on a small converted
model and real image files: outputs, determinism, resumption, failures."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from convert.writer import convert_checkpoint
from discovery_jax.discovery import typical
from tests import helpers
from tests.test_invert_reconstruct import write_images

pytestmark = pytest.mark.slow  # end-to-end runs of the entry points: the full tier only


@pytest.fixture(scope="module")
def setup(tmp_path_factory, vectors_available):
  root = tmp_path_factory.mktemp("sample")
  ckpt = str(root / "ckpt")
  convert_checkpoint(helpers.vector_state_dict("iddpm"), ckpt, helpers.vector_model_config("iddpm"))
  ood = write_images(str(root / "ood"), 12, seed=0)
  held = write_images(str(root / "held"), 16, seed=1)
  idh = str(root / "id")
  os.makedirs(idh)
  rng = np.random.default_rng(5)
  for i in range(16):  # a visibly different "in-domain" look: smooth bright blobs.
    yy, xx = np.mgrid[:32, :32]
    img = 255 * np.exp(-((yy - rng.integers(8, 24)) ** 2 + (xx - rng.integers(8, 24)) ** 2) / 60.0)
    Image.fromarray(np.repeat(img[..., None], 3, -1).astype(np.uint8)).save(os.path.join(idh, f"id{i}.png"))
  cfg = helpers.write_config(
      root / "config.py",
      "base.py",
      "iddpm",
      ckpt,
      {
          "name": "tiny",
          "data.ood_dir": ood,
          "data.eval_dir": held,
          "evaluate.id_dir": idh,
          "evaluate.features": "random_conv",
          "sampling.batch_size": 8,
          "sample.num_samples": 6,
          "discovery.mode": "optimize",  # the rejection path runs in test_budget_exhaustion
          "finetune.steps": 2,
          "finetune.batch_size": 4,
          "finetune.num_samples": 4,
          "finetune.num_preview": 0,
          "finetune.log_every": 1,
      },
  )
  return {"root": root, "config": cfg, "ckpt": ckpt}


def run(module, config, workdir, *args, env=None, check=True):
  proc = subprocess.run(
      [sys.executable, "-m", f"discovery_jax.{module}", f"--config={config}", f"--workdir={workdir}", *args],
      capture_output=True,
      text=True,
      cwd=helpers.REPO,
      env=env,
  )
  if check:
    assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


@pytest.fixture(scope="module")
def sampled(setup):
  workdir = setup["root"] / "run"
  proc = run("sample", setup["config"], workdir, "--config.sample.methods=('discovery','gaussian','renoise')")
  return workdir, proc


def test_sample_writes_every_output(sampled):
  workdir, proc = sampled
  summary = json.loads((workdir / "summary.json").read_text())
  for key in ("num_samples", "acceptance_rate", "targets", "seeds", "timings_seconds", "ood_hit_rate", "evaluation"):
    assert key in summary, key
  assert summary["num_samples"] == 6 and summary["methods"] == ["discovery", "gaussian", "renoise"]
  targets = summary["targets"]
  assert len(targets["values"]) == 3 and all(t > 0 for t in targets["tolerances"])
  for method in summary["methods"]:
    out = workdir / "samples" / method
    samples = np.load(out / "samples.npy")
    assert samples.shape == (6, 32, 32, 3) and np.abs(samples).max() <= 1.0
    assert len(list((out / "dataset" / "images").glob("*.png"))) == 6
    assert Image.open(out / "grid.png").size[0] > 32
    import tensorflow_datasets as tfds

    source = tfds.builder_from_directory(str(out / "dataset")).as_data_source(split="train")
    assert len(source) == 6
    np.testing.assert_array_equal(source[3]["image"], np.round((samples[3] + 1) * 127.5).astype(np.uint8))
    np.testing.assert_allclose(source[3]["latent"], np.load(out / "latents.npy")[3])
  rows = {r["name"]: r for r in summary["evaluation"]["rows"]}
  assert {"discovery", "gaussian", "renoise", "real held-out OOD"} <= set(rows)
  assert 0.0 <= summary["ood_hit_rate"] <= 1.0
  assert "| discovery |" in proc.stdout


def test_discovered_latents_meet_the_criteria(sampled):
  """Recomputed independently (float64 numpy) with the references each latent used."""
  from discovery_jax.data.bank import LatentBank
  from tests.helpers import criteria_numpy

  workdir, _ = sampled
  out = workdir / "samples" / "discovery"
  rec = json.loads((out / "latents.json").read_text())
  meta = np.load(out / "latents_meta.npz")
  latents = np.load(out / "latents.npy").reshape(6, -1).astype(np.float64)
  ood = LatentBank.open(str(workdir / "banks" / "ood")).latents().reshape(12, -1).astype(np.float64)
  idb = LatentBank.open(str(workdir / "banks" / "id_model")).latents().reshape(12, -1).astype(np.float64)
  values, tols = np.asarray(rec["targets"]["values"]), np.asarray(rec["targets"]["tolerances"])
  assert rec["num_accepted"] == 6 and 0 < rec["acceptance_rate"] <= 1 and np.all(tols > 0)
  for k in range(6):
    c = criteria_numpy(latents[k], idb[meta["id_ref_index"][k]], ood[meta["ood_ref_index"][k]])
    np.testing.assert_allclose(c, meta["stats"][k], rtol=1e-3)
    assert np.all(np.abs(c - values) <= tols * (1 + 1e-3)), (k, c, values, tols)


def test_same_config_and_seed_same_samples_and_resume_reuses(setup, sampled):
  workdir, _ = sampled
  again = setup["root"] / "run2"
  run("sample", setup["config"], again)
  np.testing.assert_array_equal(
      np.load(again / "samples" / "discovery" / "samples.npy"),
      np.load(workdir / "samples" / "discovery" / "samples.npy"),
  )
  before = (again / "samples" / "discovery" / "latents.npy").stat().st_mtime_ns
  proc = run("sample", setup["config"], again)  # everything exists: reused, not recomputed.
  assert (again / "samples" / "discovery" / "latents.npy").stat().st_mtime_ns == before
  assert "reusing" in proc.stderr
  # Other settings in the same workdir: new latents AND new images (never old images of old
  # latents mixed in), while the earlier outputs are moved aside, not deleted.
  run("sample", setup["config"], again, "--config.seed=7", "--config.sample.evaluate=False")
  method_dir, kept = again / "samples" / "discovery", again / "samples" / "discovery.superseded-1"
  assert not np.array_equal(
      np.load(method_dir / "latents.npy"), np.load(workdir / "samples" / "discovery" / "latents.npy")
  )
  old_samples, new_samples = np.load(kept / "samples.npy"), np.load(method_dir / "samples.npy")
  np.testing.assert_array_equal(old_samples, np.load(workdir / "samples" / "discovery" / "samples.npy"))
  assert not np.any(np.all(new_samples == old_samples, axis=(1, 2, 3))), "a stale image survived the new latents"
  meta = json.loads((method_dir / "dataset" / "discovery_dataset.json").read_text())["metadata"]
  assert meta["latents_digest"] == json.loads((method_dir / "latents.json").read_text())["request_digest"]
  # Only the denoising changes (eta): the latents are reused, the images are redone.
  before = (method_dir / "latents.npy").stat().st_mtime_ns
  run(
      "sample", setup["config"], again, "--config.seed=7", "--config.sample.evaluate=False", "--config.sampling.eta=0.5"
  )
  assert (method_dir / "latents.npy").stat().st_mtime_ns == before
  assert not np.array_equal(np.load(method_dir / "samples.npy"), new_samples)
  np.testing.assert_array_equal(np.load(again / "samples" / "discovery.superseded-2" / "samples.npy"), new_samples)


def test_one_and_eight_devices_give_the_same_samples(setup):
  """Bitwise: sample i depends on its global index only, and batch_size is per device."""
  outs = {}
  for n in (1, 8):
    wd = setup["root"] / f"dev{n}"
    run(
        "sample",
        setup["config"],
        wd,
        "--config.sample.evaluate=False",
        "--config.sampling.eta=0.5",
        f"--config.parallel.num_devices={n}",
    )
    outs[n] = np.load(wd / "samples" / "discovery" / "samples.npy")
  np.testing.assert_array_equal(outs[1], outs[8])


def test_budget_exhaustion_saves_partial_result_and_names_the_criterion(setup):
  wd = setup["root"] / "budget"
  proc = run(
      "sample",
      setup["config"],
      wd,
      "--config.discovery.mode=rejection",
      "--config.discovery.max_candidates=3",
      "--config.discovery.tolerance_scale=0.01",
      "--config.discovery.guard=none",
      check=False,
  )
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "the criterion that rejected most is" in proc.stderr
  rec = json.loads((wd / "samples" / "discovery" / "latents.json").read_text())
  assert rec["complete"] is False and rec["most_rejecting"] in ("distance_id", "angle_origin", "angle_vertex")


def test_a_typical_pool_that_runs_out_fills_in_with_near_misses_or_stops_when_told(setup):
  typical = (
      "--config.discovery.mode=typical",
      "--config.sample.methods=('discovery',)",
      "--config.discovery.pool_factor=1",
      "--config.discovery.band=(0.0,0.01)",  # a band almost no candidate lands in
      "--config.discovery.image_guard=False",  # (the tiny random model puts its candidates on its own side)
  )
  wd = setup["root"] / "near_misses"
  # the band measured in the base model's own features (an option; the default is the random conv net)
  proc = run(
      "sample",
      setup["config"],
      wd,
      *typical,
      "--config.sample.evaluate=False",
      "--config.discovery.selection_features=model",
  )
  out = wd / "samples" / "discovery"
  rec = json.loads((out / "latents.json").read_text())
  assert rec["selection_features"]["name"] == "model" and rec["guard_features"] is None
  meta = np.load(out / "latents_meta.npz")
  assert rec["complete"] is True and rec["num_near_misses"] >= 1
  assert meta["near_miss"].shape == (6,) and int(meta["near_miss"].sum()) == rec["num_near_misses"]
  assert "missed the band (flagged 'near_miss'" in proc.stderr
  assert np.load(out / "samples.npy").shape[0] == 6
  wd = setup["root"] / "near_misses_off"
  proc = run("sample", setup["config"], wd, *typical, "--config.discovery.fill_near_misses=False", check=False)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "Raise config.discovery.pool_factor" in proc.stderr
  assert json.loads((wd / "samples" / "discovery" / "latents.json").read_text())["complete"] is False


def test_a_bad_typical_setting_fails_in_one_line_before_any_inversion(setup):
  wd = setup["root"] / "bad_typical"
  proc = run(
      "sample", setup["config"], wd, "--config.discovery.mode=typical", "--config.discovery.band=(0.9,0.1)", check=False
  )
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "config.discovery: band must be two quantiles 0 <= low < high <= 1, got (0.9, 0.1)" in proc.stderr
  assert not (wd / "banks").exists() and "invert" not in proc.stderr  # nothing was computed first
  proc = run(
      "sample",
      setup["config"],
      wd,
      "--config.discovery.mode=typical",
      "--config.discovery.selection_features=conv",
      check=False,
  )
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "config.discovery.selection_features: unknown feature space 'conv'; choose from ('model'," in proc.stderr
  assert not (wd / "banks").exists()
  # fill_after's default is a number, and None (search the whole pool) must still be settable from the command line
  proc = run(
      "sample",
      setup["config"],
      wd,
      "--config.discovery.mode=typical",
      "--config.discovery.fill_after=None",
      "--config.discovery.band=(0.9,0.1)",
      check=False,
  )
  assert "band must be two quantiles" in proc.stderr and "fill_after" not in proc.stderr
  # a few-shot folder too small for the leave-one-out criteria: named before any inversion
  three = write_images(str(setup["root"] / "three"), 3, seed=3)
  proc = run(
      "sample", setup["config"], wd, "--config.discovery.mode=typical", f"--config.data.ood_dir={three}", check=False
  )
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert f"config.data.ood_dir: {three} holds 3 images; discovery (discovery.mode='typical') needs at least 4" in (
      proc.stderr
  )
  assert not (wd / "banks").exists()


def test_sigkill_during_synthesis_then_resume_gives_the_same_dataset(setup, sampled):
  workdir, _ = sampled
  wd = setup["root"] / "killed"
  args = [
      sys.executable,
      "-m",
      "discovery_jax.sample",
      f"--config={setup['config']}",
      f"--workdir={wd}",
      "--config.sample.evaluate=False",
      "--config.output.shard_size=1",
  ]
  proc = subprocess.Popen(args, cwd=helpers.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  records = wd / "samples" / "discovery" / "dataset" / "_shards"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if records.is_dir() and len(list(records.glob("*.json"))) >= 2:
      os.kill(proc.pid, signal.SIGKILL)
      break
    time.sleep(0.05)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "synthesis finished before it could be killed"
  done_before = len(list(records.glob("*.json")))
  assert 2 <= done_before < 6
  run("sample", setup["config"], wd, "--config.sample.evaluate=False", "--config.output.shard_size=1")
  ref = np.load(workdir / "samples" / "discovery" / "samples.npy")
  np.testing.assert_array_equal(np.load(wd / "samples" / "discovery" / "samples.npy"), ref)
  import tensorflow_datasets as tfds

  source = tfds.builder_from_directory(str(wd / "samples" / "discovery" / "dataset")).as_data_source(split="train")
  assert sorted(int(source[i]["index"]) for i in range(len(source))) == list(range(6))


def test_analyze_reports_both_claims(setup, sampled):
  workdir, _ = sampled
  proc = run("analyze", setup["config"], workdir, "--config.analyze.num_dims=200", "--config.analyze.num_triples=100")
  report = json.loads((workdir / "analysis" / "report.json").read_text())
  assert set(report["claims"]) == {"ood_gaussian", "separable_from_id"}
  assert 0 <= report["claims"]["separable_from_id"]["heldout_accuracy"] <= 1
  for name in ("norms", "distances", "angles_origin", "angles_vertex", "normality_pvalues"):
    assert Image.open(workdir / "analysis" / f"{name}.png").size[0] > 100
  assert "Gaussian OOD prior" in proc.stdout and "Separable from ID" in proc.stdout
  # What discovery's 'auto' step reads off the bank: the slope, clipped to [-1, 0], and the strengths it takes.
  step = report["ood_step_spectrum"]
  assert step["auto_power"] == pytest.approx(min(max(step["residual_slope"], -1.0), 0.0), abs=0.006)
  assert tuple(step["auto_strength_range"]) == typical.strengths_for_power(step["auto_power"])
  assert "Discovery's step ('auto'): residual spectral slope" in proc.stdout


def test_finetune_then_evaluate_compares_all_methods(setup, sampled):
  workdir, _ = sampled
  ft = setup["root"] / "ft"
  run("finetune", setup["config"], ft)
  for name in ("samples.npy", "base_samples.npy", "train_log.jsonl", "loss.png"):
    assert (ft / name).exists(), name
  assert (ft / "model" / "model_config.json").exists()
  proc = run("evaluate", setup["config"], workdir, f"--config.evaluate.finetune_dir={ft}")
  report = json.loads((workdir / "evaluation" / "report.json").read_text())
  names = [r["name"] for r in report["rows"]]
  assert names == ["real held-out OOD", "discovery", "gaussian", "renoise", "vanilla fine-tuning"]
  tuned = report["rows"][-1]
  assert "id_frechet_distance" in tuned and "ood_hit_rate" in tuned
  assert "| vanilla fine-tuning |" in (workdir / "evaluation" / "comparison.md").read_text()
  # The figure: one labelled row per set (few-shot, held-out, 3 methods, fine-tuning).
  figure = np.asarray(Image.open(workdir / "evaluation" / "comparison.png").convert("L"))
  assert figure.shape[0] > 6 * 40 and figure.shape[1] > 400
