"""DDIM generation throughput against device count, and model-FLOP utilisation.

Weak scaling: a fixed per-device batch on meshes of 1, 2, 4, ... devices (the data
axis of ``discovery_jax.parallel``), everything else equal; images/s, speed-up
over one device, and efficiency, all measured in one run. On a CPU the devices are
simulated host devices (XLA_FLAGS=--xla_force_host_platform_device_count is set
here before jax starts): they share the machine's cores, so throughput grows
only up to the core count. On a GPU/TPU machine the real devices are used, and
the model-FLOP utilisation (XLA cost analysis of one UNet forward, times the UNet
calls, over time) is reported against ``--peak_tflops``.

  python benchmarks/scaling.py                                   # small iDDPM, CPU
  python benchmarks/scaling.py --model=afhq --per_device_batch=16 --dtype=bfloat16   # 256x256 on GPUs

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="iddpm_small", help="iddpm_small, ddpm_small, demo, afhq, celeba, ...")
  parser.add_argument("--device_counts", default="1,2,4,8")
  parser.add_argument("--per_device_batch", type=int, default=4)
  parser.add_argument("--t_0", type=int, default=500)
  parser.add_argument("--n_steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--precision", default="highest")
  parser.add_argument("--peak_tflops", type=float, default=989.0, help="per-device bf16 dense peak (H100 SXM)")
  args = parser.parse_args()
  counts = [int(c) for c in args.device_counts.split(",")]
  if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={max(counts)}"

  import jax
  import jax.numpy as jnp
  import numpy as np
  from discovery_jax import configlib, diffusion, models, parallel, runner as inversion
  from tests import helpers

  if args.model in ("iddpm_small", "ddpm_small"):
    cfg = helpers.vector_model_config(args.model.split("_")[0])
  else:
    name = "demo_base" if args.model == "demo" else args.model
    cfg = configlib.load_config_file(os.path.join(REPO, "configs", f"{name}.py")).model.to_dict()
  cfg = {**models.validate(cfg), "dtype": args.dtype, "precision": args.precision}
  module = models.create_model(cfg)
  params = models.init_params(module, jax.random.key(0))
  fn = diffusion.eps_fn(module, params)
  devices = jax.devices()
  counts = [c for c in counts if c <= len(devices)]
  size, ch = module.image_size, module.in_channels
  unet_calls = args.n_steps  # generation: n_steps UNet calls per image.

  fwd = jax.jit(lambda p, x, t: module.apply({"params": p}, x, t))
  b = args.per_device_batch
  cost = fwd.lower(params, jnp.zeros((b, size, size, ch)), jnp.zeros((b,))).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_per_image = float(cost.get("flops", 0.0)) / b

  rows = []
  for k in counts:
    mesh = parallel.make_mesh(k)
    runner = inversion.DDIMRunner(fn, args.t_0, args.n_steps, batch_size=b, mesh=mesh)
    x = np.random.default_rng(0).standard_normal((runner.global_batch, size, size, ch)).astype(np.float32)
    runner.generate(x)  # compile.
    best = float("inf")
    for _ in range(args.repeats):
      start = time.perf_counter()
      runner.generate(x)
      best = min(best, time.perf_counter() - start)
    ips = runner.global_batch / best
    row = {
        "devices": k,
        "global_batch": runner.global_batch,
        "images_per_s": ips,
        "achieved_tflops": flops_per_image * unet_calls * ips / 1e12,
    }
    if devices[0].platform != "cpu":
      row["mfu"] = row["achieved_tflops"] / (args.peak_tflops * k)
    rows.append(row)
    print(
        f"{k:3d} device(s): global batch {runner.global_batch:4d}, {ips:9.2f} images/s, "
        f"{row['achieved_tflops']:.4f} TFLOP/s" + (f", MFU {row['mfu']:.3f}" if "mfu" in row else ""),
        flush=True,
    )
  base = rows[0]["images_per_s"]
  for r in rows:
    r["speedup"] = r["images_per_s"] / base
    r["efficiency"] = r["speedup"] / (r["devices"] / rows[0]["devices"])
  result = {
      "model": args.model,
      "image_size": size,
      "platform": devices[0].platform,
      "device_kind": devices[0].device_kind,
      "cpu_cores": os.cpu_count(),
      "dtype": args.dtype,
      "per_device_batch": b,
      "n_steps": args.n_steps,
      "gflops_per_unet_call_per_image": flops_per_image / 1e9,
      "rows": rows,
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
