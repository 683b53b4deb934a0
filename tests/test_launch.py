"""The launchers' dry runs print the exact commands and run nothing."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch")


def _load(name):
  spec = importlib.util.spec_from_file_location(f"launch_{name}", os.path.join(LAUNCH, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(autouse=True)
def no_commands(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError(f"a dry run ran {args}")

  monkeypatch.setattr(subprocess, "run", refuse)
  monkeypatch.setattr(subprocess, "Popen", refuse)


SAMPLE = ["--config=configs/afhq.py", "--workdir=runs/afhq", "--config.sampling.num_samples=1000", "--dry_run"]


def test_tpu_pod_dry_run(capsys, tmp_path):
  tpu = _load("tpu_pod")
  assert (
      tpu.main(
          [
              "--tpu=disco",
              "--zone=us-central2-b",
              "--project=p1",
              "--output=gs://bucket/afhq",
              "--bfloat16",
              "--download",
              str(tmp_path / "here"),
              "--setup=python3.11 -m venv ~/venv",
              "--python=~/venv/bin/python",
              "--delete",
              *SAMPLE,
          ]
      )
      == 0
  )
  out = capsys.readouterr().out
  lines = [l for l in out.splitlines() if not l.startswith("#")]
  assert lines[0] == (
      "gcloud compute tpus tpu-vm describe disco '--format=value(state)' --zone=us-central2-b " "--project=p1"
  )
  assert lines[1].startswith("gcloud compute tpus tpu-vm create disco --accelerator-type=v4-32")
  assert "(only if the step above fails)" in out
  assert any(l.startswith("tar -czf /tmp/discovery_jax-src.tgz") for l in lines)
  assert any("scp /tmp/discovery_jax-src.tgz disco:discovery_jax-src.tgz --worker=all" in l for l in lines)
  run = [l for l in lines if "-m discovery_jax.sample" in l]
  assert len(run) == 1 and "--worker=all" in run[0]
  assert (
      "cd discovery_jax && ~/venv/bin/python -m discovery_jax.sample --config=configs/afhq.py "
      "--workdir=runs/afhq --config.sampling.num_samples=1000 --config.model.dtype=bfloat16"
  ) in run[0]
  assert any(
      "--worker=0" in l and "discovery_jax.data.dataset finalize runs/afhq.merged/samples/discovery/dataset" in l
      for l in lines
  )
  assert lines[-2] == f"gcloud storage rsync -r gs://bucket/afhq {tmp_path / 'here'}"
  assert lines[-1] == "gcloud compute tpus tpu-vm delete disco --quiet --zone=us-central2-b --project=p1"
  assert not (tmp_path / "here").exists()


def test_tpu_pod_git_install_and_detach(capsys):
  tpu = _load("tpu_pod")
  assert (
      tpu.main(
          [
              "--tpu=t",
              "--zone=z",
              "--skip_create",
              "--git_url=https://example.com/r.git",
              "--git_ref=v1",
              "--detach",
              *SAMPLE,
          ]
      )
      == 0
  )
  out = capsys.readouterr().out
  assert "describe" not in out and "git clone -q https://example.com/r.git discovery_jax" in out
  assert "git checkout -q v1" in out and "nohup python3 -m discovery_jax.sample" in out
  with pytest.raises(SystemExit):
    tpu.main(["--tpu=t", "--zone=z", "--bogus", *SAMPLE])


def test_gpu_node_dry_runs(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  gpu = _load("gpu_node")
  assert gpu.main(["--gpus=0,1,2", "--python=python", *SAMPLE]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[1] == (
      "CUDA_VISIBLE_DEVICES=0,1,2 python -m discovery_jax.sample --config=configs/afhq.py "
      "--workdir=runs/afhq --config.sampling.num_samples=1000"
  )
  assert gpu.main(["--gpus=0,1", "--mode=per_gpu", "--port=4000", "--python=python", *SAMPLE]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[1] == (
      "CUDA_VISIBLE_DEVICES=0 DISCOVERY_COORDINATOR=127.0.0.1:4000 "
      "DISCOVERY_NUM_PROCESSES=2 DISCOVERY_PROCESS_ID=0 python -m discovery_jax.sample "
      "--config=configs/afhq.py --workdir=runs/afhq --config.sampling.num_samples=1000 "
      "> runs/afhq/logs/process_0.log 2>&1 &"
  )
  assert out[3].startswith(
      "CUDA_VISIBLE_DEVICES=1 DISCOVERY_COORDINATOR=127.0.0.1:4000 DISCOVERY_NUM_PROCESSES=2 " "DISCOVERY_PROCESS_ID=1 "
  )
  assert out[-1] == "wait"
  assert not os.path.exists("runs/afhq/logs")


def test_slurm_dry_run_prints_the_batch_script(capsys, tmp_path):
  slurm = _load("slurm")
  target = tmp_path / "job.sbatch"
  assert (
      slurm.main(
          [
              "--nodes=4",
              "--gpus_per_node=8",
              "--per_gpu",
              "--partition=gpu",
              "--port=23456",
              f"--sbatch_file={target}",
              "--setup=source ~/venv/bin/activate",
              "--submit",
              "--bfloat16",
              *SAMPLE,
          ]
      )
      == 0
  )
  out = capsys.readouterr().out
  for line in (
      "#SBATCH --nodes=4",
      "#SBATCH --ntasks-per-node=8",
      "#SBATCH --gpus-per-task=1",
      "#SBATCH --partition=gpu",
      "export DISCOVERY_COORDINATOR_PORT=23456",
      "source ~/venv/bin/activate",
      "srun --kill-on-bad-exit=1 python -m discovery_jax.sample --config=configs/afhq.py --workdir=runs/afhq "
      "--config.sampling.num_samples=1000 --config.model.dtype=bfloat16",
      f"sbatch {target}",
  ):
    assert line in out.splitlines(), line
  assert not target.exists()
  assert slurm.main([f"--sbatch_file={target}", *SAMPLE[:-1]]) == 0  # without --dry_run: writes, submits nothing.
  assert "#SBATCH --ntasks-per-node=1" in target.read_text()


def test_gpu_node_per_gpu_stops_the_others_when_one_fails(tmp_path, monkeypatch):
  monkeypatch.undo()  # this one really starts processes.
  gpu = _load("gpu_node")
  args = gpu.build_parser().parse_args(["--config=c", f"--workdir={tmp_path}"])
  steps = [
      gpu.Step("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"]),
      gpu.Step("fails", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]),
  ]
  assert gpu.run_parallel(args, steps) == 3
  assert "boom" in (tmp_path / "logs" / "process_1.log").read_text()
