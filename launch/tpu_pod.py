"""Run ``python -m discovery_jax.sample`` on every worker of a Cloud TPU VM pod slice.

Steps (each printed; ``--dry_run`` runs none):
  1. create the TPU VM unless it exists (``gcloud compute tpus tpu-vm describe``/``create``),
  2. install this repo on all workers (the working tree as a tarball, or ``--git_url``),
  3. optionally pull an earlier run's outputs from ``--output`` (``--pull``, to resume on new VMs),
  4. run the entry point on all workers at once (``--worker=all``); jax finds the
     pod layout itself (``parallel.initialize_distributed`` -> ``jax.distributed.initialize()``),
  5. with ``--output gs://...``: every worker uploads its shards, then worker 0 merges
     them, finalizes the dataset (verifies every shard, writes the tfds metadata) and
     uploads the result; ``--download DIR`` copies it here.

Example::

    python launch/tpu_pod.py --tpu=disco-v4-32 --zone=us-central2-b --accelerator_type=v4-32 \
      --config=configs/afhq.py --workdir=runs/afhq --output=gs://my-bucket/afhq --bfloat16 \
      --config.sampling.num_samples=100000 --dry_run
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import Step  # noqa: E402

TARBALL = "discovery_jax-src.tgz"


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--tpu", required=True, help="TPU VM name")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
  p.add_argument("--accelerator_type", default="v4-32", help="for create, e.g. v4-32, v5litepod-16")
  p.add_argument("--runtime_version", default="tpu-ubuntu2204-base", help="TPU VM image, for create")
  p.add_argument("--spot", action="store_true", help="create a Spot TPU VM (may be preempted: resume by rerunning)")
  p.add_argument("--git_url", default=None, help="install from this git repository instead of the local tree")
  p.add_argument("--git_ref", default="main")
  p.add_argument("--repo", default=_common.REPO, help="local tree to copy to the workers (without --git_url)")
  p.add_argument("--remote_dir", default="discovery_jax", help="checkout on each worker (relative to home)")
  p.add_argument(
      "--python",
      default="python3",
      help="python (>= 3.11: the pinned numpy/scipy need it) on the workers; shell text, e.g. ~/venv/bin/python",
  )
  p.add_argument(
      "--setup",
      default=None,
      help="shell commands run on every worker before installing, e.g. to make a python 3.11 venv "
      "(stock TPU VM images ship python 3.10)",
  )
  p.add_argument("--jax_extra", default="jax[tpu]==0.10.2", help="pip requirement that brings libtpu")
  p.add_argument("--output", default=None, help="gs:// prefix that collects the outputs of all workers")
  p.add_argument(
      "--dataset_subdir",
      default="samples/discovery/dataset",
      help="the dataset directory inside --workdir that the entry point writes (finalized after merging)",
  )
  p.add_argument("--pull", action="store_true", help="first copy --output to every worker (resume on fresh VMs)")
  p.add_argument("--download", default=None, help="local directory to copy --output into at the end")
  p.add_argument(
      "--detach",
      action="store_true",
      help="start the run in the background on every worker (nohup) and stop; collect later with "
      "--skip_create --skip_install --skip_run",
  )
  for step in ("create", "install", "run"):
    p.add_argument(f"--skip_{step}", action="store_true")
  p.add_argument("--delete", action="store_true", help="delete the TPU VM at the end")
  _common.add_sample_args(p, "output directory on each worker (relative to --remote_dir, or absolute)")
  return p


def _gcloud(args, *words: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", *words, f"--zone={args.zone}"]
  return cmd + ([f"--project={args.project}"] if args.project else [])


def _ssh(args, command: str, worker: str = "all") -> list[str]:
  return _gcloud(args, "ssh", args.tpu, f"--worker={worker}", f"--command={command}")


def build_steps(args) -> list[Step]:
  q = shlex.quote
  cd = f"cd {q(args.remote_dir)}"
  steps = []
  if not args.skip_create:
    steps.append(
        Step("does the TPU VM exist?", _gcloud(args, "describe", args.tpu, "--format=value(state)"), may_fail=True)
    )
    create = _gcloud(
        args, "create", args.tpu, f"--accelerator-type={args.accelerator_type}", f"--version={args.runtime_version}"
    ) + (["--spot"] if args.spot else [])
    steps.append(Step(f"create TPU VM {args.tpu} ({args.accelerator_type})", create, only_if_failed=True))
  if not args.skip_install:
    pip = f"{args.python} -m pip install -q -e . {q(args.jax_extra)}"
    if args.setup:
      steps.append(Step("prepare python on all workers", _ssh(args, args.setup)))
    if args.git_url:
      steps.append(
          Step(
              "check out the repo and install it on all workers",
              _ssh(
                  args,
                  f"(test -d {q(args.remote_dir)}/.git || git clone -q {q(args.git_url)} {q(args.remote_dir)}) && "
                  f"{cd} && git fetch -q origin && git checkout -q {q(args.git_ref)} && {pip}",
              ),
          )
      )
    else:
      local_tar = os.path.join("/tmp", TARBALL)
      steps.append(
          Step(
              "pack the local working tree",
              [
                  "tar",
                  "-czf",
                  local_tar,
                  "--exclude=.git",
                  "--exclude=.venv",
                  "--exclude=venv",
                  "--exclude=__pycache__",
                  "--exclude=runs",
                  "--exclude=*.egg-info",
                  "-C",
                  args.repo,
                  ".",
              ],
          )
      )
      steps.append(
          Step("copy it to all workers", _gcloud(args, "scp", local_tar, f"{args.tpu}:{TARBALL}", "--worker=all"))
      )
      steps.append(
          Step(
              "unpack and install on all workers",
              _ssh(
                  args, f"mkdir -p {q(args.remote_dir)} && tar -xzf {TARBALL} -C {q(args.remote_dir)} && {cd} && {pip}"
              ),
          )
      )
  if args.pull and args.output:
    steps.append(
        Step(
            "pull earlier outputs to every worker (resume)",
            _ssh(
                args,
                f"{cd} && mkdir -p {q(args.workdir)} && (gcloud storage ls {q(args.output)} > /dev/null 2>&1 && "
                f"gcloud storage rsync -r {q(args.output)} {q(args.workdir)} || true)",
            ),
        )
    )
  if not args.skip_run:
    sample = args.python + " " + shlex.join(_common.sample_argv(args.python, args)[1:])
    if args.detach:
      log = f"{args.workdir}/host-$(hostname).log"
      steps.append(
          Step(
              "start the run on all workers in the background",
              _ssh(args, f"{cd} && mkdir -p {q(args.workdir)} && nohup {sample} > {log} 2>&1 &"),
          )
      )
      return steps
    steps.append(
        Step(
            "run on all workers (one jax process per worker; jax.distributed finds the pod)",
            _ssh(args, f"{cd} && {sample}"),
        )
    )
  if args.output:
    merged = f"{args.workdir}.merged"
    dataset = f"{merged}/{args.dataset_subdir}"
    steps.append(
        Step(
            "upload every worker's shards to one prefix",
            _ssh(args, f"{cd} && gcloud storage rsync -r {q(args.workdir)} {q(args.output)}"),
        )
    )
    steps.append(
        Step(
            "merge, finalize (verify every shard, write tfds metadata) and upload, on worker 0",
            _ssh(
                args,
                f"{cd} && mkdir -p {q(merged)} && gcloud storage rsync -r {q(args.output)} {q(merged)} && "
                f"{args.python} -m discovery_jax.data.dataset finalize {q(dataset)} && "
                f"gcloud storage rsync -r {q(merged)} {q(args.output)}",
                worker="0",
            ),
        )
    )
    if args.download:
      steps.append(Step("download the dataset here", ["gcloud", "storage", "rsync", "-r", args.output, args.download]))
  if args.delete:
    steps.append(Step("delete the TPU VM", _gcloud(args, "delete", args.tpu, "--quiet")))
  return steps


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = _common.parse(parser, argv)
  if args.download and not args.output:
    parser.error("--download needs --output (the gs:// prefix the workers upload to)")
  return _common.run_steps(build_steps(args), args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
