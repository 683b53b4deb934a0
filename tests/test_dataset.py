"""Sharded dataset output: tfds reads it back without TensorFlow; resume, kill,
truncation, several hosts, a changed host count and a full disk all end with the
same N samples as one uninterrupted run.

Also a worker script: ``python tests/test_dataset.py worker DIR [--sleep S]`` writes
this host's pending shards (the SIGKILL test kills it midway).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from discovery_jax.data import dataset as D  # noqa: E402

NAME = "synth"
N, K = 23, 5  # 5 shards, the last one short (3 samples).
IMAGE = (8, 6, 3)
LATENT = (4, 4, 2)
SPEC = D.features_spec(IMAGE, latent_shape=LATENT, scalars={"score": "float32", "label": "int64"})
META = {"seed": 7, "model_fingerprint": "abc123", "config": {"t_0": 600, "eta": 0.0}}


def fake_examples(indices: np.ndarray) -> dict:
  """Sample i depends on i alone, as the real generator's (keys from global indices)."""
  indices = np.asarray(indices, np.int64)
  rngs = [np.random.default_rng(int(i)) for i in indices]
  return {
      "image": np.stack([r.integers(0, 256, IMAGE, dtype=np.uint8) for r in rngs]),
      "latent": np.stack([r.standard_normal(LATENT).astype(np.float32) for r in rngs]),
      "score": (indices * 0.5).astype(np.float32),
      "label": indices % 7,
  }


def make_writer(directory, process_index=0, process_count=1, **kwargs):
  args = dict(name=NAME, num_samples=N, shard_size=K, features_spec=SPEC, metadata=META)
  args.update(kwargs)
  return D.DatasetWriter(str(directory), process_index=process_index, process_count=process_count, **args)


def shard_digests(directory) -> dict[str, str]:
  """File name -> sha256 of every shard file (the bytes, not only the decoded samples)."""
  return {
      os.path.basename(p): D._sha256(p) for p in sorted(glob.glob(os.path.join(str(directory), "*.array_record-*")))
  }


def assert_same_dataset(directory, reference) -> None:
  assert shard_digests(directory) == shard_digests(reference)
  assert D.read_manifest(directory)["shards"] == D.read_manifest(reference)["shards"]


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted single-process run."""
  directory = tmp_path_factory.mktemp("reference") / NAME / "1.0.0"
  writer = make_writer(directory, write_images=True)
  assert writer.write_pending(fake_examples) == [0, 1, 2, 3, 4]
  report = writer.finalize()
  assert report.complete and not report.missing and not report.repaired, report.summary()
  return directory


def test_tfds_reads_every_sample_back_without_tensorflow(reference):
  import tensorflow_datasets as tfds

  builder = tfds.builder_from_directory(str(reference))
  source = builder.as_data_source(split="train")
  assert len(source) == N and builder.info.splits["train"].shard_lengths == [5, 5, 5, 5, 3]
  expected = fake_examples(np.arange(N))
  for i in range(N):
    got = source[i]
    assert int(got["index"]) == i
    np.testing.assert_array_equal(got["image"], expected["image"][i])
    np.testing.assert_array_equal(got["latent"], expected["latent"][i])
    assert got["score"] == expected["score"][i] and got["label"] == expected["label"][i]
  # tfds.data_source by name, with the ROOT/NAME/VERSION layout.
  by_name = tfds.data_source(NAME, data_dir=str(reference.parent.parent), split="train")
  np.testing.assert_array_equal(by_name[N - 1]["image"], expected["image"][N - 1])
  assert "tensorflow" not in sys.modules
  from PIL import Image

  np.testing.assert_array_equal(np.asarray(Image.open(reference / "images" / "00000004.png")), expected["image"][4])
  manifest = D.read_manifest(reference)
  assert (manifest["num_samples"], manifest["shard_size"], manifest["num_shards"]) == (N, K, 5)
  assert manifest["metadata"] == META and [s["count"] for s in manifest["shards"]] == [5, 5, 5, 5, 3]
  assert all(len(s["sha256"]) == 64 for s in manifest["shards"])


def test_resume_after_partial_runs(tmp_path, reference):
  writer = make_writer(tmp_path, write_images=True)
  for shard in (0, 3):
    writer.write_shard(shard, fake_examples(np.asarray(writer.shard_range(shard))))
  report = writer.finalize()  # finalize on a partial run reports and writes no metadata.
  assert not report.complete and report.missing == [1, 2, 4] and not report.repaired
  assert not os.path.exists(tmp_path / "dataset_info.json")
  resumed = make_writer(tmp_path, write_images=True)
  assert resumed.pending_shards() == [1, 2, 4]
  assert resumed.write_pending(fake_examples) == [1, 2, 4]
  assert resumed.pending_shards() == [] and resumed.finalize().complete
  assert_same_dataset(tmp_path, reference)


@pytest.mark.slow
def test_sigkill_midway_then_rerun(tmp_path, reference):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.abspath(__file__), "worker", str(tmp_path), "--sleep", "30"]
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 40
    while not glob.glob(str(tmp_path / "_shards" / "*.json")):
      assert proc.poll() is None, proc.stdout.read().decode()
      assert time.time() < deadline, "the worker wrote no shard in 40 s"
      time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait(10)
  assert proc.returncode == -signal.SIGKILL
  writer = make_writer(tmp_path)
  assert writer.pending_shards() == [1, 2, 3, 4]
  rerun = subprocess.run(cmd[:-2] + ["--sleep", "0"], env=env, capture_output=True, text=True, timeout=60)
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  assert json.loads(rerun.stdout.strip().splitlines()[-1]) == {"written": [1, 2, 3, 4]}
  assert make_writer(tmp_path).finalize().complete
  assert shard_digests(tmp_path) == shard_digests(reference)


def test_truncated_and_corrupt_shards_are_reported_and_regenerated(tmp_path, reference):
  directory = tmp_path / "ds"
  shutil.copytree(reference, directory)
  shard2 = directory / f"{NAME}-train.array_record-00002-of-00005"
  shard4 = directory / f"{NAME}-train.array_record-00004-of-00005"
  os.truncate(shard2, os.path.getsize(shard2) - 1000)  # what a kill during a copy leaves.
  data = bytearray(shard4.read_bytes())  # same size, one flipped byte.
  data[len(data) // 3] ^= 0xFF
  shard4.write_bytes(bytes(data))
  os.remove(directory / "_shards" / "00001.json")  # renamed into place, killed before its record.
  (directory / f"{NAME}-train.array_record-00003-of-00005.tmp-host-123").write_bytes(b"partial")

  writer = make_writer(directory, write_images=True)
  assert writer.pending_shards() == [1, 2]  # the cheap check sees the truncation and the missing record.
  assert "truncated" in writer.pending_reasons[2]
  report = writer.finalize()
  assert not report.complete and report.missing == []
  assert sorted(report.repaired) == [1, 2, 4]
  assert "truncated" in report.repaired[2] and "sha256" in report.repaired[4]
  assert report.removed_temp == [f"{NAME}-train.array_record-00003-of-00005.tmp-host-123"]
  assert "shard(s) deleted" in report.summary() and "rerun" in report.summary()
  assert not shard2.exists() and not (directory / "dataset_info.json").exists()

  assert make_writer(directory, write_images=True).write_pending(fake_examples) == [1, 2, 4]
  final = make_writer(directory, write_images=True).finalize()
  assert final.complete and not final.repaired
  assert_same_dataset(directory, reference)


@pytest.mark.slow
def test_two_hosts_write_disjoint_shards_whose_union_is_the_dataset(tmp_path, reference):
  host0 = make_writer(tmp_path, 0, 2, write_images=True)
  host1 = make_writer(tmp_path, 1, 2, write_images=True)
  assert host0.host_shards() == [0, 2, 4] and host1.host_shards() == [1, 3]
  assert host0.write_pending(fake_examples) == [0, 2, 4]
  report = host0.finalize()  # host 1 has not run (or died): reported, nothing written.
  assert not report.complete and report.missing == [1, 3]
  assert host1.write_pending(fake_examples) == [1, 3]
  records = [json.loads((tmp_path / "_shards" / f"{s:05d}.json").read_text()) for s in range(5)]
  assert [r["process_index"] for r in records] == [0, 1, 0, 1, 0]
  assert host0.finalize().complete
  assert_same_dataset(tmp_path, reference)


@pytest.mark.slow
def test_resume_with_a_different_process_count(tmp_path, reference):
  assert make_writer(tmp_path, 0, 3).write_pending(fake_examples) == [0, 3]  # then the 3-host job stops.
  assert make_writer(tmp_path, 0, 2).write_pending(fake_examples) == [2, 4]
  assert make_writer(tmp_path, 1, 2).write_pending(fake_examples) == [1]
  assert make_writer(tmp_path, 0, 1).finalize().complete
  assert shard_digests(tmp_path) == shard_digests(reference)


class _FullDiskWriter:
  """Stands in for ArrayRecordWriter on a disk that fills up halfway through a shard."""

  def __init__(self, path, options):
    self.file = open(path, "wb")

  def write(self, record):
    self.file.write(record[: len(record) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")

  def close(self):
    self.file.close()


def test_disk_full_leaves_no_partial_shard_and_a_clear_message(tmp_path, reference, monkeypatch):
  writer = make_writer(tmp_path)
  for shard in (0, 1):
    writer.write_shard(shard, fake_examples(np.asarray(writer.shard_range(shard))))
  before = shard_digests(tmp_path)
  real = D.open_record_writer
  monkeypatch.setattr(D, "open_record_writer", lambda path: _FullDiskWriter(path, None))
  with pytest.raises(D.ShardWriteError) as info:
    writer.write_shard(2, fake_examples(np.asarray(writer.shard_range(2))))
  message = str(info.value)
  assert "shard 2" in message and writer.shard_path(2) in message and "disk full" in message
  assert info.value.errno == errno.ENOSPC
  assert not glob.glob(str(tmp_path / "*tmp*")) and not os.path.exists(writer.shard_path(2))
  assert shard_digests(tmp_path) == before and writer.pending_shards() == [2, 3, 4]
  monkeypatch.setattr(D, "open_record_writer", real)
  assert make_writer(tmp_path).write_pending(fake_examples) == [2, 3, 4]
  assert make_writer(tmp_path).finalize().complete
  assert shard_digests(tmp_path) == shard_digests(reference)


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(num_samples=24), "num_samples"),
        (dict(shard_size=4), "shard_size"),
        (dict(name="other"), "name"),
        (dict(features_spec=D.features_spec(IMAGE)), "features"),
        (dict(metadata={**META, "seed": 8}), "metadata.seed"),
        (dict(metadata={**META, "model_fingerprint": "zzz"}), "metadata.model_fingerprint"),
    ],
)
def test_refuses_to_resume_into_a_different_dataset(tmp_path, change, key):
  make_writer(tmp_path)
  with pytest.raises(D.DatasetError, match=f"made with {key}=.*use another output directory"):
    make_writer(tmp_path, **change)
  make_writer(tmp_path, metadata={**META, "config": {"batch_size": 64}})  # other metadata may change.


def test_bad_input_is_named(tmp_path):
  writer = make_writer(tmp_path, 0, 2)
  examples = fake_examples(np.arange(5))
  with pytest.raises(D.DatasetError, match="shard 1 belongs to host 1 of 2"):
    writer.write_shard(1, examples)
  with pytest.raises(D.DatasetError, match=r"'latent' has shape \(5, 4, 4\), expected \(5, 4, 4, 2\)"):
    writer.write_shard(0, {**examples, "latent": examples["latent"][..., 0]})
  with pytest.raises(D.DatasetError, match="'image' must be uint8"):
    writer.write_shard(0, {**examples, "image": examples["image"].astype(np.float32)})
  with pytest.raises(D.DatasetError, match="'index' does not match"):
    writer.write_shard(0, {**examples, "index": np.arange(1, 6)})
  with pytest.raises(D.DatasetError, match=r"lack \['label'\]"):
    writer.write_shard(0, {k: v for k, v in examples.items() if k != "label"})
  with pytest.raises(D.DatasetError, match="not finalized"):
    D.read_dataset(str(tmp_path))
  with pytest.raises(D.DatasetError, match="image shape"):
    D.features_spec((8, 8, 2))
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "foo-train.array_record-00000-of-00001").write_bytes(b"")
  with pytest.raises(D.DatasetError, match="not written by this tool"):
    make_writer(tmp_path / "x")


def test_cli_status_and_finalize(tmp_path, reference, capsys):
  writer = make_writer(tmp_path)
  writer.write_shard(0, fake_examples(np.arange(5)))
  assert D.main(["status", str(tmp_path)]) == 1
  assert "1/5 shards complete; pending [1, 2, 3, 4]" in capsys.readouterr().out
  assert D.main(["finalize", str(tmp_path)]) == 1
  assert "INCOMPLETE" in capsys.readouterr().out
  writer.write_pending(fake_examples)
  assert D.main(["finalize", str(tmp_path)]) == 0
  assert D.read_manifest(tmp_path)["metadata"] == META  # from the identity file when run alone.
  assert D.main(["status", str(tmp_path / "nothing")]) == 2


def _worker(argv):
  import argparse

  parser = argparse.ArgumentParser()
  parser.add_argument("directory")
  parser.add_argument("--sleep", type=float, default=0.0)
  args = parser.parse_args(argv)
  writer = make_writer(args.directory)
  written = []
  for shard in writer.pending_shards():
    writer.write_shard(shard, fake_examples(np.asarray(writer.shard_range(shard))))
    written.append(shard)
    time.sleep(args.sleep)
  print(json.dumps({"written": written}))


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
  _worker(sys.argv[2:])
