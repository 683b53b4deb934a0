"""Bad input and faults (issue 15): each case reproduced, then what the user sees.

1. a failure while denoising leaves no finished-looking ``samples.npy``;
2. a second run on a busy workdir is refused at once, naming the holder's pid;
3. a full disk / read-only directory is one line naming the file; exit status 1;
4. temporary files are removed on failure and by the next run;
6. an unknown config key (or a bad value) is one line with the suggestion;
7. held-out images of another size are refused;
12. strict JSON (null for NaN), quiet logs, the docstring says where the PNGs are.

Most run in this process on a fake denoiser; the command-line ones start a small
driver (``cli.run`` around a stub ``main``) that fails before any model is loaded.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from PIL import Image

from tests import helpers

from discovery_jax import cli, configlib, fileio  # noqa: E402  (after tests: conftest set the devices)


def run_module(module, *args, env=None):
  return subprocess.run(
      [sys.executable, "-m", f"discovery_jax.{module}", *args],
      capture_output=True,
      text=True,
      cwd=helpers.REPO,
      env=env,
  )


def run_driver(code: str, *args, env=None):
  """``python -c code args...`` in the repository (``code`` calls ``cli.run``)."""
  return subprocess.run(
      [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, cwd=helpers.REPO, env=env
  )


def one_line(stderr: str) -> str:
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert len(lines) == 1, stderr[-3000:]
  assert "Traceback" not in stderr
  return lines[0]


# --------------------------------------------------------------------------- 1, 3, 4: denoising faults


class FakeRunner:
  """Stands in for DDIMRunner: deterministic per sample, optionally failing on call ``fail_at``."""

  t_0, n_steps = 100, 5

  def __init__(self, fail_at=None, error=None):
    self.calls, self.fail_at, self.error = 0, fail_at, error

  def generate(self, x, eta=0.0, key=None, sample_index=None):
    self.calls += 1
    if self.fail_at is not None and self.calls == self.fail_at:
      raise self.error or RuntimeError("the accelerator went away")
    return np.tanh(np.asarray(x, np.float32) * 0.5)


N, SHAPE = 6, (8, 8, 3)


def tiny_config():
  config = configlib.load_config_file(os.path.join(helpers.REPO, "configs", "base.py"))
  config.output.shard_size = 2
  config.output.grid_size = 4
  config.output.formats = ("png",)
  return config


def make_method_dir(workdir) -> np.ndarray:
  out = os.path.join(str(workdir), "samples", "discovery")
  os.makedirs(out, exist_ok=True)
  latents = np.random.default_rng(0).standard_normal((N, *SHAPE)).astype(np.float32)
  np.save(os.path.join(out, "latents.npy"), latents)
  fileio.atomic_write_json(os.path.join(out, "latents.json"), {"request_digest": "d1", "complete": True})
  return latents


def synthesize(workdir, runner):
  """stage_images + finish_method, as ``sample.main`` runs them for one method."""
  import jax

  from discovery_jax import sample

  config = tiny_config()
  latents = make_method_dir(workdir)
  with cli.stage("denoising the discovery samples"):
    run = sample.stage_images(config, str(workdir), "discovery", latents, runner, jax.random.key(0), "fp", None)
  return sample.finish_method(config, str(workdir), "discovery", run["writer"], None)


def our_temporaries(root) -> list[str]:
  return [
      os.path.join(d, f)
      for d, _, files in os.walk(str(root))
      for f in files
      if fileio.TMP_PATTERN.search(f) or ".tmp-" in f
  ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted synthesis."""
  workdir = tmp_path_factory.mktemp("reference")
  synthesize(workdir, FakeRunner())
  return workdir


def test_case1_failure_while_denoising_leaves_no_finished_looking_samples_npy(tmp_path, reference):
  out = tmp_path / "samples" / "discovery"
  with pytest.raises(RuntimeError, match="went away") as info:
    synthesize(tmp_path, FakeRunner(fail_at=2))
  assert info.value.discovery_stage == "denoising the discovery samples"
  assert not (out / "samples.npy").exists(), "a partial array under the final name"
  partial = np.load(out / "samples.npy.partial")
  assert partial.shape == (N, *SHAPE) and np.all(partial[2:] == 0) and np.any(partial[:2] != 0)
  # Readers refuse the unfinished array instead of scoring its zero rows.
  from discovery_jax.metrics import evaluator

  with pytest.raises(ValueError, match=r"not finished: only samples\.npy\.partial exists"):
    evaluator.load_generated(str(out), None)
  from discovery_jax import evaluate

  assert evaluate.generated_sets(tiny_config(), str(tmp_path)) == []  # skipped, with a warning
  # The rerun resumes (only the missing shards are denoised) and the result is byte-identical.
  runner = FakeRunner()
  info = synthesize(tmp_path, runner)
  assert info["dataset_complete"] and runner.calls == 2
  assert not (out / "samples.npy.partial").exists()
  ref = reference / "samples" / "discovery"
  assert (out / "samples.npy").read_bytes() == (ref / "samples.npy").read_bytes()
  assert our_temporaries(tmp_path) == []


def test_case1_a_finished_array_goes_back_to_partial_when_shards_must_be_redone(tmp_path, reference):
  synthesize(tmp_path, FakeRunner())
  dataset_dir = tmp_path / "samples" / "discovery" / "dataset"
  shard = sorted(dataset_dir.glob("*.array_record-*"))[1]
  shard.unlink()  # e.g. deleted as broken by finalize
  runner = FakeRunner()
  synthesize(tmp_path, runner)
  assert runner.calls == 1
  out, ref = tmp_path / "samples" / "discovery", reference / "samples" / "discovery"
  assert (out / "samples.npy").read_bytes() == (ref / "samples.npy").read_bytes()


def test_case1_shards_without_their_samples_array_are_redone_not_zero_filled(tmp_path, reference):
  synthesize(tmp_path, FakeRunner())
  out = tmp_path / "samples" / "discovery"
  (out / "samples.npy").unlink()
  runner = FakeRunner()
  synthesize(tmp_path, runner)
  assert runner.calls == 3  # every shard again: the float rows exist nowhere else
  ref = reference / "samples" / "discovery"
  assert (out / "samples.npy").read_bytes() == (ref / "samples.npy").read_bytes()
  assert (tmp_path / "samples" / "discovery.superseded-1" / "dataset").is_dir()  # moved aside, not deleted


def test_case3_full_disk_in_the_shard_writer_is_one_line_and_a_rerun_resumes(tmp_path, reference, monkeypatch):
  """ENOSPC where the dataset is written: ShardWriteError (as launch/README.md promises), one line."""
  from discovery_jax.data import dataset

  real = dataset.open_record_writer
  calls = {"n": 0}

  def full_disk(path):
    calls["n"] += 1
    if calls["n"] == 2:
      raise OSError(errno.ENOSPC, "No space left on device", path)
    return real(path)

  monkeypatch.setattr(dataset, "open_record_writer", full_disk)
  with pytest.raises(dataset.ShardWriteError) as info:
    synthesize(tmp_path, FakeRunner())
  line = cli.error_line(info.value, "sample")
  assert line.startswith("sample: error while denoising the discovery samples: cannot write shard 1 of 3 to ")
  assert "(disk full)" in line and "rerun to resume" in line and "\n" not in line
  out = tmp_path / "samples" / "discovery"
  assert not (out / "samples.npy").exists() and our_temporaries(tmp_path) == []
  monkeypatch.setattr(dataset, "open_record_writer", real)
  synthesize(tmp_path, FakeRunner())
  ref = reference / "samples" / "discovery"
  assert (out / "samples.npy").read_bytes() == (ref / "samples.npy").read_bytes()


def test_case3_full_disk_when_the_samples_array_is_allocated_names_it(tmp_path, monkeypatch):
  def no_space(fd, offset, length):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "posix_fallocate", no_space)
  with pytest.raises(fileio.DiskError) as info:
    synthesize(tmp_path, FakeRunner())
  path = str(tmp_path / "samples" / "discovery" / "samples.npy.partial")
  assert info.value.filename == path
  line = cli.error_line(info.value, "sample")
  assert line == (
      f"sample: error while denoising the discovery samples: cannot write {path}: no space left on device; "
      "files already complete are kept (partial ones are never left under a final name): free space, "
      "rerun the same command to resume"
  )
  assert our_temporaries(tmp_path) == []


def test_case3_numpy_short_write_is_recognised_as_a_full_disk(tmp_path, monkeypatch):
  """numpy reports ENOSPC as 'N requested and M written', without an errno or a file name."""

  def short_write(file, arr, **kwargs):
    with open(file, "wb") as f:
      f.write(b"\x93NUMPY" + b"\0" * 100)
    raise OSError("32768 requested and 2016 written")

  monkeypatch.setattr(np, "save", short_write)
  target = str(tmp_path / "latents.npy")
  with pytest.raises(fileio.DiskError) as info:
    fileio.atomic_save_npy(target, np.zeros((64, 64), np.float32))
  assert info.value.filename == target and info.value.errno == errno.ENOSPC
  assert "no space left on device" in cli.error_line(info.value, "sample")
  assert os.listdir(tmp_path) == [], "case 4: the temporary file survived the failure"


def test_case3_read_only_is_named_as_such():
  e = OSError(errno.EROFS, "Read-only file system", "/mnt/ro/samples.npy")
  line = cli.error_line(e, "sample")
  assert line.startswith("sample: error: cannot write /mnt/ro/samples.npy: read-only file system; ")
  assert "make it writable" in line and line.endswith("rerun the same command to resume")
  e = PermissionError(errno.EACCES, "Permission denied", "/x/y.json")
  assert "cannot write /x/y.json: permission denied" in cli.error_line(e, "evaluate")
  assert cli.error_line(ZeroDivisionError("a bug"), "sample") is None  # bugs keep their traceback


STUB = """
import sys
import numpy as np
from discovery_jax import cli, fileio

def main(config, workdir):
  cli.prepare_workdir(workdir, config, "sample")
  {body}

sys.argv = ["sample"] + sys.argv[1:]
cli.run(main, "sample")
"""


def test_case3_read_only_workdir_end_to_end(tmp_path):
  if os.geteuid() == 0:
    pytest.skip("running as root: chmod does not make a directory read-only")
  workdir = tmp_path / "ro"
  workdir.mkdir()
  workdir.chmod(0o555)
  try:
    proc = run_driver(STUB.format(body="pass"), "--config=configs/demo.py", f"--workdir={workdir}")
  finally:
    workdir.chmod(0o755)
  assert proc.returncode == 1
  line = one_line(proc.stderr)
  assert line.startswith(f"sample: error: cannot write {workdir}/") and "permission denied" in line


def test_case3_full_disk_through_cli_run_is_one_line_and_exit_1(tmp_path):
  body = """
  def short_write(file, arr, **kwargs):
    open(file, "wb").write(b"x" * 10)
    raise OSError("32768 requested and 2016 written")
  np.save = short_write
  with cli.stage("finding the discovery latents"):
    fileio.atomic_save_npy(workdir + "/latents.npy", np.zeros(3))
"""
  proc = run_driver(STUB.format(body=body), "--config=configs/demo.py", f"--workdir={tmp_path}")
  assert proc.returncode == 1
  assert one_line(proc.stderr) == (
      f"sample: error while finding the discovery latents: cannot write {tmp_path}/latents.npy: no space left "
      "on device; files already complete are kept (partial ones are never left under a final name): free "
      "space, rerun the same command to resume"
  )
  assert sorted(os.listdir(tmp_path)) == [cli.LOCK_FILE, "sample_config.json"]


def test_ctrl_c_is_one_line(tmp_path):
  proc = run_driver(STUB.format(body="raise KeyboardInterrupt"), "--config=configs/demo.py", f"--workdir={tmp_path}")
  assert proc.returncode == 130
  assert one_line(proc.stderr) == (
      "sample: interrupted; files already complete are kept: rerun the same command to resume"
  )


# --------------------------------------------------------------------------- 2: one run per workdir


def test_case2_a_second_run_on_a_busy_workdir_is_refused_at_once(tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  cli.lock_workdir(str(workdir), "sample")  # this test process plays the first run.
  try:
    proc = run_module("sample", "--config=configs/demo.py", f"--workdir={workdir}")
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert line.startswith(f"sample: error: workdir {workdir} is in use by pid {os.getpid()} on host ")
    assert line.endswith("wait for that run to finish or use another --workdir (nothing was changed)")
    assert sorted(os.listdir(workdir)) == [cli.LOCK_FILE]  # the refused run wrote nothing.
    proc = run_module("evaluate", "--config=configs/demo.py", f"--workdir={workdir}")
    assert proc.returncode == 1 and f"is in use by pid {os.getpid()}" in one_line(proc.stderr)
  finally:
    cli.release_workdirs()
  cli.lock_workdir(str(workdir), "sample")  # released: free again.
  cli.release_workdirs()


def test_case2_the_lock_dies_with_its_process(tmp_path):
  code = """
  import os, signal, sys
  from discovery_jax import cli
  cli.lock_workdir(sys.argv[1], "sample")
  os.kill(os.getpid(), signal.SIGKILL)
  """
  proc = run_driver(code, str(tmp_path))
  assert proc.returncode == -signal.SIGKILL
  cli.lock_workdir(str(tmp_path), "sample")  # a crashed run never blocks the next one.
  cli.release_workdirs()


# --------------------------------------------------------------------------- 4: temporary files


def test_case4_the_next_run_removes_only_our_stale_temporaries(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  method = tmp_path / "samples" / "discovery"
  method.mkdir(parents=True)
  stale = [
      method / f"latents.npy.tmp-{dead.pid}.npy",
      tmp_path / f"summary.json.tmp-{dead.pid}",
      method / "samples.npy.tmp.npy",  # an earlier version's
  ]
  kept = [
      method / f"latents.npy.tmp-{os.getpid()}.npy",  # a live writer's
      method / "notes.tmp-draft",
      method / "dataset" / "x-train.array_record-00000-of-00001.tmp-host-12",  # the dataset writer's own
      method / "latents.npy",
  ]
  (method / "dataset").mkdir()
  for p in stale + kept:
    p.write_bytes(b"x")
  config = tiny_config()
  try:
    cli.prepare_workdir(str(tmp_path), config, "sample")
  finally:
    cli.release_workdirs()
  assert [p.exists() for p in stale] == [False, False, False]
  assert all(p.exists() for p in kept)


# --------------------------------------------------------------------------- 6: config errors


@pytest.mark.parametrize("entry", ["sample", "evaluate", "invert"])
def test_case6_unknown_config_key_is_one_line_with_the_suggestion(tmp_path, entry):
  proc = run_module(entry, "--config=configs/demo.py", f"--workdir={tmp_path}", "--config.sampling.n_stepz=5")
  assert proc.returncode == 1
  assert one_line(proc.stderr) == (
      f"{entry}: error: unknown config key sampling.n_stepz (did you mean sampling.n_steps?) in "
      "--config.sampling.n_stepz; nothing was run"
  )
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_case6_bad_values_and_missing_config_are_one_line(tmp_path):
  cases = [
      ("--config.sampling.n_steps=abc", "sample: error: flag --config.sampling.n_steps=abc: invalid literal for int()"),
      ("--config.sampling.t_0=1000", "sample: error: t_0 must be an integer in 1..999, got 1000"),
      ("--config.samplin.t_0=5", "sample: error: unknown config key samplin (did you mean sampling?)"),
  ]
  for override, start in cases:
    proc = run_module("sample", "--config=configs/demo.py", f"--workdir={tmp_path / 'w'}", override)
    assert proc.returncode == 1 and one_line(proc.stderr).startswith(start), (override, proc.stderr[-2000:])
  proc = run_module("sample", f"--config={tmp_path / 'absent.py'}", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 1
  assert one_line(proc.stderr) == f"sample: error: --config: config file {tmp_path / 'absent.py'} does not exist"


def test_case6_output_and_evaluation_values_are_checked_before_any_work():
  from discovery_jax import evaluate, sample

  cases = [
      ("output.shard_size", 0, "config.output.shard_size must be >= 1, got 0"),
      (
          "output.formats",
          ("png", "jpg"),
          "config.output.formats: unknown format(s) ['jpg']; choose from ('png', 'fits')",
      ),
      ("evaluate.features", "foo", "config.evaluate.features='foo': choose from ['learned', 'inception', "),
      ("evaluate.features", "inception", "config.evaluate.features='inception' needs config.evaluate.inception_path"),
  ]
  for key, value, message in cases:
    config = tiny_config()
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(ValueError) as info:
      sample.check_output_options(config)
      evaluate.check_options(config)
    assert str(info.value).startswith(message), (key, str(info.value))
  sample.check_output_options(tiny_config())


def test_case6_config_error_line_without_a_suggestion():
  e = AttributeError("\"'qqq'\"")
  line = cli.config_error_line(e, ["x", "--config=c.py", "--config.sampling.qqq=5"])
  assert line == "unknown config key sampling.qqq in --config.sampling.qqq; nothing was run"


# --------------------------------------------------------------------------- 7: evaluation inputs of another size


def write_pngs(folder, n, size):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(len(folder))
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
  return str(folder)


def test_case7_heldout_images_of_another_size_are_refused(tmp_path):
  from discovery_jax import settings
  from discovery_jax.data import images
  from discovery_jax.metrics import evaluator

  config = configlib.load_config_file(os.path.join(helpers.REPO, "configs", "demo.py"))
  inputs = settings.input_options(config)  # the demo model: 32x32
  few = write_pngs(str(tmp_path / "few"), 4, (32, 32))
  big = write_pngs(str(tmp_path / "big"), 8, (64, 64))
  with pytest.raises(images.InputError) as info:
    evaluator.load_real_data(few, big, None, inputs)
  assert str(info.value) == (
      f"config.data.eval_dir={big} holds images of 64x64 (8 files), but the few-shot images (config.data.ood_dir) "
      "are 32x32 and the model's are 32x32: held-out images of another size would be resized and scored on the "
      "resize; use held-out images of 32x32"
  )
  same = write_pngs(str(tmp_path / "same"), 8, (32, 32))
  assert evaluator.load_real_data(few, same, None, inputs).heldout_ood.shape[:3] == (8, 32, 32)
  # Few-shot images of mixed sizes: resizing is the user's intent, nothing is refused.
  write_pngs(str(tmp_path / "few"), 1, (48, 40))
  assert len(evaluator.load_real_data(few, big, None, inputs).heldout_ood) == 8


# --------------------------------------------------------------------------- 12: strict JSON, quiet logs, docs


def _refuse(constant):
  raise ValueError(f"non-standard JSON constant {constant}")


def test_case12_json_is_strict_null_for_non_finite_numbers(tmp_path):
  from discovery_jax import sample

  nan = float("nan")
  report = {
      "rows": [{"name": "discovery", "ood_hit_rate": np.float32(nan), "nn_ratio": nan, "kid": np.array([1.0, np.inf])}],
      "table_markdown": "|",
      "setup": {"x": -np.inf},
  }
  results = {"discovery": {"latents": {"acceptance_rate": nan, "targets": {"values": [nan, 1.0]}}, "grid": "g"}}
  bank = types.SimpleNamespace(path="b", count=2, metadata={"source": "s", "t_0": 100})
  config = tiny_config()
  config.sample = {"num_samples": 2}
  summary = sample.build_summary(
      config, str(tmp_path), ["discovery"], results, {"ood": bank}, {"total": nan}, report, "fp"
  )
  path = tmp_path / "summary.json"
  cli.write_json(str(path), summary)
  loaded = json.loads(path.read_text(), parse_constant=_refuse)
  assert loaded["acceptance_rate"] is None and loaded["ood_hit_rate"] is None
  assert loaded["timings_seconds"]["total"] is None and loaded["targets"]["values"] == [None, 1.0]
  assert loaded["evaluation"]["rows"][0]["kid"] == [1.0, None] and loaded["evaluation"]["setup"]["x"] is None


LOGGING_STUB = """
import os
import sys
import jax
from absl import logging
from discovery_jax import cli, progress, sample

def main(config, workdir):
  cli.prepare_workdir(workdir, config, "sample")
  jax.devices()  # starts the backends: jax's notices about platforms it did not find
  logging.info("a library notice")  # this driver is not the package: as quiet as tfds' notices
  logging.warning("a library warning")
  progress.Progress(4, "samples", "denoise discovery").update(4)
  os.makedirs(workdir + "/m")
  sample._supersede(workdir + "/m", "seed 0 -> 7")
  print("discovery: 4 samples")

sys.argv = ["sample"] + sys.argv[1:]
cli.run(main, "sample")
"""


def test_case12_logs_are_quiet_by_default_and_full_with_verbosity(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL")}
  proc = run_driver(LOGGING_STUB, "--config=configs/demo.py", f"--workdir={tmp_path / 'q'}", env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  assert lines[0].startswith("sample: denoise discovery: 4/4 samples (100%), ") and lines[0].endswith("ETA 0s")
  assert lines[1].startswith(f"sample: warning: {tmp_path / 'q' / 'm'}: the settings changed (seed 0 -> 7)")
  assert len(lines) == 2, proc.stderr
  assert proc.stdout == "discovery: 4 samples\n"
  verbose = run_driver(LOGGING_STUB, "--config=configs/demo.py", f"--workdir={tmp_path / 'v'}", "--verbosity=0")
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert "a library notice" in verbose.stderr and "] denoise discovery: 4/4" in verbose.stderr


def test_case12_the_sample_docstring_says_where_the_pngs_are():
  from discovery_jax import sample

  assert "``dataset/images/``" in sample.__doc__ and "samples.npy.partial" in sample.__doc__
