"""Batched, sharded DDIM over any number of inputs: images -> latents and back.

``DDIMRunner`` runs ``diffusion.ddim_loop`` at a fixed per-device batch size
(padding the last batch, so nothing recompiles) under a jit that declares its
shardings: batches split over the mesh's data axis, weights and the time grid
replicated. An input smaller than one global batch runs as ONE step at the
smallest power-of-two per-device batch that holds it, and at least 2 (12 images
on 8 devices with ``batch_size=16`` run as 2 per device, not 16), so a few images
never pay for a full batch; the sizes are powers of two so that at most
log2(batch_size) shapes ever compile. The weights are cast to the model's compute dtype once,
before the trajectory's ``lax.scan`` (``models.layers.cast_params``), and the
state buffer is donated to the jitted trajectory.

Sample i depends on its global index only (noise from ``fold_in(key, i)``); on
XLA:CPU a sample's bits were also measured not to depend on the batch it ran in
(batches 2..16 for the small DDPM, 1..16 for the small iDDPM), so 1 and 8 devices
give the same bits.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from discovery_jax import diffusion, parallel
from discovery_jax.models import layers

# The smallest per-device batch a small input runs at: XLA:CPU computes a batch of one
# with other kernels than larger batches (the small DDPM: 3.6e-6 apart), while batches
# of 2..16 gave the same bits, so this keeps 1 and 8 devices bitwise equal.
MIN_DEVICE_BATCH = 2


def pure_noise(key: jax.Array, sample_index: Sequence[int], shape: Sequence[int]) -> np.ndarray:
  """x_T ~ N(0, I) of samples ``sample_index``: sample i from ``fold_in(key, i)``."""
  index = jnp.asarray(np.asarray(sample_index), jnp.uint32)
  return np.asarray(jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), tuple(shape)))(index))


@dataclasses.dataclass
class DDIMRunner:
  """Inversion / generation of any number of inputs in fixed-size batches
  (``batch_size`` per device; the global batch is that times the mesh's data axis)."""

  fn: diffusion.EpsFn
  t_0: int = diffusion.DEFAULT_T0
  n_steps: int = diffusion.DEFAULT_STEPS
  schedule: diffusion.Schedule = diffusion.DEFAULT_SCHEDULE
  batch_size: int = 8
  mesh: Any = None
  bandwidth: Any = None  # the t_0 search (discovery.bandwidth) when t_0 came from sampling.t_0='auto'

  def __post_init__(self):
    diffusion.check_ddim_args(self.t_0, self.n_steps, 0.0, self.schedule.num_timesteps)
    # Per device: every device runs the same shapes whatever the device count, so a
    # sample's bits do not depend on it (XLA's kernels accumulate in an order that
    # depends on the batch shape).
    self.batch_size = max(1, int(self.batch_size))
    self.num_devices = parallel.data_size(self.mesh)
    self.global_batch = self.batch_size * self.num_devices
    # Cast once here: the jitted loop then finds the kernels already in the compute dtype.
    self._params = parallel.replicate(layers.cast_params(self.fn.params, _compute_dtype(self.fn)), self.mesh)
    self._alphas = parallel.replicate(jnp.asarray(self.schedule.alphas_cumprod, jnp.float32), self.mesh)
    self._inv = diffusion.inversion_pairs(self.t_0, self.n_steps)
    self._gen = diffusion.generation_pairs(self.t_0, self.n_steps)

  def at(self, t_0: int) -> "DDIMRunner":
    """The same model, schedule, batch and mesh at another t_0."""
    return DDIMRunner(self.fn, t_0, self.n_steps, self.schedule, self.batch_size, self.mesh)

  def step_batch(self, n: int) -> int:
    """The global batch of the steps that process ``n`` inputs: the full global batch
    when ``n`` fills it, else one step at the smallest power-of-two per-device batch
    (at least MIN_DEVICE_BATCH, at most ``batch_size``) whose global batch holds them."""
    if n >= self.global_batch:
      return self.global_batch
    per_device = max(-(-max(int(n), 1) // self.num_devices), MIN_DEVICE_BATCH)
    return min(self.batch_size, 1 << (per_device - 1).bit_length()) * self.num_devices

  def _loop(self, x: np.ndarray, pairs, eta: float = 0.0, keys=None, size: int | None = None) -> np.ndarray:
    n = x.shape[0]
    size = self.step_batch(n) if size is None else size
    # A copy of our own: the jitted loop donates (overwrites) the state buffer.
    xb = parallel.shard_batch(np.array(parallel.pad_batch(x, size), np.float32, copy=True), self.mesh)
    if keys is not None:
      keys = parallel.shard_batch(parallel.pad_batch(keys, size), self.mesh)
    ts, ts_next = parallel.replicate((jnp.asarray(pairs[0]), jnp.asarray(pairs[1])), self.mesh)
    run = _sharded_loop(self.fn, self.mesh, float(eta), keys is not None)
    return np.asarray(run(self._params, xb, ts, ts_next, self._alphas, keys))[:n]

  def _batched(self, x: np.ndarray, run: Callable[[np.ndarray, slice, int], np.ndarray]) -> np.ndarray:
    step = self.step_batch(x.shape[0])
    outs = [run(x[i : i + step], slice(i, i + step), step) for i in range(0, x.shape[0], step)]
    return np.concatenate(outs, axis=0)

  def run_pairs(self, x: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Deterministic DDIM over explicit ``(t, t_next)`` step pairs (benchmarks use
    pairs of one length for both directions, so one compiled trajectory serves both)."""
    return self._batched(np.asarray(x, np.float32), lambda b, _, size: self._loop(b, pairs, size=size))

  def invert(self, x0: np.ndarray) -> np.ndarray:
    """Images (N, H, W, C) in [-1, 1] -> latents x_{t_0} (N, H, W, C)."""
    return self._batched(np.asarray(x0, np.float32), lambda b, _, size: self._loop(b, self._inv, size=size))

  def generate(
      self,
      x_t: np.ndarray,
      *,
      eta: float = 0.0,
      key: jax.Array | None = None,
      sample_index: Sequence[int] | None = None,
  ) -> np.ndarray:
    """Latents x_{t_0} -> images x_0; with eta > 0 sample i uses fold_in(key, sample_index[i])."""
    x_t = np.asarray(x_t, np.float32)
    diffusion.check_ddim_args(self.t_0, self.n_steps, eta, self.schedule.num_timesteps)
    if eta > 0 and key is None:
      raise ValueError("eta > 0 needs a random key")
    index = np.arange(x_t.shape[0]) if sample_index is None else np.asarray(sample_index)
    keys = _raw_keys(diffusion.sample_keys(key, index)) if eta > 0 else None
    run = lambda b, sl, size: self._loop(b, self._gen, eta=eta, keys=None if keys is None else keys[sl], size=size)
    return self._batched(x_t, run)

  def generate_to(self, x_t: np.ndarray, t_stop: int) -> np.ndarray:
    """Deterministic DDIM from x_{t_0} down to exactly x_{t_stop}: this runner's
    grid steps above t_stop, the last one landing on t_stop."""
    ts = self._gen[0]
    ts = ts[ts > t_stop]
    pairs = (ts, np.append(ts[1:], t_stop).astype(np.int32))
    return self._batched(np.asarray(x_t, np.float32), lambda b, _, size: self._loop(b, pairs, size=size))

  def sample_from_noise(self, key: jax.Array, sample_index: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Unconditional samples: x_T = ``pure_noise(key, i)`` generated from T-1 down to 0
    with this runner's number of steps."""
    top = self.at(self.schedule.num_timesteps - 1)
    return top.generate(pure_noise(key, sample_index, shape))


@functools.lru_cache(maxsize=None)
def _sharded_loop(fn: diffusion.EpsFn, mesh: Any, eta: float, with_keys: bool):
  """The jitted DDIM loop with declared shardings on ``mesh`` (plain jit without one)."""

  def loop(params, x, ts, ts_next, alphas, keys):
    # Before the scan: float32 weights get converted once per call, not at every step
    # (a no-op for the runner's own weights, already cast in __post_init__).
    params = layers.cast_params(params, _compute_dtype(fn))
    return diffusion.ddim_loop(fn.apply, params, x, ts, ts_next, alphas, eta=eta, keys=keys)

  if mesh is None:
    return jax.jit(loop, donate_argnums=(1,))
  rep, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  return jax.jit(
      loop,
      in_shardings=(rep, batch, rep, rep, rep, batch if with_keys else None),
      out_shardings=batch,
      donate_argnums=(1,),
  )


def _compute_dtype(fn: diffusion.EpsFn) -> Any:
  return getattr(fn.module, "dtype", jnp.float32)


def _raw_keys(keys: jax.Array) -> np.ndarray:
  """Typed or raw PRNG keys -> raw uint32 key data (paddable, shardable numpy)."""
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.key_data(keys)
  return np.asarray(keys)
