"""What the launchers share: the sample command, printing (``--dry_run``) or running steps."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
from typing import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINT = "discovery_jax.sample"


@dataclasses.dataclass
class Step:
  """One command: ``argv`` run locally (with extra ``env``), described by ``what``."""

  what: str
  argv: list[str]
  env: dict[str, str] = dataclasses.field(default_factory=dict)
  may_fail: bool = False  # a failure is an answer (e.g. "does the TPU VM exist?"), not an error.
  only_if_failed: bool = False  # run only when the step before failed (create what describe did not find).

  def render(self) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
    return (env + " " if env else "") + shlex.join(self.argv)


def add_sample_args(parser: argparse.ArgumentParser, workdir_help: str) -> None:
  parser.add_argument("--config", required=True, help="sample config, e.g. configs/afhq.py (relative to the repo)")
  parser.add_argument("--workdir", required=True, help=workdir_help)
  parser.add_argument(
      "--bfloat16",
      action="store_true",
      help="run the network in bfloat16 (adds --config.model.dtype=bfloat16): ~2x faster on "
      "TPU/GPU; samples differ slightly from float32, so keep one dtype per dataset",
  )
  parser.add_argument("--dry_run", action="store_true", help="print the exact commands and run nothing")


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None):
  """Parses known flags; ``--config.a.b=value`` overrides pass through to the entry point."""
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)} (only --config.x=y overrides pass through)")
  args.overrides = list(rest) + (["--config.model.dtype=bfloat16"] if args.bfloat16 else [])
  return args


def sample_argv(python: str, args) -> list[str]:
  return [python, "-m", ENTRY_POINT, f"--config={args.config}", f"--workdir={args.workdir}", *args.overrides]


def run_steps(steps: Sequence[Step], dry_run: bool) -> int:
  """Prints every step; runs them in order unless ``dry_run``. Returns the exit code."""
  last = 0
  for step in steps:
    print(f"# {step.what}" + (" (only if the step above fails)" if step.only_if_failed else ""))
    print(step.render(), flush=True)
    if dry_run:
      continue
    if step.only_if_failed and last == 0:
      print("# (skipped: the step above succeeded)")
      continue
    code = last = subprocess.run(step.argv, env={**os.environ, **step.env}).returncode
    if code and not step.may_fail:
      print(f"error: step failed with exit code {code}: {step.what}", file=sys.stderr)
      return code
  return 0
