"""The Gaussian prior of a latent bank and draws from it keyed by global index."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from discovery_jax.discovery.linalg import as_rows, latent_shape, row_blocks


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["mean", "var"], meta_fields=["kind", "shape", "num_latents"]
)
@dataclasses.dataclass(frozen=True)
class GaussianPrior:
  """N(mean, diag(var)) over flattened latents; ``var`` is a scalar (pooled) or (d,)."""

  mean: jax.Array  # (d,)
  var: jax.Array  # () for kind='pooled', (d,) for kind='diagonal'
  kind: str
  shape: tuple[int, ...]  # the latent shape, e.g. (256, 256, 3)
  num_latents: int

  @property
  def dim(self) -> int:
    return int(np.prod(self.shape))

  @property
  def sigma(self) -> float:
    """The pooled standard deviation sqrt(mean_j var_j) (= sqrt(var) when pooled)."""
    return float(np.sqrt(np.mean(np.asarray(self.var, np.float64))))

  def shell_radius(self) -> float:
    """sqrt(|mean|^2 + sum_j var_j): the radius the prior's norms concentrate at."""
    m = np.asarray(self.mean, np.float64)
    total_var = float(np.sum(np.broadcast_to(np.asarray(self.var, np.float64), m.shape)))
    return float(np.sqrt(m @ m + total_var))

  def summary(self) -> dict:
    return {
        "kind": self.kind,
        "dim": self.dim,
        "num_latents": self.num_latents,
        "sigma": self.sigma,
        "mean_norm": float(np.linalg.norm(np.asarray(self.mean, np.float64))),
        "shell_radius": self.shell_radius(),
    }


def _squared_deviations(block: np.ndarray, centre: Any) -> np.ndarray:
  """``(block - centre)**2`` in float64, squared in place: one block-sized temporary, not two."""
  dev = np.subtract(block, centre, dtype=np.float64)
  return np.square(dev, out=dev)


def fit_prior(latents: Any, kind: str = "pooled") -> GaussianPrior:
  """Per-dimension mean and unbiased variance, streamed in float64.

  'pooled' (official): ONE variance, the mean over dimensions of the per-dimension
  unbiased variances, ``sum_ij (x_ij - m_j)^2 / ((N - 1) d)``. (The official code's
  ``np.var(flat)`` is the biased variance around ONE global scalar mean: it also
  counts the spread of the per-dimension means.) 'diagonal': the (d,) variances.
  """
  if kind not in ("pooled", "diagonal"):
    raise ValueError(f"kind must be 'pooled' or 'diagonal', got {kind!r}")
  rows = as_rows(latents)
  n = rows.shape[0]
  if n < 2:
    raise ValueError(f"fitting a variance needs at least 2 latents, got {n}")
  total = np.zeros(rows.shape[1], np.float64)
  for _, b in row_blocks(rows):
    total += b.sum(0, dtype=np.float64)
  mean = total / n
  sq = np.zeros_like(mean)
  for _, b in row_blocks(rows):
    sq += _squared_deviations(b, mean).sum(0)
  var = sq / (n - 1)
  var = np.float32(var.mean()) if kind == "pooled" else var.astype(np.float32)
  return GaussianPrior(jnp.asarray(mean, jnp.float32), jnp.asarray(var), kind, latent_shape(latents), n)


def fit_prior_published_head(id_latents: Any) -> GaussianPrior:
  """The published code's HEAD prior, kept as an option: fitted on the ID bank, with the
  per-dimension mean and ``np.var`` over all N*d entries about ONE scalar mean (biased),
  which also counts the spread of the per-dimension means."""
  rows = as_rows(id_latents)
  n, d = rows.shape
  if n < 2:
    raise ValueError(f"fitting a variance needs at least 2 latents, got {n}")
  total, sq = np.zeros(d, np.float64), 0.0
  for _, b in row_blocks(rows):
    total += b.sum(0, dtype=np.float64)
  grand = total.sum() / (n * d)
  for _, b in row_blocks(rows):
    sq += float(_squared_deviations(b, grand).sum())
  return GaussianPrior(
      jnp.asarray(total / n, jnp.float32),
      jnp.asarray(np.float32(sq / (n * d))),
      "published_head",
      latent_shape(id_latents),
      n,
  )


def standard_normal(key: jax.Array, dim: int) -> jax.Array:
  """(dim,) N(0, 1) from one threefry key: ``sqrt(2) erfinv(u)``, u uniform in (-1, 1)
  from the words ``threefry_2x32(key, 0..dim-1)``.

  The classic counter-mode threefry stream (two words per hash block), written out so
  it is fixed whatever ``jax_threefry_partitionable`` says; it is 1.5-2x faster on CPU
  than ``jax.random.normal`` in partitionable mode, and the prior draws are the main
  cost of the discovery kernel at d = 196,608.
  """
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  if data.shape != (2,):
    raise ValueError(f"prior draws need a threefry key (2 words of key data), got key data of shape {data.shape}")
  bits = jax.extend.random.threefry_2x32(data, jnp.arange(dim, dtype=jnp.uint32))
  u = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0  # [0, 1)
  u = jnp.maximum(np.nextafter(np.float32(-1), np.float32(0)), 2 * u - 1)
  return np.float32(math.sqrt(2)) * jax.lax.erf_inv(u)


@jax.jit
def sample_prior_jit(prior: GaussianPrior, key: jax.Array, index: jax.Array) -> jax.Array:
  z = jax.vmap(lambda i: standard_normal(jax.random.fold_in(key, i), prior.dim))(index)
  return prior.mean + jnp.sqrt(prior.var) * z


def sample_prior(prior: GaussianPrior, key: jax.Array, sample_index: Any) -> jax.Array:
  """Draws (n, d): draw i is ``mean + sqrt(var) * standard_normal(fold_in(key, sample_index[i]))``,
  so it never depends on which batch or device produced it."""
  index = jnp.atleast_1d(jnp.asarray(sample_index, jnp.uint32))
  return sample_prior_jit(prior, key, index)


def gaussian_geometry(dim: int, sigma: float = 1.0) -> dict:
  """What an isotropic N(0, sigma^2 I_d) predicts (docs/method.md, "Geometry")."""
  return {
      "dim": int(dim),
      "sigma": float(sigma),
      "shell_radius": math.sqrt(dim) * sigma,
      "pairwise_distance": math.sqrt(2 * dim) * sigma,
      "angle_origin_deg": 90.0,
      "angle_vertex_deg": 60.0,
      "angle_origin_std_deg": math.degrees(1 / math.sqrt(dim)),
  }
