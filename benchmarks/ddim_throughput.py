"""Images/s of DDIM invert + generate: JAX kernels vs PyTorch, measured in one run.

  (a) jax      : discovery_jax.diffusion (one jitted lax.scan per trajectory, batched)
  (b) torch    : a straightforward batched PyTorch eager loop on the same weights
  (c) official : the official style: batch 1, one Python-level model call per step,
                 with the official step's bookkeeping (the cumulative alpha product
                 rebuilt from the betas and gathered by a timestep tensor each step)

Same weights (random, converted), same precision (``--dtype``: JAX computes in it,
torch runs under autocast to it), same t_0 / steps. Every model in ``--models`` is
measured in the same run, one after the other. Model FLOPs come from XLA's cost
analysis of one UNet forward; on a GPU the model-FLOP utilisation is reported
against ``--peak_tflops`` (bf16 dense peak).

  python benchmarks/ddim_throughput.py          # CPU: the embedded demo DDPM + the two vector UNets
  python benchmarks/ddim_throughput.py --models=afhq,celeba --batch=32 --dtype=bfloat16   # GPU, 256

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# As the entry points do on a CPU: one XLA host device per core, the batch sharded
# over them (XLA:CPU runs a convolution on one core). Ignored on GPUs.
if "XLA_FLAGS" not in os.environ and "--single_device" not in sys.argv:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={os.cpu_count()}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from convert import torch_to_flax  # noqa: E402
from discovery_jax import configlib, diffusion, models, parallel, runner as inversion  # noqa: E402
from tests import helpers, torch_reference  # noqa: E402

# The targets: ratio of JAX images/s over (b) and (c), and the GPU MFU.
TARGETS = {
    "cpu": {"jax_over_torch_batched": 0.8, "jax_over_official_style": 3.0},
    "gpu": {"jax_over_torch_batched": 1.5, "jax_mfu_vs_peak": 0.4},
}


def model_config(name: str) -> dict:
  if name in ("ddpm_small", "iddpm_small"):
    return helpers.vector_model_config(name.split("_")[0])
  return configlib.load_config_file(os.path.join(REPO, "configs", f"{name}.py")).model.to_dict()


def torch_autocast(device: str, dtype: str):
  if dtype == "float32":
    return contextlib.nullcontext()
  return torch.autocast(device_type=device, dtype=getattr(torch, dtype))


def ddim_update(x, et, at, at_next):
  """One deterministic DDIM step from the eps prediction (float32 arithmetic)."""
  x0 = (x - et.float() * (1 - at).sqrt()) / at.sqrt()
  return at_next.sqrt() * x0 + (1 - at_next).sqrt() * et.float()


def torch_loop(net, x, pairs, alphas, learn_sigma, device):
  """Batched eager DDIM (eta = 0) over ``pairs``: coefficients precomputed once."""
  a = torch.from_numpy(alphas).float().to(device)
  for t, t_next in pairs:
    tt = torch.full((x.shape[0],), float(t), device=device)
    _, et = net(x, tt)
    if learn_sigma:
      et = et[:, : et.shape[1] // 2]
    at = a[t]
    at_next = torch.ones((), device=device) if t_next < 0 else a[t_next]
    x = ddim_update(x, et, at, at_next)
  return x


def official_alpha(betas, ts, device):
  """alpha_bar at timesteps ``ts`` the official way: the cumulative product rebuilt
  from the betas and copied into a new tensor on every call, then gathered."""
  with warnings.catch_warnings():  # torch.tensor(tensor) copies, and says so
    warnings.simplefilter("ignore", UserWarning)
    table = torch.tensor((1.0 - betas).cumprod(dim=0), dtype=torch.float, device=device)
  return torch.gather(table, 0, ts.long()).reshape(-1, 1, 1, 1)


def official_loop(net, x, pairs, betas, learn_sigma, device):
  """One image, one model call and the official per-step bookkeeping per step."""
  for t, t_next in pairs:
    tt = torch.ones(x.shape[0], device=device) * t
    tn = torch.ones(x.shape[0], device=device) * t_next
    _, et = net(x, tt)
    if learn_sigma:
      et, _ = torch.split(et, et.shape[1] // 2, dim=1)
    at = official_alpha(betas, tt, device)
    at_next = torch.ones_like(at) if tn.sum() == -tn.shape[0] else official_alpha(betas, tn, device)
    x = ddim_update(x, et, at, at_next)
  return x


def interleaved_best(fns: dict, rounds: int) -> dict:
  """Best wall time of each function over ``rounds`` rounds that run them in turn.

  Each is run once first (compilation for JAX, allocator and thread start-up for
  torch). Taking turns within every round means a slow spell of the machine hits
  all contenders alike instead of whichever happened to be measured then.
  """
  for fn in fns.values():
    fn()
  best = {name: float("inf") for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def measure(name: str, args) -> dict:
  cfg = models.validate(model_config(name))
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
  inv, gen = (
      np.stack(p, 1)
      for p in (diffusion.inversion_pairs(args.t_0, args.n_steps), diffusion.generation_pairs(args.t_0, args.n_steps))
  )
  schedule = diffusion.DEFAULT_SCHEDULE
  unet_calls = len(inv) + len(gen)

  devices = jax.devices()
  n_dev = (
      1
      if args.single_device
      else max(d for d in range(1, len(devices) + 1) if args.batch % d == 0 and d <= len(devices))
  )
  runner = inversion.DDIMRunner(
      fn, args.t_0, args.n_steps, batch_size=args.batch // n_dev, mesh=parallel.make_mesh(n_dev)
  )

  def run_jax():
    runner.generate(runner.invert(x_np))

  compile_start = time.perf_counter()
  run_jax()
  compile_s = time.perf_counter() - compile_start
  contenders = {"jax": run_jax}
  results = {
      "arch": cfg["arch"],
      "image_size": size,
      "in_channels": ch,
      "batch": args.batch,
      "t_0": args.t_0,
      "n_steps": args.n_steps,
      "unet_calls_per_image": unet_calls,
      "jax_devices": n_dev,
      "jax_first_call_s": round(compile_s, 2),
  }

  n_off = min(args.official_images, args.batch)
  if not args.skip_torch:
    x_t = torch.from_numpy(x_np.transpose(0, 3, 1, 2)).to(device)
    alphas = schedule.alphas_cumprod
    betas = torch.from_numpy(diffusion.beta_schedule()).float().to(device)

    def sync():
      if device == "cuda":
        torch.cuda.synchronize()

    def run_torch():
      with torch.no_grad(), torch_autocast(device, args.dtype):
        lat = torch_loop(net, x_t, inv, alphas, learn_sigma, device)
        torch_loop(net, lat, gen, alphas, learn_sigma, device)
      sync()

    def run_official():
      with torch.no_grad(), torch_autocast(device, args.dtype):
        for i in range(n_off):  # batch 1, one call per step, as the official loops.
          lat = official_loop(net, x_t[i : i + 1], inv, betas, learn_sigma, device)
          official_loop(net, lat, gen, betas, learn_sigma, device)
      sync()

    contenders.update(torch_batched=run_torch, official_style=run_official)

  best = interleaved_best(contenders, args.rounds)
  images = {"jax": args.batch, "torch_batched": args.batch, "official_style": n_off}
  for key, seconds in best.items():
    results[f"{key}_images_per_s"] = images[key] / seconds

  # Model FLOPs of one forward at this batch, from XLA's cost analysis.
  fwd = jax.jit(lambda p, x, t: module.apply({"params": p}, x, t))
  cost = fwd.lower(fn.params, jnp.asarray(x_np), jnp.zeros((args.batch,))).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_per_image = float(cost.get("flops", 0.0)) / args.batch * unet_calls  # whole invert + generate
  results["gflops_per_unet_call_per_image"] = flops_per_image / unet_calls / 1e9
  for key in best:
    results[f"{key}_achieved_tflops"] = flops_per_image * results[f"{key}_images_per_s"] / 1e12
  if jax.devices()[0].platform == "gpu":
    results["jax_mfu_vs_peak"] = results["jax_achieved_tflops"] / args.peak_tflops
  for key in ("torch_batched", "official_style"):
    if key in best:
      results[f"jax_over_{key}"] = results["jax_images_per_s"] / results[f"{key}_images_per_s"]
  targets = TARGETS.get(jax.devices()[0].platform, {})
  results["targets_met"] = {k: bool(results[k] >= v) for k, v in targets.items() if k in results}
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--models",
      default="demo,iddpm_small,ddpm_small",
      help="comma list: demo, iddpm_small, ddpm_small, afhq, celeba, church, bedroom",
  )
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--t_0", type=int, default=900)
  parser.add_argument("--n_steps", type=int, default=20)
  parser.add_argument("--official_images", type=int, default=4, help="images for the batch-1 loop")
  parser.add_argument("--rounds", type=int, default=3, help="timed rounds, contenders taking turns")
  parser.add_argument("--dtype", default="float32", help="compute dtype of both JAX and torch (autocast)")
  parser.add_argument("--precision", default="highest", help="JAX matmul precision for float32")
  parser.add_argument("--peak_tflops", type=float, default=989.0, help="accelerator bf16 dense peak")
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--single_device", action="store_true", help="JAX on one device (no host-device mesh)")
  args = parser.parse_args()

  summary = {
      "platform": jax.devices()[0].platform,
      "device_kind": jax.devices()[0].device_kind,
      "cpu_count": os.cpu_count(),
      "torch_threads": torch.get_num_threads(),
      "dtype": args.dtype,
      "targets": TARGETS.get(jax.devices()[0].platform, {}),
      "models": {},
  }
  for name in [m for m in args.models.split(",") if m]:
    results = measure(name, args)
    summary["models"][name] = results
    print(f"--- {name}")
    for k, v in results.items():
      print(f"  {k:34s} {v:.4g}" if isinstance(v, float) else f"  {k:34s} {v}")

  def rounded(v):
    if isinstance(v, dict):
      return {k: rounded(x) for k, x in v.items()}
    return round(v, 4) if isinstance(v, float) else v

  print(json.dumps(rounded(summary)))


if __name__ == "__main__":
  main()
