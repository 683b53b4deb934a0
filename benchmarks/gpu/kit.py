"""The accelerator benchmark kit: one command, one JSON, within a time budget.

  bash benchmarks/gpu/run.sh                  # on the GPU machine (installs .whl/ first)
  python benchmarks/gpu/kit.py --dry_run      # anywhere: tiny models, every stage, seconds

Stages run in priority order, each in its own subprocess with a time limit taken
from what is left of ``--budget_s`` (a stage that runs out is killed; what it had
measured so far is kept, the rest is marked), so the kit always ends in time and
always writes its JSON:

  env                     device name, versions, the device's peak TFLOP/s
  jax:<model>:<dtype>     DDIM invert + generate with discovery_jax's runner: first-call
                          (compile) time, images/s, XLA FLOPs per UNet call (cost
                          analysis of the compiled forward; the lowered one if time is
                          short), achieved TFLOP/s and MFU against the peak of the dtype,
                          and a check of the compiled trajectory: no parameter-shaped
                          float32 tensor carried through its loop (weights cast once)
  torch:<model>:<dtype>   the same trajectory in PyTorch on the SAME weights (the
                          reference networks of tests/torch_reference.py, randomised
                          with the same seed): channels_last, bfloat16 autocast for
                          bfloat16 (TF32 off for float32, as JAX's 'highest'), eager,
                          then torch.compile when time allows
  synthesis               ``python -m discovery_jax.sample`` end to end on the embedded
                          demo model, writing a dataset of ``--synthesis_samples``

Models: ``afhq`` (iDDPM, guided-diffusion UNet of AFHQ-Dog 256, 93.6M parameters) and
``ddpm256`` (the DDPM of CelebA-HQ / LSUN 256, 113.7M), random weights; ``--dry_run``
swaps in 16x16 networks of the same families. The JSON goes to
``benchmarks/results/gpu_<device>_<date>.json`` and to ``$OUT`` when set.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# Dense peak TFLOP/s by device name (vendor datasheets, without sparsity):
# bf16 on the tensor cores, plain float32 (no TF32), and TF32.
PEAK_TFLOPS = (
    # (pattern in the lower-cased device name, name, bf16, fp32, tf32)
    ("h200", "H200 (SXM)", 989.4, 66.9, 494.7),
    ("gh200", "GH200", 989.4, 66.9, 494.7),
    ("h100 nvl", "H100 NVL", 835.0, 60.0, 417.5),
    ("h100 pcie", "H100 PCIe", 756.5, 51.2, 378.0),
    ("h100", "H100 SXM", 989.4, 66.9, 494.7),
    ("h800", "H800 SXM", 989.4, 66.9, 494.7),
    ("b200", "B200", 2250.0, 80.0, 1100.0),
    ("a100", "A100", 312.0, 19.5, 156.0),
    ("l40s", "L40S", 362.1, 91.6, 183.0),
    ("l4", "L4", 121.0, 30.3, 60.0),
    ("a10", "A10", 125.0, 31.2, 62.5),
    ("v100", "V100", 125.0, 15.7, 125.0),  # no bf16: fp16 tensor-core peak
)

# The two full 256x256 architectures (configs/afhq.py and configs/ddpm256.py; a test checks
# they agree), written out so that the kit needs no ml_collections.
FULL_MODELS = {
    "afhq": dict(
        arch="iddpm",
        image_size=256,
        in_channels=3,
        num_channels=128,
        num_res_blocks=1,
        channel_mult=(1, 1, 2, 2, 4, 4),
        attention_resolutions=(16,),
        num_head_channels=64,
        num_heads=4,
        learn_sigma=True,
        use_scale_shift_norm=True,
        resblock_updown=True,
        use_new_attention_order=False,
        dropout=0.0,
    ),
    "ddpm256": dict(
        arch="ddpm",
        image_size=256,
        in_channels=3,
        out_ch=3,
        ch=128,
        ch_mult=(1, 1, 2, 2, 4, 4),
        num_res_blocks=2,
        attn_resolutions=(16,),
        dropout=0.0,
        resamp_with_conv=True,
    ),
}
FULL_PARAMS = {"afhq": 93_563_910, "ddpm256": 113_673_219}
DTYPE_NAMES = {"bf16": "bfloat16", "f32": "float32"}


def tiny_models() -> dict:
  from tests import helpers

  return {"afhq": helpers.small_iddpm_config(), "ddpm256": helpers.small_ddpm_config()}


def default_stages() -> list[tuple[str, float]]:
  """(stage, its own time limit in seconds), most important first."""
  return [
      ("env", 60),
      ("jax:afhq:bf16", 150),
      ("torch:afhq:bf16", 120),
      ("synthesis", 100),
      ("jax:ddpm256:bf16", 150),
      ("torch:ddpm256:bf16", 120),
      ("jax:afhq:f32", 100),
      ("torch:afhq:f32", 60),
      ("jax:ddpm256:f32", 100),
      ("torch:ddpm256:f32", 60),
  ]


def peak_for(device_kind: str) -> dict | None:
  name = (device_kind or "").lower()
  for pattern, label, bf16, fp32, tf32 in PEAK_TFLOPS:
    if pattern in name:
      return {"matched": label, "bf16": bf16, "fp32": fp32, "tf32": tf32}
  return None


def slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", (text or "unknown").lower()).strip("_") or "unknown"


# --------------------------------------------------------------------------- stage side


class Stage:
  """What one stage measured, rewritten to its file after every step (a kill keeps it)."""

  def __init__(self, path: str, deadline: float):
    self.path, self.deadline, self.data = path, deadline, {}

  def left(self) -> float:
    return self.deadline - time.time()

  def set(self, **values) -> None:
    self.data.update(values)
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.data, f, indent=1, default=_jsonable)
    os.replace(tmp, self.path)


def _jsonable(value):
  try:
    return float(value)
  except (TypeError, ValueError):
    return str(value)


def _cost_flops(cost) -> float | None:
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  if not cost:
    return None
  value = cost.get("flops") if hasattr(cost, "get") else None
  return float(value) if value is not None and value > 0 else None


def model_config(args, model: str, dtype: str) -> dict:
  cfg = dict((tiny_models() if args.dry_run else FULL_MODELS)[model])
  cfg["dtype"] = DTYPE_NAMES[dtype]
  return cfg


def torch_network(cfg: dict, seed: int = 0):
  """The torch reference network of ``cfg`` with the kit's random weights, on the CPU."""
  from discovery_jax import models
  from tests import torch_reference

  net = torch_reference.from_model_config(models.validate({**cfg, "dtype": "float32"}))
  torch_reference.randomize_(net, seed)
  return net.eval()


def trajectory_pairs(t_0: int, n_steps: int):
  """Inversion and generation pairs of the SAME length (n_steps each), so that one
  compiled trajectory serves both directions."""
  import numpy as np

  from discovery_jax import diffusion

  inv = diffusion.inversion_pairs(t_0, n_steps + 1)
  gen = diffusion.generation_pairs(t_0, n_steps)
  return tuple(np.asarray(a) for a in inv), tuple(np.asarray(a) for a in gen)


def loop_carries_f32_weights(hlo_text: str, kernel_shapes: set) -> int | None:
  """How many parameter-shaped (ndim >= 2) float32 tensors the first while loop of a
  compiled HLO module carries (0: the weights enter the loop already cast); None
  when the module has no while loop."""
  lines = [line for line in hlo_text.splitlines() if " while(" in line]
  if not lines:
    return None
  carried = lines[0].split(" while(")[0]
  count = 0
  for dims in re.findall(r"f32\[([\d,]+)\]", carried):
    shape = tuple(int(v) for v in dims.split(","))
    count += len(shape) >= 2 and shape in kernel_shapes
  return count


def stage_env(args, st: Stage) -> None:
  import jax

  dev = jax.devices()[0]
  info = {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "platform": dev.platform,
      "device_kind": dev.device_kind,
      "device_count": jax.device_count(),
      "peak_tflops": peak_for(dev.device_kind),
      "host": platform.node(),
  }
  for name in (
      "jaxlib",
      "flax",
      "numpy",
      "optax",
      "orbax.checkpoint",
      "torch",
      "ml_collections",
      "tensorflow_datasets",
  ):
    try:
      module = __import__(name, fromlist=["__version__"])
      info[f"version_{name}"] = getattr(module, "__version__", "?")
    except Exception as e:  # noqa: BLE001 -- report, do not fail the kit
      info[f"version_{name}"] = f"missing ({type(e).__name__})"
  try:
    import torch

    info["torch_cuda"] = torch.version.cuda
    info["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
  except Exception:  # noqa: BLE001
    pass
  try:
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    info["nvidia_smi"] = smi.stdout.strip() or None
  except Exception:  # noqa: BLE001
    info["nvidia_smi"] = None
  st.set(**info)


def stage_jax(args, st: Stage, model: str, dtype: str) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from convert import torch_to_flax
  from discovery_jax import diffusion, models, runner as runner_lib
  from discovery_jax.models import layers

  cfg = models.validate(model_config(args, model, dtype))
  batch = args.batch_bf16 if dtype == "bf16" else args.batch_f32
  net = torch_network(cfg)
  state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
  del net
  params = torch_to_flax.convert_state_dict(state, cfg)
  del state
  module = models.create_model(cfg)
  n_params = sum(int(np.prod(l.shape)) for l in jax.tree_util.tree_leaves(params))
  st.set(
      model=model,
      dtype=cfg["dtype"],
      precision=str(module.precision),
      params=n_params,
      params_expected=None if args.dry_run else FULL_PARAMS[model],
      batch=batch,
      n_steps=args.n_steps,
      unet_calls_per_image=2 * args.n_steps,
      device_kind=jax.devices()[0].device_kind,
  )
  fn = diffusion.eps_fn(module, jax.device_put(params))
  runner = runner_lib.DDIMRunner(fn, args.t_0, args.n_steps, batch_size=batch)
  inv, gen = trajectory_pairs(args.t_0, args.n_steps)
  size, ch = cfg["image_size"], cfg["in_channels"]
  x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, ch)).astype(np.float32)

  # The trajectory, compiled explicitly once (its HLO is checked); calls then hit the cache.
  kernels = [tuple(l.shape) for l in jax.tree_util.tree_leaves(params) if l.ndim >= 2]
  kernel_shapes = set(kernels)
  loop = runner_lib._sharded_loop(fn, None, 0.0, False)
  ts, tn = jnp.asarray(inv[0]), jnp.asarray(inv[1])
  start = time.perf_counter()
  compiled = loop.lower(runner._params, jnp.asarray(x), ts, tn, runner._alphas, None).compile()
  st.set(jax_compile_s=time.perf_counter() - start)
  try:
    st.set(
        loop_f32_weight_tensors=loop_carries_f32_weights(compiled.as_text(), kernel_shapes),
        loop_weight_tensors=len(kernels),
        trajectory_flops_xla=_cost_flops(compiled.cost_analysis()),
    )
  except Exception as e:  # noqa: BLE001
    st.set(hlo_check_error=f"{type(e).__name__}: {e}")
  del compiled

  def run_once():
    lat = runner.run_pairs(x, inv)
    return runner.run_pairs(lat, gen)

  start = time.perf_counter()
  out = run_once()
  st.set(jax_first_call_s=time.perf_counter() - start, jax_output_finite=bool(np.isfinite(out).all()))
  best = math.inf
  for _ in range(args.rounds):
    if st.left() < 3 * min(best, 60) and best < math.inf:
      break
    start = time.perf_counter()
    run_once()
    best = min(best, time.perf_counter() - start)
    st.set(jax_best_s=best, jax_images_per_s=batch / best)

  # FLOPs of one UNet call at this batch: XLA's cost analysis of the compiled forward
  # (the lowered module's estimate when there is no time left to compile it).
  fwd = jax.jit(lambda p, x, t: module.apply({"params": layers.cast_params(p, module.dtype)}, x, t))
  lowered = fwd.lower(runner._params, jnp.asarray(x), jnp.zeros((batch,), jnp.float32))
  flops, source = None, None
  if st.left() > args.forward_compile_reserve_s:
    start = time.perf_counter()
    flops, source = _cost_flops(lowered.compile().cost_analysis()), "compiled"
    st.set(forward_compile_s=time.perf_counter() - start)
  if flops is None:
    try:
      flops, source = _cost_flops(lowered.cost_analysis()), "lowered"
    except Exception as e:  # noqa: BLE001 -- an API that moved: report, keep the rest
      st.set(flops_error=f"{type(e).__name__}: {e}")
  if flops:
    per_image = flops / batch
    tflops = per_image * 2 * args.n_steps * (batch / best) / 1e12
    peak = peak_for(jax.devices()[0].device_kind)
    key = "bf16" if dtype == "bf16" else "fp32"
    st.set(
        gflops_per_unet_call_per_image=per_image / 1e9,
        flops_source=source,
        jax_achieved_tflops=tflops,
        peak_tflops=peak[key] if peak else None,
        jax_mfu=(tflops / peak[key]) if peak else None,
    )


def stage_torch(args, st: Stage, model: str, dtype: str) -> None:
  import numpy as np
  import torch

  from discovery_jax import diffusion, models

  cfg = models.validate(model_config(args, model, dtype))
  device = "cuda" if torch.cuda.is_available() else "cpu"
  batch = args.batch_bf16 if dtype == "bf16" else args.batch_f32
  if dtype == "f32":  # the same arithmetic as JAX's 'highest': no TF32 anywhere.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
  net = torch_network(cfg).to(device)
  if device == "cuda":
    net = net.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True  # cuDNN picks its fastest kernels for these shapes
  learn_sigma = cfg["arch"] == "iddpm" and cfg["out_channels"] == 2 * cfg["in_channels"]
  inv, gen = trajectory_pairs(args.t_0, args.n_steps)
  alphas = torch.from_numpy(diffusion.DEFAULT_SCHEDULE.alphas_cumprod).float().to(device)
  size, ch = cfg["image_size"], cfg["in_channels"]
  x_np = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, ch)).astype(np.float32)
  x = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).to(device)
  if device == "cuda":
    x = x.contiguous(memory_format=torch.channels_last)
  autocast = torch.autocast(device_type=device, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
  st.set(
      model=model,
      dtype=cfg["dtype"],
      batch=batch,
      torch_device=device,
      channels_last=device == "cuda",
      cudnn_benchmark=device == "cuda",
      tf32=False if dtype == "f32" else None,
  )

  def loop(fwd, x, pairs):
    for t, t_next in zip(*pairs):
      tt = torch.full((x.shape[0],), float(t), device=device)
      _, et = fwd(x, tt)
      et = et[:, : et.shape[1] // 2] if learn_sigma else et
      et = et.float()
      at = alphas[int(t)]
      an = torch.ones((), device=device) if t_next < 0 else alphas[int(t_next)]
      x0 = (x - (1 - at).sqrt() * et) / at.sqrt()
      x = an.sqrt() * x0 + (1 - an).sqrt() * et
    return x

  def timed(fwd, prefix):
    def once():
      with torch.no_grad(), autocast:
        loop(fwd, loop(fwd, x, inv), gen)
      if device == "cuda":
        torch.cuda.synchronize()

    start = time.perf_counter()
    once()
    st.set(**{f"{prefix}_first_call_s": time.perf_counter() - start})
    best = math.inf
    for _ in range(args.rounds):
      if best < math.inf and st.left() < 3 * min(best, 60):
        break
      start = time.perf_counter()
      once()
      best = min(best, time.perf_counter() - start)
      st.set(**{f"{prefix}_best_s": best, f"{prefix}_images_per_s": batch / best})

  timed(net, "torch_eager")
  if args.skip_torch_compile:
    st.set(torch_compile="skipped (--skip_torch_compile)")
    return
  if st.left() < args.torch_compile_reserve_s:
    st.set(torch_compile=f"skipped: {st.left():.0f} s left")
    return
  try:
    st.set(torch_compile="started")
    timed(torch.compile(net), "torch_compiled")
    st.set(torch_compile="ok")
  except Exception as e:  # noqa: BLE001 -- torch.compile "where it works"
    st.set(torch_compile=f"failed: {type(e).__name__}: {str(e)[:300]}")


def stage_synthesis(args, st: Stage) -> None:
  """``sample`` end to end on the embedded demo model: dataset of ``n`` samples."""
  n = args.synthesis_samples
  workdir = tempfile.mkdtemp(prefix="kit_synthesis_")
  flags = [
      f"--config.sample.num_samples={n}",
      "--config.sample.evaluate=False",
      f"--config.output.shard_size={max(1, min(64, n // 4))}",
  ]
  if args.dry_run:  # seconds on a CPU: few steps, the Gaussian baseline, a small ID bank.
    flags += [
        "--config.sampling.n_steps=2",
        "--config.sampling.t_0=200",
        "--config.sample.methods=gaussian",
        "--config.discovery.num_id_latents=12",
    ]
  cmd = [sys.executable, "-m", "discovery_jax.sample", "--config=configs/demo.py", f"--workdir={workdir}", *flags]
  st.set(command=" ".join(cmd[1:]), num_samples=n, workdir=workdir)
  start = time.perf_counter()
  proc = subprocess.run(
      cmd, cwd=REPO, capture_output=True, text=True, timeout=max(1.0, st.left() - 2), env=dict(os.environ)
  )
  wall = time.perf_counter() - start
  st.set(returncode=proc.returncode, wall_s=wall, samples_per_s_end_to_end=n / wall)
  if proc.returncode:
    st.set(stderr_tail=proc.stderr[-3000:])
    return
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  timings = summary.get("timings_seconds", {})
  images = sum(v for k, v in timings.items() if k.endswith("_images"))
  manifest_path = os.path.join(workdir, "samples", summary.get("methods", ["discovery"])[0], "dataset", "manifest.json")
  written = None
  if os.path.isfile(manifest_path):
    with open(manifest_path) as f:
      written = json.load(f).get("num_samples")
  st.set(
      timings=timings,
      dataset_samples=written,
      denoise_and_write_s=images or None,
      samples_per_s_denoise_and_write=(n / images) if images else None,
  )


# --------------------------------------------------------------------------- driver side


def run_stage(args, name: str, limit: float, results_dir: str) -> dict:
  path = os.path.join(results_dir, slug(name) + ".json")
  cmd = [sys.executable, os.path.abspath(__file__), "--stage", name, "--stage_result", path]
  cmd += ["--stage_deadline", str(time.time() + limit)] + args.passthrough
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch and the next stage share the GPU
  start = time.time()
  status = "ok"
  try:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=limit + 5, env=env)
    if proc.returncode:
      status = f"failed (exit {proc.returncode})"
    log = proc.stdout[-1500:] + proc.stderr[-3000:]
  except subprocess.TimeoutExpired as e:
    status = f"timed out after {limit:.0f} s (partial results kept)"
    log = ((e.stdout or b"") if isinstance(e.stdout, bytes) else (e.stdout or "").encode())[-1500:].decode(
        errors="replace"
    )
  out = {}
  if os.path.isfile(path):
    with open(path) as f:
      out = json.load(f)
  out["status"] = status
  out["stage_s"] = round(time.time() - start, 2)
  if status != "ok":
    out["log_tail"] = log
  print(f"[kit] {name:22s} {status:40s} {out['stage_s']:7.1f} s", flush=True)
  return out


def summarise(stages: dict) -> dict:
  """Side-by-side ratios: JAX images/s over torch eager / compiled / the better of them."""
  out = {}
  for name, res in stages.items():
    if not name.startswith("jax:"):
      continue
    _, model, dtype = name.split(":")
    jx = res.get("jax_images_per_s")
    tr = stages.get(f"torch:{model}:{dtype}", {})
    row = {"jax_images_per_s": jx, "jax_mfu": res.get("jax_mfu"), "jax_achieved_tflops": res.get("jax_achieved_tflops")}
    for kind in ("torch_eager", "torch_compiled"):
      v = tr.get(f"{kind}_images_per_s")
      row[f"{kind}_images_per_s"] = v
      row[f"jax_over_{kind}"] = (jx / v) if jx and v else None
    best = max([v for v in (tr.get("torch_eager_images_per_s"), tr.get("torch_compiled_images_per_s")) if v] or [0])
    row["jax_over_best_torch"] = (jx / best) if jx and best else None
    out[f"{model}:{dtype}"] = row
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dry_run", action="store_true", help="tiny models, few steps: the CPU test of the kit")
  parser.add_argument("--budget_s", type=float, default=450.0, help="the whole kit ends within this")
  parser.add_argument("--stages", default="", help="comma list of stage names (default: all, in priority order)")
  parser.add_argument("--out_dir", default=os.path.join(REPO, "benchmarks", "results"))
  parser.add_argument("--batch_bf16", type=int, default=32)
  parser.add_argument("--batch_f32", type=int, default=16)
  parser.add_argument("--n_steps", type=int, default=10, help="UNet calls per direction (invert, generate)")
  parser.add_argument("--t_0", type=int, default=900)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--synthesis_samples", type=int, default=256)
  parser.add_argument("--skip_torch_compile", action="store_true")
  parser.add_argument("--torch_compile_reserve_s", type=float, default=45.0)
  parser.add_argument("--forward_compile_reserve_s", type=float, default=40.0)
  parser.add_argument("--stage", help=argparse.SUPPRESS)
  parser.add_argument("--stage_result", help=argparse.SUPPRESS)
  parser.add_argument("--stage_deadline", type=float, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.dry_run:
    for key, value in dict(batch_bf16=2, batch_f32=2, n_steps=2, t_0=200, rounds=1, synthesis_samples=8).items():
      if f"--{key}" not in " ".join(sys.argv if argv is None else argv):
        setattr(args, key, value)
    args.skip_torch_compile = True

  if args.stage:  # one stage, in its own process.
    st = Stage(args.stage_result, args.stage_deadline)
    try:
      kind, *rest = args.stage.split(":")
      {"env": stage_env, "jax": stage_jax, "torch": stage_torch, "synthesis": stage_synthesis}[kind](args, st, *rest)
    except Exception as e:  # noqa: BLE001 -- written down, the driver goes on
      st.set(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
      return 1
    return 0

  # Every flag but the driver's own goes on to the stages ("--flag=value" or "--flag value").
  skip = {"--stages", "--out_dir", "--budget_s"}
  raw = list(sys.argv[1:] if argv is None else argv)
  args.passthrough, i = [], 0
  while i < len(raw):
    if raw[i] in skip:
      i += 2
      continue
    if raw[i].split("=")[0] not in skip:
      args.passthrough.append(raw[i])
    i += 1
  for key in ("batch_bf16", "batch_f32", "n_steps", "t_0", "rounds", "synthesis_samples"):
    if f"--{key}" not in " ".join(args.passthrough):
      args.passthrough.append(f"--{key}={getattr(args, key)}")

  start = time.time()
  deadline = start + args.budget_s
  wanted = [s for s in args.stages.split(",") if s]
  plan = [(n, lim) for n, lim in default_stages() if not wanted or n in wanted]
  plan += [(n, 120.0) for n in wanted if n not in dict(default_stages())]
  scratch = tempfile.mkdtemp(prefix="kit_stages_")
  stages = {}
  for name, limit in plan:
    left = deadline - time.time() - 5
    if left < min(20.0, limit):
      stages[name] = {"status": f"skipped: {max(left, 0):.0f} s of the budget left"}
      print(f"[kit] {name:22s} {stages[name]['status']}", flush=True)
      continue
    stages[name] = run_stage(args, name, min(limit, left), scratch)

  env = stages.get("env", {})
  device = env.get("device_kind") or next(
      (r["device_kind"] for r in stages.values() if r.get("device_kind")), "unknown"
  )
  result = {
      "kit": "benchmarks/gpu/kit.py",
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
      "dry_run": bool(args.dry_run),
      "device": device,
      "peak_tflops": env.get("peak_tflops"),
      "budget_s": args.budget_s,
      "wall_s": round(time.time() - start, 1),
      "settings": {
          k: getattr(args, k)
          for k in ("batch_bf16", "batch_f32", "n_steps", "t_0", "rounds", "synthesis_samples", "skip_torch_compile")
      },
      "env": env,
      "summary": summarise(stages),
      "stages": stages,
  }
  name = f"gpu_{slug(device)}{'_dryrun' if args.dry_run else ''}_{datetime.date.today().isoformat()}.json"
  paths = [os.path.join(args.out_dir, name)]
  if os.environ.get("OUT"):
    paths.append(os.path.join(os.environ["OUT"], name))
  for path in paths:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump(result, f, indent=1, default=_jsonable)
  print(json.dumps(result["summary"], default=_jsonable))
  print(f"[kit] wrote {', '.join(paths)} in {result['wall_s']} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
