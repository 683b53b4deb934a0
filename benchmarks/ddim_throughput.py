"""Images/s of DDIM invert + generate: JAX kernels vs PyTorch, measured in one run.

  (a) jax      : discovery_jax.diffusion (one jitted lax.scan per trajectory, batched)
  (b) torch    : a straightforward batched PyTorch eager loop on the same weights
  (c) official : the official style: batch 1, one Python-level model call per step

Same weights (random, converted), same float32 precision, same t_0 / steps.
Model FLOPs come from XLA's cost analysis of one UNet forward; on a GPU the
model-FLOP utilisation is reported against ``--peak_tflops`` (bf16 dense peak).

  python benchmarks/ddim_throughput.py                       # small 32x32 iDDPM, CPU
  python benchmarks/ddim_throughput.py --model=afhq --batch=32 --dtype=bfloat16   # GPU, full 256

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
# As the entry points do on a CPU: one XLA host device per core, the batch sharded
# over them (XLA:CPU runs a convolution on about one core). Ignored on GPUs.
if "XLA_FLAGS" not in os.environ and "--single_device" not in sys.argv:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={os.cpu_count()}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from convert import torch_to_flax  # noqa: E402
from discovery_jax import configlib, diffusion, inversion, models, parallel  # noqa: E402
from tests import helpers, torch_reference  # noqa: E402


def model_config(name: str) -> dict:
  if name in ("ddpm_small", "iddpm_small"):
    return helpers.vector_model_config(name.split("_")[0])
  return configlib.load_config_file(os.path.join(REPO, "configs", f"{name}.py")).model.to_dict()


def torch_loop(net, x, pairs, alphas, learn_sigma, device):
  """Batched eager DDIM (eta = 0) over ``pairs``."""
  a = torch.from_numpy(alphas).float().to(device)
  with torch.no_grad():
    for t, t_next in pairs:
      tt = torch.full((x.shape[0],), float(t), device=device)
      _, et = net(x, tt)
      if learn_sigma:
        et = et[:, : et.shape[1] // 2]
      at = a[t]
      at_next = torch.ones((), device=device) if t_next < 0 else a[t_next]
      x0 = (x - et * (1 - at).sqrt()) / at.sqrt()
      x = at_next.sqrt() * x0 + (1 - at_next).sqrt() * et
  return x


def timed(fn, repeats: int) -> float:
  fn()  # warm-up (compilation for JAX, allocator/threads for torch).
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="iddpm_small", help="iddpm_small, ddpm_small, afhq, celeba, ...")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--t_0", type=int, default=900)
  parser.add_argument("--n_steps", type=int, default=20)
  parser.add_argument("--official_images", type=int, default=2, help="images for the batch-1 loop")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--dtype", default="float32", help="JAX compute dtype (torch stays float32)")
  parser.add_argument("--precision", default="highest", help="JAX matmul precision for float32")
  parser.add_argument("--peak_tflops", type=float, default=989.0, help="accelerator bf16 dense peak")
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--single_device", action="store_true", help="JAX on one device (no host-device mesh)")
  args = parser.parse_args()

  cfg = models.validate(model_config(args.model))
  device = "cuda" if torch.cuda.is_available() else "cpu"
  net = torch_reference.from_model_config(cfg)
  torch_reference.randomize_(net, 0)
  net = net.eval().to(device)
  state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
  params = torch_to_flax.convert_state_dict(state, cfg)
  module = models.create_model({**cfg, "dtype": args.dtype, "precision": args.precision})
  fn = diffusion.eps_fn(module, jax.device_put(params))
  learn_sigma = cfg["arch"] == "iddpm" and cfg["out_channels"] == 2 * cfg["in_channels"]
  size, ch = cfg["image_size"], cfg["in_channels"]
  rng = np.random.default_rng(0)
  x_np = rng.uniform(-1, 1, (args.batch, size, size, ch)).astype(np.float32)
  inv, gen = (np.stack(p, 1) for p in (diffusion.inversion_pairs(args.t_0, args.n_steps),
                                       diffusion.generation_pairs(args.t_0, args.n_steps)))
  alphas = diffusion.DEFAULT_SCHEDULE.alphas_cumprod
  unet_calls = len(inv) + len(gen)

  devices = jax.devices()
  n_dev = 1 if args.single_device else max(d for d in range(1, len(devices) + 1)
                                           if args.batch % d == 0 and d <= len(devices))
  mesh = parallel.make_mesh(n_dev)
  runner = inversion.DDIMRunner(fn, args.t_0, args.n_steps, batch_size=args.batch // n_dev, mesh=mesh)

  def run_jax():
    runner.generate(runner.invert(x_np))
  x_jax = jnp.asarray(x_np)

  compile_start = time.perf_counter()
  run_jax()
  compile_s = time.perf_counter() - compile_start
  jax_s = timed(run_jax, args.repeats)
  results = {"model": args.model, "arch": cfg["arch"], "image_size": size, "batch": args.batch,
             "t_0": args.t_0, "n_steps": args.n_steps, "unet_calls_per_image": unet_calls,
             "platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
             "jax_dtype": args.dtype, "jax_devices": n_dev, "jax_first_call_s": round(compile_s, 2),
             "torch_threads": torch.get_num_threads()}
  results["jax_images_per_s"] = args.batch / jax_s

  # Model FLOPs of one forward at this batch, from XLA's cost analysis.
  fwd = jax.jit(lambda p, x, t: module.apply({"params": p}, x, t))
  lowered = fwd.lower(fn.params, x_jax, jnp.zeros((args.batch,)))
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_per_image = float(cost.get("flops", 0.0)) / args.batch
  results["gflops_per_unet_call_per_image"] = flops_per_image / 1e9
  achieved = flops_per_image * unet_calls * results["jax_images_per_s"]
  results["jax_achieved_tflops"] = achieved / 1e12
  if results["platform"] == "gpu":
    results["jax_mfu_vs_peak"] = achieved / (args.peak_tflops * 1e12)

  if not args.skip_torch:
    x_t = torch.from_numpy(x_np.transpose(0, 3, 1, 2)).to(device)

    def run_torch():
      lat = torch_loop(net, x_t, inv, alphas, learn_sigma, device)
      torch_loop(net, lat, gen, alphas, learn_sigma, device)
      if device == "cuda":
        torch.cuda.synchronize()
    torch_s = timed(run_torch, args.repeats)
    results["torch_batched_images_per_s"] = args.batch / torch_s

    n_off = min(args.official_images, args.batch)

    def run_official():
      for i in range(n_off):  # batch 1, one call per step, as the official loops.
        xi = x_t[i:i + 1]
        lat = torch_loop(net, xi, inv, alphas, learn_sigma, device)
        torch_loop(net, lat, gen, alphas, learn_sigma, device)
      if device == "cuda":
        torch.cuda.synchronize()
    off_s = timed(run_official, 1)
    results["official_style_images_per_s"] = n_off / off_s
    results["jax_over_torch_batched"] = results["jax_images_per_s"] / results["torch_batched_images_per_s"]
    results["jax_over_official_style"] = results["jax_images_per_s"] / results["official_style_images_per_s"]

  for k, v in results.items():
    print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
  print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()}))


if __name__ == "__main__":
  main()
