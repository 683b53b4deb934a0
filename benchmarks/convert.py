"""Conversion time and peak RAM for the full 256x256 checkpoints.

Writes random weights in the real format (``torch.save(state_dict)``, 450 / 362
tensors) for the CelebA-HQ DDPM and the AFHQ iDDPM, converts each in a fresh
child process and reports wall time, the child's peak resident memory (VmHWM),
and that peak relative to the checkpoint size. Targets: < 60 s, < 3x the file size.

  python benchmarks/convert.py            # both
  python benchmarks/convert.py --only=afhq

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CHILD = textwrap.dedent("""
    import json, sys, time
    def rss(field):
      for line in open('/proc/self/status'):
        if line.startswith(field):
          return int(line.split()[1]) / 1024
    from convert.writer import convert_checkpoint
    from discovery_jax import configlib
    config = configlib.load_config_file(sys.argv[1])
    baseline = rss('VmRSS:')
    start = time.time()
    summary = convert_checkpoint(sys.argv[2], sys.argv[3], config.model)
    print(json.dumps({'seconds': time.time() - start, 'peak_rss_mb': rss('VmHWM:'),
                      'baseline_rss_mb': baseline, 'num_params': summary['num_params'],
                      'num_tensors': summary['num_tensors']}))
    """)


def write_random_checkpoint(config_path: str, path: str, seed: int = 0) -> int:
  import numpy as np
  import torch
  from convert import torch_to_flax
  from discovery_jax import configlib

  config = configlib.load_config_file(config_path)
  rng = np.random.default_rng(seed)
  state = {}
  for key, (_, shape) in torch_to_flax.expected_state_dict(config.model).items():
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    state[key] = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32) / float(np.sqrt(fan_in)))
    assert state[key].dtype == torch.float32
  torch.save(state, path)
  return os.path.getsize(path)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", choices=["celeba", "afhq"], default=None)
  args = parser.parse_args()
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name in ("celeba", "afhq"):
      if args.only and name != args.only:
        continue
      config_path = os.path.join(REPO, "configs", f"{name}.py")
      ckpt = os.path.join(tmp, f"{name}.pt")
      size_mb = write_random_checkpoint(config_path, ckpt) / 2**20
      proc = subprocess.run(
          [sys.executable, "-c", CHILD, config_path, ckpt, os.path.join(tmp, f"{name}_flax")],
          capture_output=True,
          text=True,
          cwd=REPO,
      )
      if proc.returncode:
        sys.exit(f"conversion of {name} failed:\n{proc.stderr[-3000:]}")
      r = json.loads(proc.stdout.strip().splitlines()[-1])
      r["checkpoint_mb"] = round(size_mb, 1)
      r["peak_over_file"] = round(r["peak_rss_mb"] / size_mb, 2)
      r["peak_minus_baseline_over_file"] = round((r["peak_rss_mb"] - r["baseline_rss_mb"]) / size_mb, 2)
      r["seconds"] = round(r["seconds"], 2)
      results[name] = r
      print(
          f"{name:7s} {r['num_tensors']} tensors, {r['num_params']:,} params, file {size_mb:.0f} MB: "
          f"{r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB ({r['peak_over_file']}x the file; "
          f"{r['peak_minus_baseline_over_file']}x above the {r['baseline_rss_mb']:.0f} MB after imports)"
      )
      os.remove(ckpt)
  results["targets"] = {"seconds": 60, "peak_over_file": 3}
  results["meets_targets"] = all(
      r["seconds"] < 60 and r["peak_over_file"] < 3 for k, r in results.items() if k in ("celeba", "afhq")
  )
  print(json.dumps(results))


if __name__ == "__main__":
  main()
