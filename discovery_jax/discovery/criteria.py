"""Slerp, the three geometric criteria from inner products, their targets computed
from the banks, and scoring of materialised candidates."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from discovery_jax import parallel
from discovery_jax.discovery.guard import LinearGuard
from discovery_jax.discovery.linalg import (
    ROW_BLOCK,
    SCORE_BLOCK,
    TINY,
    as_rows,
    check_banks,
    gram_small,
    pad_rows,
    rowblock_matmul,
    transpose,
)

CRITERIA = ("distance_id", "angle_origin", "angle_vertex")
REJECTION_REASONS = CRITERIA + ("guard",)


def slerp(x0: Any, x1: Any, t: Any) -> jax.Array:
  """Unit directions slerped, norm interpolated linearly: (..., d), (..., d), (K,) -> (..., K, d)."""
  return _slerp(jnp.asarray(x0, jnp.float32), jnp.asarray(x1, jnp.float32), jnp.asarray(t, jnp.float32))


@jax.jit
def _slerp(x0: jax.Array, x1: jax.Array, t: jax.Array) -> jax.Array:
  n0 = jnp.linalg.norm(x0, axis=-1)
  n1 = jnp.linalg.norm(x1, axis=-1)
  u, v = x0 / n0[..., None], x1 / n1[..., None]
  alpha, beta, nd = slerp_coefficients(jnp.sum(u * v, -1), t)  # (..., K)
  rho = (1 - t) * n0[..., None] + t * n1[..., None]
  return (rho * alpha / nd)[..., None] * u[..., None, :] + (rho * beta / nd)[..., None] * v[..., None, :]


def slerp_coefficients(cos: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(..., K) alpha, beta, nd: the slerp direction is (alpha u + beta v) / nd for unit
  u, v with u.v = cos (...,). The explicit renormalisation nd (= 1 in exact
  arithmetic) keeps directions unit, also where sin(omega) -> 0 and the weights
  fall back to linear ones."""
  cos = jnp.clip(cos, -1.0, 1.0)[..., None]
  omega = jnp.arccos(cos)
  sin = jnp.sin(omega)
  safe = sin > 1e-6
  sin = jnp.where(safe, sin, 1.0)
  alpha = jnp.where(safe, jnp.sin((1 - t) * omega) / sin, 1 - t)
  beta = jnp.where(safe, jnp.sin(t * omega) / sin, t)
  nd = jnp.sqrt(jnp.maximum(alpha**2 + beta**2 + 2 * alpha * beta * cos, TINY))
  return alpha, beta, nd


def criteria_from_dots(
    cc: jax.Array, c_id: jax.Array, id_sq: jax.Array, c_ood: jax.Array, g_ood: jax.Array
) -> jax.Array:
  """(3,) criteria of one candidate from inner products only.

  cc = |c|^2; c_id, id_sq: c.r and |r|^2 of the R ID references; c_ood (R,) and
  g_ood (R, R): c.r and the Gram matrix of the R OOD references. Returns the mean
  distance to the ID references, the mean angle at the origin to the OOD
  references, and the mean angle at c over all R(R-1)/2 pairs of OOD references
  (degrees). (r_j - c).(r_k - c) = G_jk - c.r_j - c.r_k + |c|^2.
  """
  r = c_ood.shape[-1]
  dist = ordered_mean(jnp.sqrt(jnp.maximum(cc + id_sq - 2 * c_id, 0.0)))
  ood_sq = jnp.diagonal(g_ood)
  cos0 = c_ood / jnp.sqrt(jnp.maximum(cc * ood_sq, TINY))
  ang0 = ordered_mean(jnp.degrees(jnp.arccos(jnp.clip(cos0, -1.0, 1.0))))
  m = g_ood - c_ood[:, None] - c_ood[None, :] + cc
  nv = jnp.sqrt(jnp.maximum(jnp.diagonal(m), TINY))
  iu, ju = np.triu_indices(r, 1)
  cosv = m[iu, ju] / (nv[iu] * nv[ju])
  angv = ordered_mean(jnp.degrees(jnp.arccos(jnp.clip(cosv, -1.0, 1.0))))
  return jnp.stack([dist, ang0, angv])


def ordered_mean(x: jax.Array) -> jax.Array:
  """Mean over the last axis by a fixed pairwise tree of elementwise adds: XLA's
  reductions may change their order with the batch size, and results must not."""
  n = x.shape[-1]
  width = 1 << max(n - 1, 0).bit_length()
  x = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (width - n,), x.dtype)], -1)
  while x.shape[-1] > 1:
    half = x.shape[-1] // 2
    x = x[..., :half] + x[..., half:]
  return x[..., 0] / n


criteria_batch = jax.jit(jax.vmap(criteria_from_dots))

# ---------------------------------------------------------------------------
# Targets.


@dataclasses.dataclass(frozen=True)
class Targets:
  """Target value and tolerance of each criterion, computed from the banks."""

  values: tuple[float, float, float]
  tolerances: tuple[float, float, float]
  stds: tuple[float, float, float]
  num_refs: int
  tolerance_scale: float
  num_samples: int
  self_acceptance: float
  draws_per_latent: int = 4
  method: str = (
      "value = mean of the criterion over real OOD latents, each against num_refs random ID latents "
      "and num_refs random OTHER OOD latents (leave-one-out), draws_per_latent draws each; "
      "tolerance = tolerance_scale * std of those samples; self_acceptance = fraction of those real "
      "samples inside all three tolerances"
  )
  names: tuple[str, str, str] = CRITERIA

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["values"], d["tolerances"], d["stds"], d["names"] = (
        list(map(float, self.values)),
        list(map(float, self.tolerances)),
        list(map(float, self.stds)),
        list(self.names),
    )
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "Targets":
    d = dict(d)
    for k in ("values", "tolerances", "stds", "names"):
      if k in d:
        d[k] = tuple(d[k])
    return cls(**d)

  def arrays(self) -> tuple[jax.Array, jax.Array]:
    return jnp.asarray(self.values, jnp.float32), jnp.asarray(self.tolerances, jnp.float32)


def choose(key: jax.Array, n: int, r: int) -> jax.Array:
  """r distinct indices in [0, n), uniformly: the r largest of n uniforms."""
  return jax.lax.top_k(jax.random.uniform(key, (n,)), r)[1].astype(jnp.int32)


def reference_indices(
    key: jax.Array, candidate_index: Any, num_id: int, num_ood: int, num_refs: int
) -> tuple[np.ndarray, np.ndarray]:
  """(ID, OOD) reference indices (n, R) of candidates g of ``discover(..., key=key)``:
  the R largest of N uniforms from ``fold_in(fold_in(key, 2 or 3), g)``."""
  g = jnp.atleast_1d(jnp.asarray(candidate_index, jnp.uint32))
  return tuple(np.asarray(x) for x in _reference_indices(key, g, num_id, num_ood, num_refs))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _reference_indices(key, g, num_id, num_ood, num_refs):
  kid, kood = jax.random.fold_in(key, 2), jax.random.fold_in(key, 3)
  idx_id = jax.vmap(lambda i: choose(jax.random.fold_in(kid, i), num_id, num_refs))(g)
  idx_ood = jax.vmap(lambda i: choose(jax.random.fold_in(kood, i), num_ood, num_refs))(g)
  return idx_id, idx_ood


@dataclasses.dataclass
class BankGeometry:
  """Both banks on the device and the Gram matrix of the stacked set
  S = [ood (No); id (Ni); w; mean(ood); mean(id)]: the only O(N^2 d) setup cost.
  ``all_t`` is S^T (d, No + Ni + 3), laid out for one gemm row per prior draw."""

  ood: jax.Array  # (No, d)
  idb: jax.Array  # (Ni, d)
  all_t: jax.Array  # (d, No + Ni + 3)
  extras: jax.Array  # (3, d): w, mean(ood), mean(id)
  g_all: jax.Array  # (No + Ni + 3,) * 2; the ID-ID block holds only its diagonal unless full_id_gram
  seconds: float

  @classmethod
  def build(
      cls, ood_bank: Any, id_bank: Any, *, w: jax.Array | None = None, full_id_gram: bool = False
  ) -> "BankGeometry":
    start = time.perf_counter()
    ro, ri = as_rows(ood_bank), as_rows(id_bank)
    ood, idb = jnp.asarray(ro), jnp.asarray(ri)
    w = jnp.zeros((ro.shape[1],), jnp.float32) if w is None else jnp.asarray(w, jnp.float32)
    all_t, extras, g_all = stacked_geometry(ood, idb, w, full_id_gram=full_id_gram)
    jax.block_until_ready(g_all)
    return cls(ood, idb, all_t, extras, g_all, time.perf_counter() - start)

  @property
  def num_ood(self) -> int:
    return int(self.ood.shape[0])

  @property
  def num_id(self) -> int:
    return int(self.idb.shape[0])


EXTRAS = 3  # rows of S after the banks: the guard direction w, the OOD mean, the ID mean.


@functools.partial(jax.jit, static_argnames=("full_id_gram",))
def stacked_geometry(ood, idb, w, *, full_id_gram):
  """S^T and the Gram matrix of S = [ood; id; w; mean(ood); mean(id)] (fixed-block gemms)."""
  no, ni = ood.shape[0], idb.shape[0]
  extras = jnp.stack([w, jnp.mean(ood, 0), jnp.mean(idb, 0)])
  stacked = jnp.concatenate([ood, idb, extras])
  all_t = stacked.T
  n_all = no + ni + EXTRAS
  pad = lambda x: jnp.concatenate([x, jnp.zeros(((-x.shape[0]) % ROW_BLOCK, x.shape[1]), x.dtype)])
  if full_id_gram:
    return all_t, extras, rowblock_matmul(pad(stacked), all_t)[:n_all]
  # Rejection needs only |r|^2 of the ID references: their other products meet zero coefficients.
  o_rows = rowblock_matmul(pad(jnp.concatenate([ood, extras])), all_t)[: no + EXTRAS]
  i_rows = jnp.zeros((ni, n_all), jnp.float32).at[:, :no].set(o_rows[:no, no : no + ni].T)
  i_rows = i_rows.at[:, no + ni :].set(o_rows[no:, no : no + ni].T)
  i_rows = i_rows.at[jnp.arange(ni), no + jnp.arange(ni)].set(jnp.sum(idb * idb, -1))
  return all_t, extras, jnp.concatenate([o_rows[:no], i_rows, o_rows[no:]])


@functools.partial(jax.jit, static_argnames=("num_ood", "num_refs", "draws"))
def _target_samples(g_all, key, *, num_ood, num_refs, draws):
  no, ni = num_ood, g_all.shape[0] - num_ood - EXTRAS
  kid, kood = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)

  def one(i, j):
    s = (i * draws + j).astype(jnp.uint32)
    idx_id = no + choose(jax.random.fold_in(kid, s), ni, num_refs)
    idx = choose(jax.random.fold_in(kood, s), no - 1, num_refs)
    idx = idx + (idx >= i)  # leave-one-out: never the latent itself.
    return criteria_from_dots(g_all[i, i], g_all[i, idx_id], g_all[idx_id, idx_id], g_all[i, idx], g_all[idx][:, idx])

  ii, jj = jnp.meshgrid(jnp.arange(no), jnp.arange(draws), indexing="ij")
  return jax.vmap(one)(ii.ravel(), jj.ravel())


def targets_from_geometry(
    geom: BankGeometry, *, num_refs: int, tolerance_scale: float, key: jax.Array, draws_per_latent: int
) -> Targets:
  samples = np.asarray(
      _target_samples(geom.g_all, key, num_ood=geom.num_ood, num_refs=num_refs, draws=draws_per_latent), np.float64
  )
  values, stds = samples.mean(0), samples.std(0, ddof=1)
  tol = tolerance_scale * stds
  inside = np.all(np.abs(samples - values) <= tol, axis=1)
  return Targets(
      tuple(map(float, values)),
      tuple(map(float, tol)),
      tuple(map(float, stds)),
      int(num_refs),
      float(tolerance_scale),
      int(samples.shape[0]),
      float(inside.mean()),
      int(draws_per_latent),
  )


def compute_targets(
    ood_bank: Any,
    id_bank: Any,
    *,
    num_refs: int = 10,
    tolerance_scale: float = 1.0,
    key: jax.Array,
    draws_per_latent: int = 4,
) -> Targets:
  """Targets and tolerances of the three criteria from the banks in use.

  For each real OOD latent i and draw j (sample s = i * draws + j; references from
  ``fold_in(fold_in(key, 0 or 1), s)``), the criteria are evaluated with i as the
  candidate against ``num_refs`` random ID latents and ``num_refs`` random OOD
  latents other than i. value = mean over all
  samples, tolerance = ``tolerance_scale`` * their std; ``self_acceptance`` is the
  fraction of those real samples inside all three tolerances (a calibration number:
  the rate a perfect sampler could reach).
  """
  check_banks(ood_bank, id_bank, num_refs=num_refs)
  if not tolerance_scale > 0:
    raise ValueError(f"tolerance_scale must be > 0, got {tolerance_scale}")
  geom = BankGeometry.build(ood_bank, id_bank)
  return targets_from_geometry(
      geom, num_refs=num_refs, tolerance_scale=tolerance_scale, key=key, draws_per_latent=draws_per_latent
  )


# ---------------------------------------------------------------------------
# Scoring materialised candidates.


def accept(stats, logit, values, tols, guard_margin):
  passed = jnp.concatenate([jnp.abs(stats - values) <= tols, (logit >= guard_margin)[..., None]], -1)
  return passed, jnp.all(passed, -1)


@functools.partial(jax.jit, static_argnames=("num_refs", "has_guard"))
def _score_shared(c, refs_t, gram_refs, values, tols, b, guard_margin, *, num_refs, has_guard):
  """refs_t = [id refs; ood refs; w]^T (d, 2R+1): one gemm pass over the candidates.
  gram_refs (computed once, outside: inside it could compile differently per chunk size)."""
  r = num_refs
  dots = rowblock_matmul(c, refs_t, SCORE_BLOCK)
  cc = jnp.sum(c * c, -1)
  n = c.shape[0]
  stats = jax.vmap(criteria_from_dots, in_axes=(0, 0, None, 0, None))(
      cc, dots[:, :r], jnp.diagonal(gram_refs)[:r], dots[:, r : 2 * r], gram_refs[r : 2 * r, r : 2 * r]
  )
  logit = dots[:, -1] + b if has_guard else jnp.full((n,), jnp.inf)
  return stats, logit, *accept(stats, logit, values, tols, guard_margin)


@functools.partial(jax.jit, static_argnames=("num_refs", "has_guard"))
def _score_per_candidate(c, refs, w, values, tols, b, guard_margin, *, num_refs, has_guard):
  """refs (B, 2R, d): [id refs; ood refs] of each candidate."""
  r = num_refs
  dots = jnp.einsum("bd,brd->br", c, refs)
  g = jnp.einsum("brd,bsd->brs", refs[:, r:], refs[:, r:])
  id_sq = jnp.sum(refs[:, :r] * refs[:, :r], -1)
  stats = jax.vmap(criteria_from_dots)(jnp.sum(c * c, -1), dots[:, :r], id_sq, dots[:, r:], g)
  logit = jnp.sum(c * w, -1) + b if has_guard else jnp.full(c.shape[:1], jnp.inf)
  return stats, logit, *accept(stats, logit, values, tols, guard_margin)


def score_candidates(
    candidates: Any,
    id_refs: Any,
    ood_refs: Any,
    targets: Targets,
    *,
    guard: LinearGuard | None = None,
    guard_margin: float = 0.0,
    chunk_size: int = 256,
    mesh: Any = None,
) -> dict:
  """Scores materialised candidates (B, ...) against references.

  ``id_refs``/``ood_refs``: (R, ...) shared by every candidate, or (B, R, ...) one
  set per candidate. Candidates may be numpy (streamed chunk by chunk) or jax
  arrays. Processed in jitted chunks of ``chunk_size`` (results do not depend on
  it); with ``mesh`` each chunk is sharded over its data axis (references
  replicated) and every device scores its rows. Returns numpy arrays: stats (B, 3), deviation = stats - target (B, 3),
  normalised = deviation / tolerance, passed (B, 4: the criteria then the guard),
  guard_logit (B,), accepted (B,).
  """
  on_device = isinstance(candidates, jax.Array)
  c = candidates.reshape(candidates.shape[0], -1).astype(jnp.float32) if on_device else as_rows(candidates)
  b_total, d = c.shape
  cand_ndim = np.ndim(candidates)
  id_refs, ood_refs = np.asarray(id_refs, np.float32), np.asarray(ood_refs, np.float32)
  if id_refs.ndim != ood_refs.ndim or id_refs.ndim not in (cand_ndim, cand_ndim + 1):
    raise ValueError(
        f"references must be (R, ...) shared or (B, R, ...) per candidate for candidates "
        f"{np.shape(candidates)}; got ID {id_refs.shape}, OOD {ood_refs.shape}"
    )
  shared = id_refs.ndim == cand_ndim
  lead = () if shared else (b_total,)
  if not shared and (id_refs.shape[0] != b_total or ood_refs.shape[0] != b_total):
    raise ValueError(f"per-candidate references need {b_total} sets, got {id_refs.shape[0]}, {ood_refs.shape[0]}")
  id_refs = id_refs.reshape(lead + (id_refs.shape[len(lead)], -1))
  ood_refs = ood_refs.reshape(lead + (ood_refs.shape[len(lead)], -1))
  r = id_refs.shape[-2]
  if ood_refs.shape[-2] != r:
    raise ValueError(f"ID and OOD reference counts differ: {r} vs {ood_refs.shape[-2]}")
  if id_refs.shape[-1] != d or ood_refs.shape[-1] != d:
    raise ValueError(f"candidate size {d} differs from reference sizes {id_refs.shape[-1]}, {ood_refs.shape[-1]}")
  if r < 2:
    raise ValueError("the vertex angle needs at least 2 OOD references")
  values, tols = targets.arrays()
  w = guard.w if guard is not None else jnp.zeros((d,), jnp.float32)
  gb = guard.b if guard is not None else jnp.zeros((), jnp.float32)
  margin = jnp.float32(guard_margin)
  unit = SCORE_BLOCK * parallel.data_size(mesh)  # whole row blocks on every device.
  chunk = max(unit, -(-int(chunk_size) // unit) * unit)
  place = (lambda x: parallel.shard_batch(x, mesh)) if mesh is not None else jnp.asarray
  if shared:
    refs_t = transpose(jnp.concatenate([jnp.asarray(id_refs), jnp.asarray(ood_refs), w[None]]))
    gram_refs = gram_small(refs_t)
  outs = []
  for s in range(0, b_total, chunk):
    blk, n = pad_rows(c[s : s + chunk] if on_device else np.asarray(c[s : s + chunk]), chunk)
    if shared:
      out = _score_shared(
          place(blk), refs_t, gram_refs, values, tols, gb, margin, num_refs=r, has_guard=guard is not None
      )
    else:
      refs, _ = pad_rows(np.concatenate([id_refs[s : s + chunk], ood_refs[s : s + chunk]], 1), chunk)
      out = _score_per_candidate(
          place(blk), place(refs), w, values, tols, gb, margin, num_refs=r, has_guard=guard is not None
      )
    outs.append([np.asarray(o)[:n] for o in out])
  stats, logit, passed, accepted = (np.concatenate(x) for x in zip(*outs))
  dev = stats - np.asarray(targets.values)
  return {
      "stats": stats,
      "deviation": dev,
      "normalised": dev / np.asarray(targets.tolerances),
      "passed": passed,
      "guard_logit": logit,
      "accepted": accepted,
  }
