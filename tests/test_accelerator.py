"""Accelerator readiness (issue 14): one-pass GroupNorm, per-dtype precision, weights
cast once before the trajectory loop, state donation, small-input batch sizing, and a
dry run of the GPU benchmark kit (benchmarks/gpu/kit.py) on this CPU."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from discovery_jax import configlib, diffusion, models, parallel, runner as runner_lib
from discovery_jax.models import layers
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks", "gpu"))
import kit  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bf16():
  module = models.create_model(helpers.small_ddpm_config(dtype="bfloat16"))
  return module, models.init_params(module, jax.random.key(0))


def _group_norm_exact(x, scale, bias, eps):
  shape = x.shape
  groups = x.astype(np.float64).reshape(shape[0], -1, 32, shape[-1] // 32)
  out = (groups - groups.mean(axis=(1, 3), keepdims=True)) / np.sqrt(groups.var(axis=(1, 3), keepdims=True) + eps)
  return out.reshape(shape) * scale + bias


@pytest.mark.parametrize("offset", [0.0, 300.0, -2000.0])
def test_one_pass_group_norm_keeps_float64_accuracy_under_large_offsets(offset):
  """One reduction (shifted sums and sums of squares): a common offset thousands of
  standard deviations large does not cancel the variance away."""
  rng = np.random.default_rng(1)
  shape = (2, 6, 5, 64)
  x = (rng.normal(size=shape) * 0.5 + offset).astype(np.float32)
  # A group whose first pixel is an outlier: the shift is a poor estimate there, still exact enough.
  x[1, 0, 0, :2] += 40.0
  scale = rng.normal(1.0, 0.1, 64).astype(np.float32)
  bias = rng.normal(0.0, 0.1, 64).astype(np.float32)
  norm = layers.GroupNorm(num_groups=32, epsilon=1e-6)
  got = norm.apply({"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), _group_norm_exact(x, scale, bias, 1e-6), atol=3e-4, rtol=0)


def test_precision_defaults_per_dtype():
  cfg = helpers.small_iddpm_config()
  assert models.validate(cfg)["precision"] is None
  assert models.create_model(cfg).precision == jax.lax.Precision.HIGHEST
  assert models.create_model({**cfg, "dtype": "bfloat16"}).precision == jax.lax.Precision.DEFAULT
  assert (
      models.create_model({**cfg, "dtype": "bfloat16", "precision": "highest"}).precision == jax.lax.Precision.HIGHEST
  )
  assert models.create_model({**cfg, "precision": "default"}).precision == jax.lax.Precision.DEFAULT
  with pytest.raises(models.ModelConfigError, match="precision"):
    models.validate({**cfg, "precision": "tf32"})


@pytest.mark.slow
def test_cast_params_casts_conv_and_dense_layers_only(tiny_bf16):
  _, params = tiny_bf16
  cast = layers.cast_params(params, jnp.bfloat16)
  flat = {"/".join(k): v for k, v in _flat(cast).items()}
  norms = {k: v for k, v in flat.items() if re.search(r"norm[^/]*/(scale|bias)$", k)}
  layers_ = {k: v for k, v in flat.items() if k not in norms}
  assert norms and all(v.dtype == jnp.float32 for v in norms.values())
  assert layers_ and all(v.dtype == jnp.bfloat16 for v in layers_.values())
  assert layers.cast_params(params, jnp.float32) is params


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if hasattr(v, "items"):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _while_carried_f32_kernels(stablehlo: str, kernel_shapes: set) -> int:
  """Float32 tensors of a weight's shape among the values a stablehlo.while carries."""
  line = next(l for l in stablehlo.splitlines() if "stablehlo.while" in l)
  carried = line.split(" : ", 1)[1]
  count = 0
  for dims in re.findall(r"tensor<([\dx]+)xf32>", carried):
    shape = tuple(int(v) for v in dims.split("x"))
    count += len(shape) >= 2 and shape in kernel_shapes
  return count


_CALLED = re.compile(
    r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)=(%[\w.\-]+)|branch_computations=\{([^}]*)\}"
)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?(%[\w.\-]+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\((.*)$")


# XLA:CPU's while-loop-invariant-code-motion hoists a per-step cast of the (loop-invariant)
# weights out of the while body: compiled with it, a regressed loop shows no cast inside.
_KEEP_LOOP_BODY = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


def _loop_body_weight_casts(hlo: str, kernel_shapes: set) -> int:
  """f32 -> bf16 converts of a weight's shape in a compiled HLO module's while loop
  bodies (and conditions), counting every computation they call: fusions, nested calls."""
  computations, name = {}, None
  for line in hlo.splitlines():
    if head := re.match(r"^(?:ENTRY )?(%[\w.\-]+) .*\{$", line):
      name = head.group(1)
      computations[name] = []
    elif line == "}":
      name = None
    elif name:
      computations[name].append(line)

  def called(line):
    for one, many in _CALLED.findall(line):
      yield from [one] if one else re.findall(r"%[\w.\-]+", many)

  todo = [c for lines in computations.values() for line in lines if " while(" in line for c in called(line)]
  reached = set()
  while todo:
    if (c := todo.pop()) not in reached:
      reached.add(c)
      todo += [d for line in computations[c] for d in called(line)]
  count = 0
  for c in reached:
    instructions = [m for m in map(_INSTRUCTION.match, computations[c]) if m]
    dtypes = {m.group(1): m.group(2) for m in instructions}  # fusion parameters included
    for m in instructions:
      if m.group(4) == "convert" and m.group(2) == "bf16":
        operand = re.search(r"%[\w.\-]+", m.group(5)).group(0)
        shape = tuple(int(v) for v in m.group(3).split(",") if v)
        count += dtypes.get(operand) == "f32" and shape in kernel_shapes
  return count


def _bf16_trajectory(tiny_bf16):
  """The runner's 3-step bf16 trajectory on the tiny model: (float32 params, eps fn, the
  weights' shapes, runner, time pairs, a batch of 2, the runner's jitted loop)."""
  module, params = tiny_bf16
  fn = diffusion.eps_fn(module, params)
  kernel_shapes = {tuple(l.shape) for l in jax.tree_util.tree_leaves(params) if l.ndim >= 2}
  runner = runner_lib.DDIMRunner(fn, 300, 3, batch_size=2)
  ts, tn = (jnp.asarray(a) for a in diffusion.generation_pairs(300, 3))
  x = jnp.zeros((2, 16, 16, 3), jnp.float32)
  return params, fn, kernel_shapes, runner, ts, tn, x, runner_lib._sharded_loop(fn, None, 0.0, False)


@pytest.mark.slow
def test_bf16_trajectory_casts_the_weights_once_before_its_loop(tiny_bf16):
  """The runner's jitted bf16 trajectory carries its conv/dense weights into the
  lax.scan's while loop already in bf16: no weight-shaped f32 tensor enters the loop
  body, so nothing converts them at every step (a plain loop over float32 weights
  carries them all)."""
  params, fn, kernel_shapes, runner, ts, tn, x, loop = _bf16_trajectory(tiny_bf16)
  for weights in (runner._params, params):  # the runner's own (cast) and caller's float32 weights
    text = loop.lower(weights, x, ts, tn, runner._alphas, None).as_text()
    assert _while_carried_f32_kernels(text, kernel_shapes) == 0
  plain = jax.jit(lambda p, x: diffusion.ddim_loop(fn.apply, p, x, ts, tn, runner._alphas))
  assert _while_carried_f32_kernels(plain.lower(params, x).as_text(), kernel_shapes) >= len(kernel_shapes)
  # The library entry point too.
  lowered = diffusion._jit_loop.lower(fn, params, x, ts, tn, runner._alphas, None, eta=0.0, outputs=())
  assert _while_carried_f32_kernels(lowered.as_text(), kernel_shapes) == 0


@pytest.mark.slow
def test_compiled_bf16_trajectory_converts_no_weight_to_bf16_inside_its_loop(tiny_bf16):
  """The COMPILED bf16 trajectory's while loop (body, condition and everything they
  call) holds no f32 -> bf16 convert of a weight's shape. Both compiles disable XLA's
  while-loop-invariant-code-motion: by default it hoists even a regressed trajectory's
  per-step casts out of the loop (0 converts in its body), so the check could not fail."""
  params, fn, kernel_shapes, runner, ts, tn, x, loop = _bf16_trajectory(tiny_bf16)
  compiled = loop.lower(runner._params, x, ts, tn, runner._alphas, None).compile(compiler_options=_KEEP_LOOP_BODY)
  assert _loop_body_weight_casts(compiled.as_text(), kernel_shapes) == 0
  # Negative control: the bf16 module over float32 weights casts each of them at every step.
  plain = jax.jit(lambda p, x: diffusion.ddim_loop(fn.apply, p, x, ts, tn, runner._alphas))
  regressed = plain.lower(params, x).compile(compiler_options=_KEEP_LOOP_BODY)
  assert _loop_body_weight_casts(regressed.as_text(), kernel_shapes) >= 1


@pytest.mark.slow
def test_runner_donates_the_state_and_leaves_the_input_alone(tiny_bf16):
  module, params = tiny_bf16
  fn = diffusion.eps_fn(module, params)
  runner = runner_lib.DDIMRunner(fn, 300, 3, batch_size=4)
  ts, tn = (jnp.asarray(a) for a in diffusion.generation_pairs(300, 3))
  loop = runner_lib._sharded_loop(fn, None, 0.0, False)
  text = loop.lower(runner._params, jnp.zeros((4, 16, 16, 3)), ts, tn, runner._alphas, None).as_text()
  assert "tf.aliasing_output" in text or "jax.buffer_donor" in text
  x = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
  before = x.copy()
  first = runner.generate(x)
  np.testing.assert_array_equal(x, before)
  np.testing.assert_array_equal(runner.generate(x), first)


@pytest.mark.slow
def test_a_small_input_runs_one_step_at_the_smallest_per_device_batch(monkeypatch):
  """12 images on 8 devices with 16 per device run as one step of 2 per device (global
  16), not 16 per device (global 128); never fewer than 2 per device (bitwise equal
  results on 1 and 8 devices); inputs that fill the global batch keep it."""
  module = models.create_model(helpers.small_ddpm_config())
  fn = diffusion.eps_fn(module, models.init_params(module, jax.random.key(1)))
  eight = runner_lib.DDIMRunner(fn, 300, 2, batch_size=16, mesh=parallel.make_mesh(8))
  assert eight.global_batch == 128
  sizes = (1, 8, 9, 12, 16, 17, 64, 65, 127, 128, 500)
  assert [eight.step_batch(n) for n in sizes] == [16, 16, 16, 16, 16, 32, 64, 128, 128, 128, 128]
  one = runner_lib.DDIMRunner(fn, 300, 2, batch_size=16, mesh=parallel.make_mesh(1))
  assert [one.step_batch(n) for n in (1, 3, 12, 16, 40)] == [2, 4, 16, 16, 16]

  shapes = []
  original = parallel.shard_batch

  def spy(x, mesh):
    if getattr(x, "ndim", 0) == 4:
      shapes.append(x.shape)
    return original(x, mesh)

  monkeypatch.setattr(runner_lib.parallel, "shard_batch", spy)
  x = np.random.default_rng(2).uniform(-1, 1, (12, 16, 16, 3)).astype(np.float32)
  lat8 = eight.invert(x)
  assert shapes == [(16, 16, 16, 3)]
  np.testing.assert_array_equal(lat8, one.invert(x))


# --------------------------------------------------------------------------- the GPU kit


def test_kit_models_are_the_configs_architectures():
  for name in ("afhq", "ddpm256"):
    want = configlib.load_config_file(os.path.join(REPO, "configs", f"{name}.py")).model.to_dict()
    assert models.validate(kit.FULL_MODELS[name]) == models.validate(want)
    shapes = models.param_shapes(models.create_model(kit.FULL_MODELS[name]))
    assert sum(int(np.prod(l.shape)) for l in jax.tree_util.tree_leaves(shapes)) == kit.FULL_PARAMS[name]


def test_kit_peak_table():
  assert kit.peak_for("NVIDIA H100 80GB HBM3")["bf16"] == pytest.approx(989.4)
  assert kit.peak_for("NVIDIA H100 PCIe")["matched"] == "H100 PCIe"
  assert kit.peak_for("NVIDIA H200")["bf16"] == kit.peak_for("NVIDIA H100 80GB HBM3")["bf16"]
  assert kit.peak_for("NVIDIA A100-SXM4-80GB")["fp32"] == pytest.approx(19.5)
  assert kit.peak_for("cpu") is None


def test_kit_hlo_check_counts_float32_weights_in_a_while_loop():
  hlo = "%w = (s32[], f32[3,3,8,8]{3,2,1,0}, bf16[3,3,8,16]{3,2,1,0}, f32[2,4,4,3]) while(%t), body=%b"
  assert kit.loop_carries_f32_weights(hlo, {(3, 3, 8, 8), (3, 3, 8, 16)}) == 1
  assert kit.loop_carries_f32_weights("no loop here", {(3, 3)}) is None


def _run_kit(tmp_path, *flags, timeout=900):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device, as the kit's stages would see one GPU
  env.pop("OUT", None)
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "benchmarks", "gpu", "kit.py"), f"--out_dir={tmp_path}", *flags],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (path,) = tmp_path.glob("gpu_*.json")
  return json.loads(path.read_text()), proc.stdout


def test_kit_out_of_budget_still_writes_its_json(tmp_path):
  result, out = _run_kit(tmp_path, "--dry_run", "--budget_s=1")
  assert [s["status"].startswith("skipped") for s in result["stages"].values()] == [True] * len(kit.default_stages())
  assert result["dry_run"] and "wall_s" in result and "summary" in result


@pytest.mark.slow
def test_kit_dry_run_measures_every_figure(tmp_path):
  """The kit's stages end to end on tiny models (one of each kind): every figure the
  GPU run reports is there."""
  stages = "env,jax:afhq:bf16,torch:afhq:bf16,synthesis"
  result, out = _run_kit(tmp_path, "--dry_run", f"--stages={stages}", "--budget_s=600")
  assert "wrote" in out
  assert set(result) >= {"device", "date", "peak_tflops", "env", "stages", "summary", "settings", "wall_s"}
  st = result["stages"]
  assert all(st[s]["status"] == "ok" for s in stages.split(",")), {s: st[s].get("status") for s in st}
  assert {"jax", "version_torch", "version_flax", "device_kind", "platform"} <= set(st["env"])
  jax_keys = {
      "jax_compile_s",
      "jax_first_call_s",
      "jax_images_per_s",
      "gflops_per_unet_call_per_image",
      "flops_source",
      "jax_achieved_tflops",
      "jax_mfu",
      "peak_tflops",
      "loop_f32_weight_tensors",
      "params",
      "precision",
  }
  assert jax_keys <= set(st["jax:afhq:bf16"]), jax_keys - set(st["jax:afhq:bf16"])
  assert st["jax:afhq:bf16"]["flops_source"] == "compiled" and st["jax:afhq:bf16"]["precision"] == "DEFAULT"
  assert {"torch_eager_images_per_s", "torch_compile", "channels_last"} <= set(st["torch:afhq:bf16"])
  syn = st["synthesis"]
  assert syn["returncode"] == 0 and syn["dataset_samples"] == syn["num_samples"] == 8
  assert syn["samples_per_s_end_to_end"] > 0 and syn["samples_per_s_denoise_and_write"] > 0
  row = result["summary"]["afhq:bf16"]
  assert row["jax_images_per_s"] > 0 and row["jax_over_torch_eager"] > 0


# --------------------------------------------------------------------------- overlapped dataset writing


def _digests_and_finalize(directory):
  from discovery_jax.data import dataset
  from tests import test_dataset as td

  assert dataset.DatasetWriter.open(str(directory)).finalize().complete
  return td.shard_digests(directory)


def test_overlapped_write_pending_writes_the_bytes_of_a_sequential_run(tmp_path):
  from tests import test_dataset as td

  calls = []

  def generate(indices):
    calls.append(int(indices[0]))
    return td.fake_examples(indices)

  seq, ovl = tmp_path / "seq", tmp_path / "ovl"
  assert td.make_writer(seq, write_images=True).write_pending(td.fake_examples, overlap=False) == [0, 1, 2, 3, 4]
  assert td.make_writer(ovl, write_images=True).write_pending(generate) == [0, 1, 2, 3, 4]
  assert calls == [0, 5, 10, 15, 20]  # in order, in this thread
  assert _digests_and_finalize(ovl) == _digests_and_finalize(seq)
  assert D_manifest(ovl)["shards"] == D_manifest(seq)["shards"]
  assert sorted(os.listdir(ovl / "images")) == sorted(os.listdir(seq / "images"))


def D_manifest(directory):
  from discovery_jax.data import dataset

  return dataset.read_manifest(str(directory))


def test_a_failed_background_write_surfaces_and_keeps_the_complete_shards(tmp_path, monkeypatch):
  from discovery_jax.data import dataset
  from tests import test_dataset as td

  original = dataset.DatasetWriter.write_shard

  def failing(self, shard, examples):
    if shard == 2:
      raise dataset.ShardWriteError(28, "disk full (simulated)")
    return original(self, shard, examples)

  monkeypatch.setattr(dataset.DatasetWriter, "write_shard", failing)
  with pytest.raises(dataset.ShardWriteError, match="simulated"):
    td.make_writer(tmp_path).write_pending(td.fake_examples)
  monkeypatch.setattr(dataset.DatasetWriter, "write_shard", original)
  writer = td.make_writer(tmp_path)
  assert writer.pending_shards() == [2, 3, 4]
  assert writer.write_pending(td.fake_examples) == [2, 3, 4]


def test_a_failed_generate_lets_the_shard_in_flight_finish(tmp_path):
  from tests import test_dataset as td

  def generate(indices):
    if indices[0] == 15:
      raise RuntimeError("device lost (simulated)")
    return td.fake_examples(indices)

  with pytest.raises(RuntimeError, match="simulated"):
    td.make_writer(tmp_path).write_pending(generate)
  assert td.make_writer(tmp_path).pending_shards() == [3, 4]  # shard 2 was being written: it completed


_SLOW_WRITER = """
import sys, time
sys.path.insert(0, {repo!r})
from tests import test_dataset as td
def generate(indices):
  time.sleep({sleep})
  return td.fake_examples(indices)
print(td.make_writer({directory!r}).write_pending(generate))
"""


def test_sigkill_during_overlapped_synthesis_then_resume_gives_the_same_bytes(tmp_path):
  import glob
  import signal
  import time

  from tests import test_dataset as td

  ref = tmp_path / "ref"
  td.make_writer(ref).write_pending(td.fake_examples, overlap=False)
  killed = tmp_path / "killed"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  script = lambda sleep: _SLOW_WRITER.format(repo=REPO, sleep=sleep, directory=str(killed))
  proc = subprocess.Popen(
      [sys.executable, "-c", script(1.0)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
  )
  try:
    deadline = time.time() + 60
    while not glob.glob(str(killed / "_shards" / "*.json")):
      assert proc.poll() is None, proc.stdout.read().decode()
      assert time.time() < deadline, "no shard written in 60 s"
      time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait(10)
  pending = td.make_writer(killed).pending_shards()
  assert 0 < len(pending) < 5
  rerun = subprocess.run([sys.executable, "-c", script(0)], env=env, capture_output=True, text=True, timeout=120)
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  assert _digests_and_finalize(killed) == _digests_and_finalize(ref)


# --------------------------------------------------------------------------- discovery memory


def test_bank_geometry_holds_the_banks_once_and_agrees_with_the_stacked_build():
  from discovery_jax.discovery import criteria, driver

  rng = np.random.default_rng(0)
  ood = rng.standard_normal((70, 3, 16, 16)).astype(np.float32) + 0.05
  idb = rng.standard_normal((40, 3, 16, 16)).astype(np.float32) - 0.05
  w = rng.standard_normal(768).astype(np.float32)
  for full in (False, True):
    want = criteria.BankGeometry.build(ood, idb, w=w, full_id_gram=full)
    got = driver.bank_geometry(ood, idb, w=w, full_id_gram=full)
    assert not isinstance(got.ood, jax.Array) and got.num_ood == 70 and got.num_id == 40
    np.testing.assert_array_equal(np.asarray(got.all_t)[:, :110], np.asarray(want.all_t)[:, :110])
    np.testing.assert_allclose(np.asarray(got.all_t), np.asarray(want.all_t), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.g_all), np.asarray(want.g_all), rtol=1e-6, atol=1e-3)


@pytest.mark.slow
def test_discover_streams_into_a_memmap_and_gives_the_in_memory_result(tmp_path):
  from discovery_jax import discovery as geo

  rng = np.random.default_rng(1)
  shape = (3, 8, 8)
  banks = {}
  for name, shift in (("ood", 0.05), ("id", -0.05)):
    np.save(tmp_path / f"{name}.npy", rng.standard_normal((40,) + shape).astype(np.float32) + shift)
    banks[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
  kw = dict(num_samples=30, key=jax.random.key(0), mode="rejection", tolerance_scale=1e9, guard=None)
  plain = geo.discover(np.array(banks["ood"]), np.array(banks["id"]), **kw)
  out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=(30,) + shape)
  streamed = geo.discover(banks["ood"], banks["id"], out=out, **kw)
  assert streamed.num_accepted == plain.num_accepted == 30
  np.testing.assert_array_equal(streamed.latents, plain.latents)
  np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), plain.latents)
  np.testing.assert_array_equal(banks["ood"], np.load(tmp_path / "ood.npy"))  # the banks' pages re-read intact
  assert streamed.comparison == plain.comparison
