"""Dataset synthesis wall time: denoise + write, overlapped, against each alone.

``sample`` denoises latents shard by shard and writes every shard as a
tensorflow-datasets array_record file (PNG encoding, tf.Example serialization,
fsync, sha256, one PNG file per sample). ``DatasetWriter.write_pending`` writes
shard k on a background thread while shard k + 1 is denoised. Measured in one run,
contenders taking turns in every round (best of ``--rounds``), on the embedded demo
model (32x32 DDPM, t_0 = 400, 20 DDIM steps, as configs/demo.py):

  denoise alone     the ``generate`` of ``sample`` (DDIM, clip, samples.npy rows, uint8) per shard
  write alone       ``write_shard`` of the same, precomputed examples
  sequential        ``write_pending(..., overlap=False)``: generate, then write, shard after shard
  overlapped        ``write_pending(...)`` (the default that ``sample`` uses)

Target: overlapped <= 1.2 x max(denoise alone, write alone). The shard files of the
three writing contenders must be byte-identical (checked).

  python benchmarks/synthesis.py                    # 256 samples in shards of 32
  python benchmarks/synthesis.py --num_samples=512 --shard_size=64

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
if "XLA_FLAGS" not in os.environ:  # as the entry points do on a CPU: one host device per core.
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={os.cpu_count()}"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from discovery_jax import models, parallel  # noqa: E402
from discovery_jax.data import dataset, images  # noqa: E402
from discovery_jax.runner import DDIMRunner  # noqa: E402

DEMO_MODEL = os.path.join(REPO, "discovery_jax", "assets", "demo", "model")
TARGET = 1.2


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_samples", type=int, default=256)
  parser.add_argument("--shard_size", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=32, help="per device, as configs/demo.py")
  parser.add_argument("--t_0", type=int, default=400)
  parser.add_argument("--n_steps", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--no_png_files", action="store_true", help="dataset records only (no images/ folder)")
  args = parser.parse_args()

  module, params = models.load(DEMO_MODEL)
  from discovery_jax import diffusion

  runner = DDIMRunner(
      diffusion.eps_fn(module, params), args.t_0, args.n_steps, batch_size=args.batch_size, mesh=parallel.make_mesh()
  )
  n, size, ch = args.num_samples, module.image_size, module.in_channels
  shape = (size, size, ch)
  latents = np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)
  spec = dataset.features_spec(shape, latent_shape=shape)
  root = tempfile.mkdtemp(prefix="synthesis_bench_")
  rows = np.lib.format.open_memmap(os.path.join(root, "samples.npy"), mode="w+", dtype=np.float32, shape=(n, *shape))
  del rows

  def generate(indices: np.ndarray) -> dict:  # what sample.stage_images' generate does
    x = np.clip(runner.generate(latents[indices]), -1.0, 1.0)
    out = np.load(os.path.join(root, "samples.npy"), mmap_mode="r+")
    out[indices] = x
    out.flush()
    del out
    return {"image": images.to_uint8(x), "index": indices.astype(np.int64), "latent": latents[indices]}

  def writer(name: str) -> dataset.DatasetWriter:
    path = os.path.join(root, name)
    shutil.rmtree(path, ignore_errors=True)
    return dataset.DatasetWriter(
        path, "bench", n, args.shard_size, spec, metadata={"seed": 0}, write_images=not args.no_png_files
    )

  # Warm-up: compile the shard's trajectory, import and build the serializer.
  w = writer("warmup")
  w.write_shard(0, generate(np.arange(min(args.shard_size, n), dtype=np.int64)))
  shard_indices = [np.arange(r.start, r.stop, dtype=np.int64) for r in map(w.shard_range, range(w.num_shards))]
  precomputed = [generate(idx) for idx in shard_indices]

  def denoise_alone():
    for idx in shard_indices:
      generate(idx)

  def write_alone():
    w = writer("write_alone")
    for shard, examples in enumerate(precomputed):
      w.write_shard(shard, examples)

  def sequential():
    writer("sequential").write_pending(generate, overlap=False)

  def overlapped():
    writer("overlapped").write_pending(generate)

  fns = {"denoise_alone": denoise_alone, "write_alone": write_alone, "sequential": sequential, "overlapped": overlapped}
  best = {k: float("inf") for k in fns}
  for _ in range(args.rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - start)
      print(f"  {name:14s} {time.perf_counter() - start:7.2f} s", flush=True)

  def digests(name):
    folder = os.path.join(root, name)
    out = {}
    for f in sorted(os.listdir(folder)):
      if ".array_record-" in f:
        with open(os.path.join(folder, f), "rb") as fh:
          out[f] = hashlib.sha256(fh.read()).hexdigest()
    return out

  identical = digests("write_alone") == digests("sequential") == digests("overlapped")
  floor = max(best["denoise_alone"], best["write_alone"])
  result = {
      "device": jax.devices()[0].platform,
      "devices": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "num_samples": n,
      "shard_size": args.shard_size,
      "png_files": not args.no_png_files,
      "seconds": {k: round(v, 3) for k, v in best.items()},
      "overlapped_over_max_alone": round(best["overlapped"] / floor, 3),
      "sequential_over_max_alone": round(best["sequential"] / floor, 3),
      "overlapped_samples_per_s": round(n / best["overlapped"], 2),
      "target": TARGET,
      "target_met": bool(best["overlapped"] <= TARGET * floor),
      "shards_byte_identical": bool(identical),
  }
  shutil.rmtree(root, ignore_errors=True)
  print(
      f"denoise alone {best['denoise_alone']:.2f} s, write alone {best['write_alone']:.2f} s, sequential "
      f"{best['sequential']:.2f} s, overlapped {best['overlapped']:.2f} s = {result['overlapped_over_max_alone']:.2f}x "
      f"max(alone) (target <= {TARGET}x); shards byte-identical: {identical}"
  )
  print(json.dumps(result))


if __name__ == "__main__":
  main()
