"""Prior draws seen through the banks. The path kernel reads a pooled-Gaussian draw
z = mean + sigma eps only through its inner products with S's rows and its norm, so
those are sampled exactly, without eps's d numbers; eps itself is made only for the
candidates that are kept.

With T = [S; mean] (k rows) and G = T T^T = V L V^T: T eps ~ N(0, G) is drawn as
y = V+ L+^(1/2) xi, xi ~ N(0, I_r) over the r eigen-directions kept, and
|eps|^2 = |xi|^2 + q with q ~ chi^2(d - r), independent of xi (the part of eps outside
the span is isotropic). The materialised eps = T^T V+ L+^(-1/2) xi + sqrt(q) unit((I - P) xi'),
xi' a fresh N(0, I_d) draw and P the projector onto the span, has exactly those inner
products and that norm: the same law as a d-dimensional draw, not the same numbers.
A diagonal prior's norm is not a function of the projection; it keeps full draws.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from discovery_jax.discovery.linalg import rowblock_matmul
from discovery_jax.discovery.prior import GaussianPrior, standard_normal

# Eigen-directions of G below this fraction of its largest eigenvalue are treated as
# outside the span: float32 Gram entries carry noise about 1e-7 of the largest.
RCOND = 1e-6
# Above this many basis vectors the eigendecomposition and the full Gram matrix cost
# more than the draws they save on any realistic search; full draws are used instead.
MAX_BASIS = 4096
_KEY_SPAN, _KEY_CHI2, _KEY_ORTH = 0, 1, 2
# Draws made per call of ``draws_for_paths`` (``path_draws``: a user asks for a few paths' draws,
# and a call costs two passes over the banks whatever its rows; small fixed blocks waste little).
DRAW_BLOCK = 8


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["factor_t", "inverse", "mean_dots", "mean_sq", "sigma"],
    meta_fields=["rank", "dim"],
)
@dataclasses.dataclass(frozen=True)
class DrawBasis:
  """What the kernel needs to draw T eps and |eps|^2 per path, and what
  materialisation needs to make eps."""

  factor_t: jax.Array  # (r, k): (V+ L+^(1/2))^T, so y = xi @ factor_t
  inverse: jax.Array  # (k, r): V+ L+^(-1/2)
  mean_dots: jax.Array  # (k - 1,): mean . S rows
  mean_sq: jax.Array  # (): |mean|^2
  sigma: jax.Array  # (): the pooled standard deviation
  rank: int
  dim: int


def use_span_draws(prior: GaussianPrior, num_rows: int) -> bool:
  """Span draws need a pooled (scalar-variance) prior and a basis far smaller than d."""
  k = num_rows + 1
  return np.ndim(prior.var) == 0 and k <= MAX_BASIS and 4 * k <= prior.dim


def fit_draw_basis(g_all: jax.Array, all_t: jax.Array, prior: GaussianPrior) -> DrawBasis:
  """The eigendecomposition of T T^T from S's full Gram matrix and mean . S (float64 on the host)."""
  mean = jnp.asarray(prior.mean, jnp.float32)
  mean_dots = np.asarray(_mean_dots(all_t, mean), np.float64)
  mean_sq = float(np.sum(np.square(np.asarray(mean, np.float64))))
  g = np.asarray(g_all, np.float64)
  k = g.shape[0] + 1
  gt = np.empty((k, k))
  gt[:-1, :-1], gt[:-1, -1], gt[-1, :-1], gt[-1, -1] = g, mean_dots, mean_dots, mean_sq
  gt = (gt + gt.T) / 2
  lam, vec = np.linalg.eigh(gt)
  keep = lam > RCOND * max(float(lam[-1]), 1e-30)
  lam, vec = lam[keep], vec[:, keep]
  return DrawBasis(
      jnp.asarray((vec * np.sqrt(lam)).T, jnp.float32),
      jnp.asarray(vec / np.sqrt(lam), jnp.float32),
      jnp.asarray(mean_dots, jnp.float32),
      jnp.asarray(np.float32(mean_sq)),
      jnp.asarray(np.float32(prior.sigma)),
      int(keep.sum()),
      int(prior.dim),
  )


@jax.jit
def _mean_dots(all_t: jax.Array, mean: jax.Array) -> jax.Array:
  return mean @ all_t


def span_normals(basis: DrawBasis, key: jax.Array, paths: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per path: xi (r,) and q ~ chi^2(d - r), from keys folded from the path index alone."""
  keys = jax.vmap(lambda p: jax.random.fold_in(key, p))(paths.astype(jnp.uint32))
  xi = jax.vmap(lambda k: standard_normal(jax.random.fold_in(k, _KEY_SPAN), basis.rank))(keys)
  half = np.float32((basis.dim - basis.rank) / 2)
  q = jax.vmap(lambda k: 2 * jax.random.gamma(jax.random.fold_in(k, _KEY_CHI2), half))(keys)
  return xi, q


def path_dots(basis: DrawBasis, key: jax.Array, paths: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(z . S rows (P, k - 1), |z|^2 (P,)) for the draws of ``paths`` (a multiple of ROW_BLOCK)."""
  xi, q = span_normals(basis, key, paths)
  y = rowblock_matmul(xi, basis.factor_t)  # (P, k): T eps
  s = basis.sigma
  dots = basis.mean_dots + s * y[:, :-1]
  xi_sq = rowblock_matmul(xi * xi, jnp.ones((basis.rank, 1), jnp.float32))[:, 0]  # a row sum fixed per row block
  sq = basis.mean_sq + 2 * s * y[:, -1] + s * s * (xi_sq + q)
  return dots, sq


def span_combination(all_t: jax.Array, mean: jax.Array, coef: jax.Array) -> jax.Array:
  """coef @ T for coef (P, k): (P, d), with S kept as its columns S^T."""
  return (all_t @ coef[:, :-1].T).T + coef[:, -1:] * mean


@jax.jit
def materialise_draws(basis: DrawBasis, all_t: jax.Array, mean: jax.Array, key: jax.Array, paths: jax.Array):
  """The draws z = mean + sigma eps (P, d) whose inner products ``path_dots`` gave:
  eps = a xi' + T^T W (xi - a W^T T xi'), W = V+ L+^(-1/2), a = sqrt(q) / |(I - P) xi'|,
  two thin products with the banks per block of paths."""
  xi, q = span_normals(basis, key, paths)
  fresh = fresh_normals(basis, key, paths)
  a, c = outside_scale(basis, all_t, mean, fresh, q)
  eps = a[:, None] * fresh + span_combination(all_t, mean, (xi - a[:, None] * c) @ basis.inverse.T)
  return mean + basis.sigma * eps


def fresh_normals(basis: DrawBasis, key: jax.Array, paths: jax.Array) -> jax.Array:
  """xi' (P, d): the normals whose part outside the span becomes the draw's."""
  keys = jax.vmap(lambda p: jax.random.fold_in(jax.random.fold_in(key, p), _KEY_ORTH))(paths.astype(jnp.uint32))
  return jax.vmap(lambda k: standard_normal(k, basis.dim))(keys)


def outside_scale(basis: DrawBasis, all_t, mean, fresh, q) -> tuple[jax.Array, jax.Array]:
  """(a, c): c = W^T T xi' (P, r), so P xi' = T^T W c, and a = sqrt(q) / |(I - P) xi'|."""
  c = jnp.concatenate([fresh @ all_t, (fresh @ mean)[:, None]], axis=1) @ basis.inverse
  outside_sq = jnp.sum(fresh * fresh, -1) - jnp.sum(c * c, -1)
  return jnp.sqrt(q / jnp.maximum(outside_sq, 1.0)), c


def draws_for_paths(basis: DrawBasis, all_t: jax.Array, mean: jax.Array, key: jax.Array, paths) -> jax.Array:
  """``materialise_draws`` in fixed blocks of DRAW_BLOCK paths: a draw never depends on its batch."""
  paths = np.asarray(paths, np.int64)
  out = []
  for s in range(0, len(paths), DRAW_BLOCK):
    blk = paths[s : s + DRAW_BLOCK]
    padded = np.r_[blk, np.zeros(DRAW_BLOCK - len(blk), np.int64)]
    out.append(materialise_draws(basis, all_t, mean, key, jnp.asarray(padded, jnp.uint32))[: len(blk)])
  return jnp.concatenate(out) if out else jnp.zeros((0, basis.dim), jnp.float32)
