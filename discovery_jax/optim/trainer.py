"""eps-prediction training: the loss, the optimizer, EMA, a jitted data-parallel step,
and resumable checkpointing with orbax's CheckpointManager.

Used by ``train`` (a base model from scratch) and ``finetune`` (the paper's vanilla
fine-tuning baseline, done correctly: a real optimizer step every iteration and
the loss on the eps output). Every random draw (timesteps, noise, flips, dropout)
is keyed by ``fold_in(fold_in(seed, step), global_example_index)``, and the batch
of step s is a function of (seed, s) alone: a run resumed after a kill, or run on
another number of devices, follows the same trajectory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from discovery_jax import checkpoint, diffusion, fileio, models, parallel
from discovery_jax.data import images
from discovery_jax.data.inputs import open_image_folder
from discovery_jax.runner import DDIMRunner


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """One training run (the typed form of ``config.train`` / ``config.finetune``)."""

  steps: int
  batch_size: int
  learning_rate: float
  warmup_steps: int = 0
  grad_clip: float = 0.0
  ema_decay: float = 0.999
  weight_decay: float = 0.0
  hflip: bool = False
  seed: int = 0
  log_every: int = 50
  checkpoint_every: int = 500
  keep_checkpoints: int = 2
  num_preview: int = 16
  b1: float = 0.9
  b2: float = 0.999
  adam_eps: float = 1e-8

  @classmethod
  def from_mapping(cls, section) -> "TrainOptions":
    """The fields of ``section`` that name an option (others, like ``data``, are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(section).items() if k in names and v is not None})


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


def make_optimizer(cfg: TrainOptions) -> optax.GradientTransformation:
  """Adam with linear warm-up, global-norm clipping and optional weight decay."""
  lr = float(cfg.learning_rate)
  warmup = int(cfg.warmup_steps)
  schedule = (
      optax.join_schedules(
          [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [max(warmup, 1)]
      )
      if warmup > 0
      else optax.constant_schedule(lr)
  )
  parts = []
  if float(cfg.grad_clip) > 0:
    parts.append(optax.clip_by_global_norm(float(cfg.grad_clip)))
  parts.append(optax.adam(schedule, b1=float(cfg.b1), b2=float(cfg.b2), eps=float(cfg.adam_eps)))
  if float(cfg.weight_decay) > 0:
    parts.append(optax.add_decayed_weights(float(cfg.weight_decay)))
  return optax.chain(*parts)


def init_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
  # Own buffers for both: the train step donates its state, which must never
  # delete the caller's parameters (finetune samples the base model afterwards).
  params = jax.tree_util.tree_map(lambda x: jnp.array(x, dtype=jnp.float32, copy=True), params)
  ema = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema, opt_state=tx.init(params))


def diffusion_loss(
    module: nn.Module,
    params: Any,
    x0: jax.Array,
    index: jax.Array,
    key: jax.Array,
    alphas_cumprod: jax.Array,
    eps_channels: int,
    hflip: bool = False,
) -> jax.Array:
  """Mean squared error of the eps prediction at uniformly drawn timesteps.

  For iDDPM checkpoints with learned variances only the eps channels are trained
  (L_simple): the variance channels play no part in DDIM sampling.
  """
  num_t = alphas_cumprod.shape[0]

  def draws(i):
    k = jax.random.fold_in(key, i)
    kt, kn, kf, kd = jax.random.split(k, 4)
    return (
        jax.random.randint(kt, (), 0, num_t),
        jax.random.normal(kn, x0.shape[1:], x0.dtype),
        jax.random.bernoulli(kf),
        kd,
    )

  t, noise, flip, _ = jax.vmap(draws)(index)
  if hflip:
    x0 = jnp.where(flip[:, None, None, None], x0[:, :, ::-1, :], x0)
  a = alphas_cumprod[t][:, None, None, None]
  x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * noise
  dropout_key = jax.random.fold_in(key, 2**31 - 1)
  out = module.apply({"params": params}, x_t, t, train=True, rngs={"dropout": dropout_key})
  return jnp.mean((out[..., :eps_channels] - noise) ** 2)


def make_train_step(
    module: nn.Module,
    tx: optax.GradientTransformation,
    alphas_cumprod: np.ndarray,
    eps_channels: int,
    ema_decay: float,
    hflip: bool,
) -> Callable:
  alphas = jnp.asarray(alphas_cumprod, jnp.float32)

  def step(state: TrainState, x0: jax.Array, index: jax.Array, key: jax.Array):
    step_key = jax.random.fold_in(key, state.step)
    loss, grads = jax.value_and_grad(
        lambda p: diffusion_loss(module, p, x0, index, step_key, alphas, eps_channels, hflip)
    )(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.ema_params, params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return TrainState(state.step + 1, params, ema, opt_state), metrics

  return jax.jit(step, donate_argnums=(0,))


# ---------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class ArrayDataset:
  """An in-memory image set (N, H, W, C) in [-1, 1]; batches are a function of (seed, step)."""

  images: np.ndarray
  seed: int = 0

  def __post_init__(self):
    if self.images.ndim != 4 or len(self.images) == 0:
      raise ValueError(f"training data must be a non-empty (N, H, W, C) array, got shape {self.images.shape}")

  def batch(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images and global example indices of step ``step`` (epochs of fresh permutations)."""
    n = len(self.images)
    first = step * batch_size
    positions = np.arange(first, first + batch_size)
    epochs, offsets = positions // n, positions % n
    idx = np.empty(batch_size, np.int64)
    for e in np.unique(epochs):
      perm = np.random.default_rng([self.seed, int(e)]).permutation(n)
      idx[epochs == e] = perm[offsets[epochs == e]]
    return self.images[idx], positions.astype(np.uint32)


def load_training_images(source: str, options: images.ImageOptions) -> np.ndarray:
  """A folder of images, or an .npz/.npy file holding uint8 or [-1, 1] float images."""
  if os.path.isfile(source) and source.endswith((".npz", ".npy")):
    data = np.load(source)
    arr = data["images"] if isinstance(data, np.lib.npyio.NpzFile) else data
    if arr.ndim == 3:
      arr = arr[..., None]
    if arr.dtype == np.uint8:
      arr = arr.astype(np.float32) / 127.5 - 1.0
    arr = np.asarray(arr, np.float32)
    want = (options.image_size, options.image_size, options.channels)
    if arr.shape[1:] != want:
      raise ValueError(f"{source}: images of shape {arr.shape[1:]}, the model needs {want}")
    return arr
  scan = open_image_folder(source, options, "skip")
  return scan.load(range(len(scan)))


# ---------------------------------------------------------------------------
# The loop.


def _manager(directory: str, keep: int):
  import orbax.checkpoint as ocp

  options = ocp.CheckpointManagerOptions(max_to_keep=max(1, keep), create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def train_loop(
    module: nn.Module,
    params: Any,
    data: ArrayDataset,
    cfg: TrainOptions,
    workdir: str,
    *,
    schedule: diffusion.Schedule,
    mesh=None,
    eps_channels: int,
    should_stop: Callable[[int], bool] | None = None,
) -> TrainState:
  """Trains until ``cfg.steps``, resuming from the newest checkpoint in ``workdir``.

  Writes ``checkpoints/`` (orbax CheckpointManager), ``train_log.jsonl`` (one line
  per ``log_every`` steps) and returns the final state.
  """
  import orbax.checkpoint as ocp

  tx = make_optimizer(cfg)
  batch_size = parallel.round_up(int(cfg.batch_size), parallel.data_size(mesh))
  step_fn = make_train_step(module, tx, schedule.alphas_cumprod, eps_channels, float(cfg.ema_decay), bool(cfg.hflip))
  state = init_state(params, tx)
  manager = _manager(os.path.join(workdir, "checkpoints"), int(cfg.keep_checkpoints))
  latest = manager.latest_step()
  if latest is not None:
    with checkpoint.quiet_orbax():
      abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
      state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
    logging.info("resumed from step %d (%s)", latest, manager.directory)
  state = parallel.replicate(state, mesh)
  key = jax.random.key(int(cfg.seed))
  total = int(cfg.steps)
  log_path = os.path.join(workdir, "train_log.jsonl")
  every_log, every_ckpt = int(cfg.log_every), int(cfg.checkpoint_every)
  start_step = int(state.step)
  t0, last = time.time(), time.time()
  losses = []
  with open(log_path, "a") as log:
    for step in range(start_step, total):
      x0, index = data.batch(step, batch_size)
      state, metrics = step_fn(state, parallel.shard_batch(x0, mesh), parallel.shard_batch(index, mesh), key)
      losses.append(metrics["loss"])
      done = step + 1
      if done % every_log == 0 or done == total:
        values = [float(v) for v in jax.device_get(losses)]
        losses = []
        now = time.time()
        entry = {
            "step": done,
            "loss": float(np.mean(values)),
            "grad_norm": float(metrics["grad_norm"]),
            "images_per_s": round(every_log * batch_size / max(now - last, 1e-9), 2),
        }
        last = now
        log.write(json.dumps(fileio.finite_json(entry), allow_nan=False) + "\n")
        log.flush()
        logging.info(
            "step %d/%d loss %.5f (%.1f img/s, ETA %.0fs)",
            done,
            total,
            entry["loss"],
            entry["images_per_s"],
            (total - done) * batch_size / max(entry["images_per_s"], 1e-9),
        )
      if done % every_ckpt == 0 or done == total:
        with checkpoint.quiet_orbax():
          manager.save(done, args=ocp.args.StandardSave(jax.device_get(state)), force=True)
          manager.wait_until_finished()
      if should_stop is not None and should_stop(done):
        break
  manager.close()
  logging.info("trained %d steps in %.1fs", int(state.step) - start_step, time.time() - t0)
  return state


def read_log(workdir: str) -> list[dict]:
  """The training log (last entry per step wins: a resumed run rewrites a few steps)."""
  path = os.path.join(workdir, "train_log.jsonl")
  entries = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          e = json.loads(line)
          entries[e["step"]] = e
        except (json.JSONDecodeError, KeyError):
          continue
  return [entries[k] for k in sorted(entries)]


def plot_loss(workdir: str, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  log = read_log(workdir)
  if not log:
    return
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot([e["step"] for e in log], [e["loss"] for e in log])
  ax.set_xlabel("step")
  ax.set_ylabel("eps MSE")
  ax.set_yscale("log")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def sample_from_noise(
    module: nn.Module,
    params: Any,
    count: int,
    *,
    schedule: diffusion.Schedule,
    n_steps: int,
    key: jax.Array,
    batch_size: int = 16,
    mesh=None,
    start_index: int = 0,
) -> np.ndarray:
  """Unconditional DDIM samples of a model (sample i from ``runner.pure_noise(key, i)``)."""
  runner = DDIMRunner(diffusion.eps_fn(module, params), schedule.num_timesteps - 1, n_steps, schedule, batch_size, mesh)
  shape = (module.image_size, module.image_size, module.in_channels)
  return runner.sample_from_noise(key, range(start_index, start_index + count), shape)


def run(
    options: TrainOptions,
    workdir: str,
    *,
    params: Any,
    model_config: dict,
    data_source: str,
    image_options: images.ImageOptions,
    schedule: diffusion.Schedule,
    preview_steps: int,
    mesh: Any,
    metadata: dict,
) -> dict:
  """Trains ``params`` on ``data_source`` and writes:

  ``WORKDIR/model/`` (a discovery_jax checkpoint of the EMA weights),
  ``samples.png`` (DDIM samples from pure noise), ``loss.png``, ``train_log.jsonl``,
  ``summary.json``. Rerunning resumes from the newest checkpoint.
  """
  module = models.create_model(model_config)
  data = ArrayDataset(load_training_images(data_source, image_options), seed=int(options.seed))
  logging.info("%d training images %s from %s", len(data.images), data.images.shape[1:], data_source)
  start = time.time()
  state = train_loop(
      module,
      params,
      data,
      options,
      workdir,
      schedule=schedule,
      mesh=mesh,
      eps_channels=models.eps_channels(model_config),
  )
  ema = jax.device_get(state.ema_params)
  out_model = os.path.join(workdir, "model")
  checkpoint.save_model(
      out_model,
      ema,
      model_config,
      overwrite=True,
      metadata={
          **metadata,
          "trained_steps": int(state.step),
          "data": os.path.abspath(data_source),
          "num_training_images": len(data.images),
      },
  )
  plot_loss(workdir, os.path.join(workdir, "loss.png"))
  if options.num_preview > 0:
    preview = sample_from_noise(
        module,
        ema,
        options.num_preview,
        schedule=schedule,
        n_steps=preview_steps,
        key=jax.random.key(int(options.seed) + 1),
        mesh=mesh,
    )
    images.save_png(os.path.join(workdir, "samples.png"), images.make_grid(preview))
  log = read_log(workdir)
  summary = {
      "steps": int(state.step),
      "final_loss": log[-1]["loss"] if log else None,
      "seconds_this_run": round(time.time() - start, 1),
      "model": out_model,
      "num_training_images": len(data.images),
      "batch_size": int(options.batch_size),
      "learning_rate": float(options.learning_rate),
  }
  fileio.atomic_write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
