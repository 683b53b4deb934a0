"""Write (and optionally submit) a SLURM batch script that runs ``python -m
discovery_jax.sample`` on several GPU nodes.

Default: one task per node that drives all the node's GPUs (the usual JAX layout:
one process per host). ``--per_gpu``: one task per GPU (``--gpus-per-task=1`` makes
SLURM give each its own ``CUDA_VISIBLE_DEVICES``). Either way every task calls
``parallel.initialize_distributed``, which reads SLURM_PROCID / SLURM_NTASKS and the
first host of the node list; ``DISCOVERY_COORDINATOR_PORT`` fixes the port. The
workdir must be on a file system all nodes share: task 0 finalizes the dataset
after every task wrote its shards.

Example::

    python launch/slurm.py --nodes=4 --gpus_per_node=8 --partition=gpu --time=12:00:00 \
      --config=configs/afhq.py --workdir=/shared/runs/afhq --setup="source ~/venv/bin/activate" --dry_run
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


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--nodes", type=int, default=1)
  p.add_argument("--gpus_per_node", type=int, default=8)
  p.add_argument("--per_gpu", action="store_true", help="one task per GPU instead of one per node")
  p.add_argument("--cpus_per_task", type=int, default=None)
  p.add_argument("--partition", default=None)
  p.add_argument("--account", default=None)
  p.add_argument("--time", default="24:00:00")
  p.add_argument("--job_name", default="discovery-sample")
  p.add_argument("--port", type=int, default=None, help="coordinator port (default: derived from the job id)")
  p.add_argument("--repo", default=_common.REPO, help="checkout on the shared file system")
  p.add_argument("--setup", default=None, help="shell line run first, e.g. 'source ~/venv/bin/activate'")
  p.add_argument("--python", default="python")
  p.add_argument("--sbatch_file", default="discovery_sample.sbatch", help="where to write the script")
  p.add_argument("--submit", action="store_true", help="run sbatch on the written script")
  _common.add_sample_args(p, "output directory on a file system every node sees (rerun to resume)")
  return p


def sbatch_script(args) -> str:
  tasks = args.gpus_per_node if args.per_gpu else 1
  lines = [
      "#!/bin/bash",
      f"#SBATCH --job-name={args.job_name}",
      f"#SBATCH --nodes={args.nodes}",
      f"#SBATCH --ntasks-per-node={tasks}",
      f"#SBATCH --gpus-per-node={args.gpus_per_node}",
  ]
  if args.per_gpu:
    lines.append("#SBATCH --gpus-per-task=1")
  if args.cpus_per_task:
    lines.append(f"#SBATCH --cpus-per-task={args.cpus_per_task}")
  lines += [f"#SBATCH --time={args.time}", "#SBATCH --output=%x-%j.out"]
  lines += [f"#SBATCH --{k}={v}" for k, v in (("partition", args.partition), ("account", args.account)) if v]
  lines += ["", "set -euo pipefail", f"cd {shlex.quote(args.repo)}"]
  if args.setup:
    lines.append(args.setup)
  if args.port:
    lines.append(f"export DISCOVERY_COORDINATOR_PORT={args.port}")
  lines += [
      f"mkdir -p {shlex.quote(args.workdir)}",
      "# Every task joins through parallel.initialize_distributed (SLURM_PROCID, SLURM_NTASKS, node list).",
      "srun --kill-on-bad-exit=1 " + args.python + " " + shlex.join(_common.sample_argv("", args)[1:]),
      "",
  ]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  args = _common.parse(build_parser(), argv)
  script = sbatch_script(args)
  if args.dry_run:
    print(f"# would write {args.sbatch_file}:")
    print(script)
  else:
    with open(args.sbatch_file, "w") as f:
      f.write(script)
    print(f"# wrote {args.sbatch_file}")
  if args.submit:
    return _common.run_steps([Step("submit", ["sbatch", args.sbatch_file])], args.dry_run)
  if not args.dry_run:
    print(f"submit with: sbatch {shlex.quote(args.sbatch_file)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
