"""Noise schedules, DDIM steps and whole DDIM trajectories as one jitted ``lax.scan``.

Conventions follow the official code (docs/method.md, docs/architecture.md):

* time grid ``seq = [int(s) for s in linspace(0, 1, n) * t_0]`` (int truncation:
  t_0=900, n=10 gives 699), ``seq_next = [-1] + seq[:-1]``;
* inversion runs ``(seq_next[k], seq[k])`` for k = 1..n-1 upward, starting at t=0;
* generation runs ``(seq[k], seq_next[k])`` for k = n-1..0 downward, the last step
  0 -> -1 using alpha_bar_next = 1;
* one step: ``x0 = (x - sqrt(1-a_t) eps) / sqrt(a_t)``,
  ``x_next = sqrt(a_next) x0 + c2 eps + c1 z`` with DDIM's c1/c2 (c1 = 0 at eta=0).

Randomness for eta > 0 is keyed per sample by ``fold_in(key, global_index)`` and then
per step, so a sample never depends on batch size, batch position or device count.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from discovery_jax import models

DEFAULT_T0 = 900
DEFAULT_STEPS = 80

# ---------------------------------------------------------------------------
# Schedules.


def beta_schedule(
    kind: str = "linear", num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
  """Betas in float64. 'linear' is the schedule of every real base model.

  diffusers' scheduler names are accepted for the same formulas: 'scaled_linear'
  (linspace of sqrt(beta) squared) is 'quadratic', 'squaredcos_cap_v2' (alpha_bar
  = cos^2((t/T + 0.008) / 1.008 * pi/2), betas capped at 0.999) is 'cosine'.
  """
  if num_timesteps < 2:
    raise ValueError(f"diffusion.num_timesteps must be >= 2, got {num_timesteps}")
  kind = SCHEDULE_ALIASES.get(kind, kind)
  if kind == "linear":
    betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
  elif kind == "quadratic":
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2
  elif kind == "cosine":  # improved DDPM (Nichol & Dhariwal), s = 0.008.
    f = lambda t: math.cos((t / num_timesteps + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(num_timesteps)], np.float64)
  else:
    raise ValueError(
        "diffusion.beta_schedule must be 'linear', 'quadratic' (= diffusers' 'scaled_linear') or 'cosine' "
        f"(= 'squaredcos_cap_v2'), got {kind!r}"
    )
  if not np.all((betas > 0) & (betas < 1)):
    raise ValueError(f"betas must lie in (0, 1); got range [{betas.min()}, {betas.max()}]")
  return betas


# diffusers' scheduler names -> this module's names for the same betas.
SCHEDULE_ALIASES = {"scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine"}


def canonical_schedule(kind: str) -> str:
  return SCHEDULE_ALIASES.get(kind, kind)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """alpha_bar_t = prod_{s<=t} (1 - beta_s), t = 0..T-1 (float64 on the host)."""

  alphas_cumprod: np.ndarray

  @property
  def num_timesteps(self) -> int:
    return int(self.alphas_cumprod.shape[0])

  @classmethod
  def from_betas(cls, betas: np.ndarray) -> "Schedule":
    return cls(np.cumprod(1.0 - np.asarray(betas, np.float64)))

  @classmethod
  def from_config(cls, diffusion_config: Any = None) -> "Schedule":
    """From a config's ``diffusion`` section (linear 1e-4..0.02, T=1000 if None)."""
    if diffusion_config is None:
      return cls.from_betas(beta_schedule())
    get = diffusion_config.get if hasattr(diffusion_config, "get") else lambda k, d: getattr(diffusion_config, k, d)
    return cls.from_betas(
        beta_schedule(
            get("beta_schedule", "linear"),
            int(get("num_timesteps", 1000)),
            float(get("beta_start", 1e-4)),
            float(get("beta_end", 0.02)),
        )
    )

  def alpha_bar(self, t: jax.Array) -> jax.Array:
    """alpha_bar at integer timesteps ``t``; t = -1 gives 1 (the end of generation)."""
    table = jnp.asarray(self.alphas_cumprod, jnp.float32)
    t = jnp.asarray(t, jnp.int32)
    return jnp.where(t < 0, 1.0, table[jnp.clip(t, 0, self.num_timesteps - 1)])

  def __hash__(self):  # usable as a static jit argument.
    return hash(self.alphas_cumprod.tobytes())

  def __eq__(self, other):
    return isinstance(other, Schedule) and np.array_equal(self.alphas_cumprod, other.alphas_cumprod)


DEFAULT_SCHEDULE = Schedule.from_config(None)

# ---------------------------------------------------------------------------
# Time grids.


def check_ddim_args(t_0: int, n_steps: int, eta: float = 0.0, num_timesteps: int = 1000) -> None:
  """Raises ValueError naming the bad value."""
  if int(t_0) != t_0 or not 1 <= t_0 <= num_timesteps - 1:
    raise ValueError(f"t_0 must be an integer in 1..{num_timesteps - 1}, got {t_0!r}")
  if int(n_steps) != n_steps or n_steps < 2:
    raise ValueError(f"n_steps must be an integer >= 2, got {n_steps!r}")
  if n_steps > t_0 + 1:
    raise ValueError(f"n_steps={n_steps} is larger than t_0 + 1 = {t_0 + 1}: the time grid would repeat " "timesteps")
  if not eta >= 0:
    raise ValueError(f"eta must be >= 0, got {eta!r}")


def ddim_timesteps(t_0: int = DEFAULT_T0, n_steps: int = DEFAULT_STEPS) -> list[int]:
  """``[int(s) for s in linspace(0, 1, n_steps) * t_0]`` (truncation on purpose)."""
  return [int(s) for s in np.linspace(0, 1, n_steps) * t_0]


def inversion_pairs(t_0: int = DEFAULT_T0, n_steps: int = DEFAULT_STEPS) -> tuple[np.ndarray, np.ndarray]:
  """(t, t_next) of the n_steps - 1 inversion steps, upward from t = 0."""
  seq = ddim_timesteps(t_0, n_steps)
  seq_next = [-1] + seq[:-1]
  return np.array(seq_next[1:], np.int32), np.array(seq[1:], np.int32)


def generation_pairs(t_0: int = DEFAULT_T0, n_steps: int = DEFAULT_STEPS) -> tuple[np.ndarray, np.ndarray]:
  """(t, t_next) of the n_steps generation steps, downward to t_next = -1."""
  seq = ddim_timesteps(t_0, n_steps)
  seq_next = [-1] + seq[:-1]
  return np.array(seq[::-1], np.int32), np.array(seq_next[::-1], np.int32)


# ---------------------------------------------------------------------------
# One step.


def ddim_step(
    x: jax.Array, eps: jax.Array, a_t: jax.Array, a_next: jax.Array, *, eta: float = 0.0, noise: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """One DDIM update from alpha_bar ``a_t`` to ``a_next``; returns (x_next, x0_pred).

  ``a_t`` / ``a_next`` are scalars or per-sample arrays of shape (N,).
  """
  a_t = _per_sample(a_t, x)
  a_next = _per_sample(a_next, x)
  x0 = (x - jnp.sqrt(1 - a_t) * eps) / jnp.sqrt(a_t)
  if noise is None or eta == 0:
    return jnp.sqrt(a_next) * x0 + jnp.sqrt(1 - a_next) * eps, x0
  c1 = eta * jnp.sqrt(jnp.clip((1 - a_t / a_next) * (1 - a_next) / (1 - a_t), 0.0))
  c2 = jnp.sqrt(jnp.clip(1 - a_next - c1**2, 0.0))
  return jnp.sqrt(a_next) * x0 + c2 * eps + c1 * noise, x0


def _per_sample(a: jax.Array, x: jax.Array) -> jax.Array:
  a = jnp.asarray(a, jnp.float32)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) if a.ndim else a


# ---------------------------------------------------------------------------
# The network as an eps function.


@dataclasses.dataclass(frozen=True)
class EpsFn:
  """``(x, t) -> eps`` for a Flax UNet, keeping the parameters a traced argument.

  ``apply(params, x, t)`` returns ``(eps, mid_h)``. Kernels below take an EpsFn
  so that jit sees the weights as inputs (not constants) and can shard them.
  A network trained to predict v or x0 (``prediction_type`` 'v_prediction' or
  'sample') is turned into eps with alpha_bar_t of its training ``schedule``, as
  diffusers' DDIM does: eps = sqrt(a) v + sqrt(1-a) x, eps = (x - sqrt(a) x0) /
  sqrt(1-a). The default 'epsilon' returns the output unchanged.
  """

  module: nn.Module
  params: Any
  eps_channels: int
  prediction_type: str = "epsilon"
  schedule: "Schedule | None" = None

  def apply(self, params: Any, x: jax.Array, t: jax.Array, with_mid: bool = False):
    t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
    out, mid = self.module.apply({"params": params}, x, t, return_mid=True)
    out = out[..., : self.eps_channels]
    if self.prediction_type != "epsilon":
      a = _per_sample(self.schedule.alpha_bar(jnp.round(t).astype(jnp.int32)), x)
      if self.prediction_type == "v_prediction":
        out = jnp.sqrt(a) * out + jnp.sqrt(1 - a) * x
      else:  # 'sample': out is x0.
        out = (x - jnp.sqrt(a) * out) / jnp.sqrt(1 - a)
    return out, (mid if with_mid else None)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    return self.apply(self.params, x, t)[0]

  def __hash__(self):  # identity: one compiled kernel per (module, params object).
    return hash((self.module, self.eps_channels, self.prediction_type, self.schedule))

  def __eq__(self, other):
    return (
        isinstance(other, EpsFn)
        and self.module == other.module
        and self.eps_channels == other.eps_channels
        and self.prediction_type == other.prediction_type
        and self.schedule == other.schedule
    )


def eps_fn(module: nn.Module, params: Any) -> EpsFn:
  """The eps prediction of a UNet: for iDDPM with learned sigma, and for a DDPM
  whose ``out_ch`` is twice ``in_channels`` (diffusers' learned variance), the first
  ``in_channels`` output channels (3 for RGB); for DDPM, all ``out_ch``. A DDPM
  that predicts v or x0 (``module.prediction_type``) is converted to eps with the
  schedule it was trained with (``module.beta_schedule`` etc.)."""
  if isinstance(module, models.IDDPMUNet):
    return EpsFn(module, params, module.in_channels)
  channels = module.in_channels if module.out_ch == 2 * module.in_channels else module.out_ch
  kind = getattr(module, "prediction_type", "epsilon")
  if kind == "epsilon":
    return EpsFn(module, params, channels)
  schedule = Schedule.from_betas(
      beta_schedule(module.beta_schedule, int(module.num_train_timesteps), module.beta_start, module.beta_end)
  )
  return EpsFn(module, params, channels, kind, schedule)


# ---------------------------------------------------------------------------
# Trajectories.


def sample_keys(key: jax.Array, sample_index: jax.Array) -> jax.Array:
  """One key per sample, from its global index (independent of batching)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(sample_index, jnp.uint32))


def ddim_loop(
    apply_fn: Callable[..., tuple[jax.Array, Any]],
    params: Any,
    x: jax.Array,
    ts: jax.Array,
    ts_next: jax.Array,
    alphas_cumprod: jax.Array,
    *,
    eta: float = 0.0,
    keys: jax.Array | None = None,
    outputs: Sequence[str] = (),
):
  """Runs DDIM over the step pairs ``(ts[k], ts_next[k])`` in one ``lax.scan``.

  ``apply_fn(params, x, t, with_mid) -> (eps, mid_h)``. ``keys``: per-sample keys
  (N, 2) for eta > 0. ``outputs``: per-step arrays to stack, among 'x', 'x0',
  'mid'. Returns the final x, or (x, {name: (steps, N, ...)}) when outputs.
  Pure: jit it at the boundary (``ddim_invert``/``ddim_generate`` do).
  """
  table = jnp.asarray(alphas_cumprod, jnp.float32)
  n = table.shape[0]
  a_of = lambda t: jnp.where(t < 0, 1.0, table[jnp.clip(t, 0, n - 1)])
  with_mid = "mid" in outputs
  stochastic = eta > 0

  def step(x, inputs):
    k, t, t_next = inputs
    eps, mid = apply_fn(params, x, t, with_mid)
    noise = None
    if stochastic:
      noise = jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, k), x.shape[1:], x.dtype))(keys)
    x_next, x0 = ddim_step(x, eps, a_of(t), a_of(t_next), eta=eta, noise=noise)
    per_step = {"x": x_next, "x0": x0, "mid": mid}
    return x_next, {name: per_step[name] for name in outputs}

  steps = jnp.arange(ts.shape[0], dtype=jnp.uint32)
  x, stacked = jax.lax.scan(step, x.astype(jnp.float32), (steps, jnp.asarray(ts), jnp.asarray(ts_next)))
  return (x, stacked) if outputs else x


@functools.partial(jax.jit, static_argnames=("fn", "eta", "outputs"))
def _jit_loop(fn: EpsFn, params, x, ts, ts_next, alphas_cumprod, keys, *, eta, outputs):
  params = models.layers.cast_params(params, getattr(fn.module, "dtype", jnp.float32))  # once, before the scan
  return ddim_loop(fn.apply, params, x, ts, ts_next, alphas_cumprod, eta=eta, keys=keys, outputs=outputs)


def _run(fn, x, ts, ts_next, schedule, eta, keys, outputs):
  alphas = jnp.asarray(schedule.alphas_cumprod, jnp.float32)
  if isinstance(fn, EpsFn):
    return _jit_loop(fn, fn.params, x, ts, ts_next, alphas, keys, eta=eta, outputs=tuple(outputs))
  # A plain callable (x, t) -> eps: close over it (its own weights become constants).
  apply = lambda _, x, t, with_mid: (fn(x, jnp.broadcast_to(t, (x.shape[0],))), None)
  if "mid" in outputs:
    raise ValueError("outputs=('mid',) needs an EpsFn from discovery_jax.diffusion.eps_fn(module, params)")
  loop = functools.partial(ddim_loop, apply, None, eta=eta, outputs=tuple(outputs))
  return jax.jit(loop)(x, ts, ts_next, alphas, keys=keys)


def ddim_invert(
    fn: EpsFn | Callable,
    x0: jax.Array,
    *,
    t_0: int = DEFAULT_T0,
    n_steps: int = DEFAULT_STEPS,
    schedule: Schedule = DEFAULT_SCHEDULE,
    outputs: Sequence[str] = (),
):
  """Deterministic DDIM inversion of images ``x0`` (NHWC, [-1, 1]) to x_{t_0}."""
  check_ddim_args(t_0, n_steps, 0.0, schedule.num_timesteps)
  ts, ts_next = inversion_pairs(t_0, n_steps)
  return _run(fn, jnp.asarray(x0, jnp.float32), ts, ts_next, schedule, 0.0, None, outputs)


def ddim_generate(
    fn: EpsFn | Callable,
    x_t: jax.Array,
    *,
    t_0: int = DEFAULT_T0,
    n_steps: int = DEFAULT_STEPS,
    eta: float = 0.0,
    key: jax.Array | None = None,
    sample_index: jax.Array | None = None,
    schedule: Schedule = DEFAULT_SCHEDULE,
    outputs: Sequence[str] = (),
):
  """DDIM generation from x_{t_0} down to x_0 (eta = 0: deterministic).

  With eta > 0, ``key`` is required and sample i draws its noise from
  ``fold_in(key, sample_index[i])`` (default: 0..N-1).
  """
  check_ddim_args(t_0, n_steps, eta, schedule.num_timesteps)
  x_t = jnp.asarray(x_t, jnp.float32)
  keys = None
  if eta > 0:
    if key is None:
      raise ValueError("eta > 0 needs a random key: ddim_generate(..., eta=eta, key=jax.random.key(seed))")
    if sample_index is None:
      sample_index = jnp.arange(x_t.shape[0])
    keys = sample_keys(key, sample_index)
  ts, ts_next = generation_pairs(t_0, n_steps)
  return _run(fn, x_t, ts, ts_next, schedule, float(eta), keys, outputs)
