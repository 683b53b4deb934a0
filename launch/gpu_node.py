"""Run ``python -m discovery_jax.sample`` on one machine with several GPUs.

``--mode=single`` (default): ONE process drives all GPUs. Sampling a frozen model is
pure data parallelism, so a mesh over the local GPUs needs no coordinator and no
cross-process collectives; one process also loads the model and the input once,
and writes one log. Use this unless host-side work (PNG encoding, image decoding)
is what limits throughput.

``--mode=per_gpu``: one process per GPU (``CUDA_VISIBLE_DEVICES=i``), joined through
``DISCOVERY_COORDINATOR``/``DISCOVERY_NUM_PROCESSES``/``DISCOVERY_PROCESS_ID`` on
localhost. Each writes its own shards (shard s by process s % N), so Python-side
work scales with the GPUs. If one process fails, the others are stopped (they would
wait for it) and the run can simply be restarted: finished shards are kept.

Example::

    python launch/gpu_node.py --config=configs/afhq.py --workdir=runs/afhq --gpus=0,1,2,3 \
      --mode=per_gpu --bfloat16 --dry_run
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import Step  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--mode", choices=("single", "per_gpu"), default="single")
  p.add_argument("--gpus", default=None, help="comma-separated GPU ids (default: every GPU nvidia-smi lists)")
  p.add_argument("--python", default=sys.executable)
  p.add_argument("--port", type=int, default=12355, help="coordinator port on localhost for --mode=per_gpu")
  _common.add_sample_args(p, "output directory (rerun with the same one to resume)")
  return p


def visible_gpus(spec: str | None) -> list[str]:
  if spec:
    return [g.strip() for g in spec.split(",") if g.strip()]
  if shutil.which("nvidia-smi") is None:
    raise SystemExit("error: nvidia-smi not found; pass --gpus=0,1,... explicitly")
  out = subprocess.run(
      ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, check=True
  ).stdout
  return [line.strip() for line in out.splitlines() if line.strip()]


def build_steps(args, gpus: list[str]) -> list[Step]:
  argv = _common.sample_argv(args.python, args)
  if args.mode == "single":
    return [Step(f"one process driving GPUs {','.join(gpus)}", argv, {"CUDA_VISIBLE_DEVICES": ",".join(gpus)})]
  port = args.port
  steps = []
  for i, gpu in enumerate(gpus):
    env = {
        "CUDA_VISIBLE_DEVICES": gpu,
        "DISCOVERY_COORDINATOR": f"127.0.0.1:{port}",
        "DISCOVERY_NUM_PROCESSES": str(len(gpus)),
        "DISCOVERY_PROCESS_ID": str(i),
    }
    steps.append(Step(f"process {i} of {len(gpus)} on GPU {gpu} (log: {log_path(args, i)})", argv, env))
  return steps


def log_path(args, process: int) -> str:
  return os.path.join(args.workdir, "logs", f"process_{process}.log")


def run_parallel(args, steps: list[Step]) -> int:
  """Starts every process, waits; the first failure stops the rest (they would hang on it)."""
  os.makedirs(os.path.join(args.workdir, "logs"), exist_ok=True)
  procs = []
  for i, step in enumerate(steps):
    log = open(log_path(args, i), "ab")
    procs.append(
        (subprocess.Popen(step.argv, env={**os.environ, **step.env}, stdout=log, stderr=subprocess.STDOUT), log)
    )
  code = 0
  try:
    while procs and any(p.poll() is None for p, _ in procs):
      failed = [(i, p.returncode) for i, (p, _) in enumerate(procs) if p.poll() not in (None, 0)]
      if failed:
        code = failed[0][1]
        print(
            f"error: process {failed[0][0]} exited with {code} (see {log_path(args, failed[0][0])}); "
            "stopping the others",
            file=sys.stderr,
        )
        break
      time.sleep(1)
  finally:
    for p, log in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
          p.wait(30)
        except subprocess.TimeoutExpired:
          p.kill()
      log.close()
  return code or max((p.returncode for p, _ in procs), default=0, key=abs)


def main(argv: Sequence[str] | None = None) -> int:
  args = _common.parse(build_parser(), argv)
  gpus = visible_gpus(args.gpus)
  steps = build_steps(args, gpus)
  if args.mode == "single" or len(steps) == 1:
    return _common.run_steps(steps[:1], args.dry_run)
  for i, step in enumerate(steps):
    print(f"# {step.what}")
    print(f"{step.render()} > {shlex.quote(log_path(args, i))} 2>&1 &", flush=True)
  print("wait")
  return 0 if args.dry_run else run_parallel(args, steps)


if __name__ == "__main__":
  sys.exit(main())
