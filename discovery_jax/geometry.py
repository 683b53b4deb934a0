"""Latent geometry and latent discovery (METHOD.md steps 4-7) as pure array code.

A *bank* is an array of N latents of shape (N, H, W, C) (or already flat, (N, d));
numpy memmaps are streamed in row blocks, never copied whole except where a
jitted kernel needs the bank on the device (``discover``, ``compute_targets``,
the right-hand side of ``gram``): one float32 copy per bank.

Everything geometric is computed from inner products. A candidate ``c`` and its
references ``r_j`` enter the three criteria only through ``|c|^2``, ``c . r_j``
and the references' Gram matrix, so:

* bank statistics come from (streamed) Gram matrices;
* a slerp candidate ``c = rho (alpha u_hat + beta v_hat)`` between an OOD latent
  ``u`` and a prior draw ``v`` has ``c . x = rho (alpha u.x/|u| + beta v.x/|v|)``:
  scoring the 20 candidates of a path costs two rows of dot products with the
  banks (one gemm row per path against the whole bank: per-candidate random
  references cost nothing extra), never a materialised candidate;
* the optimisation mode represents a candidate by coefficients over a small basis
  ``[v, u, its 2R references, guard direction w, mean(ood), mean(id)]`` whose Gram
  matrix is a gather from the banks' Gram matrix (the gradient of any function of
  the inner products lies in that span), so Adam runs on 2R+5 numbers per
  candidate instead of d; by default only the 5 global directions move.

Keys: every random choice of candidate ``g`` (its prior draw, its references) is
``fold_in`` of a named sub-key and its global index; every matmul runs on fixed
blocks of rows and every small mean is a fixed tree of adds, so results never
depend on chunk or batch size (bitwise; tested).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Iterator

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax

from discovery_jax import parallel

CRITERIA = ("distance_id", "angle_origin", "angle_vertex")
REJECTION_REASONS = CRITERIA + ("guard",)
_ROW_BLOCK = 32  # rows per fixed-shape matmul: a row's result never depends on the batch.
_MAT_BLOCK = 32  # accepted latents materialised per call.
_SCORE_BLOCK = 256  # materialised candidates per fixed-shape matmul in score_candidates.
_STREAM_ROWS = 128  # rows per streamed block of a bank (100 MB at d = 196,608).
_TINY = 1e-30

# ---------------------------------------------------------------------------
# Inputs.


def as_rows(bank: Any) -> np.ndarray:
  """(N, ...) -> (N, d) float32 view (a memmap stays a memmap; copies only to cast)."""
  a = bank if isinstance(bank, np.ndarray) else np.asarray(bank)
  if a.ndim < 2:
    raise ValueError(f"a bank must have shape (N, ...) with at least 2 dimensions, got {a.shape}")
  rows = a.reshape(a.shape[0], -1)
  return rows if rows.dtype == np.float32 else rows.astype(np.float32)


def _latent_shape(bank: Any) -> tuple[int, ...]:
  return tuple(np.shape(bank)[1:])


def check_banks(ood_bank: Any, id_bank: Any | None = None, *, num_refs: int | None = None) -> None:
  """Raises ValueError for mismatched latent shapes or banks too small for ``num_refs``."""
  if np.ndim(ood_bank) < 2:
    raise ValueError(f"the OOD bank must have shape (N, ...), got {np.shape(ood_bank)}")
  if id_bank is not None:
    if np.ndim(id_bank) < 2:
      raise ValueError(f"the ID bank must have shape (N, ...), got {np.shape(id_bank)}")
    a, b = _latent_shape(ood_bank), _latent_shape(id_bank)
    if int(np.prod(a)) != int(np.prod(b)) or (len(a) > 1 and len(b) > 1 and a != b):
      raise ValueError(f"latent shapes differ: OOD bank latents have shape {a}, ID bank latents {b}")
  if num_refs is not None:
    if num_refs < 2:
      raise ValueError(f"num_refs must be >= 2 (the vertex angle needs pairs of references), got {num_refs}")
    n = np.shape(ood_bank)[0]
    if n < num_refs + 1:
      raise ValueError(f"the OOD bank has {n} latents; num_refs={num_refs} needs at least {num_refs + 1} "
                       f"(each real latent is compared with {num_refs} OTHER latents, leave-one-out)")
    if id_bank is not None and np.shape(id_bank)[0] < num_refs:
      raise ValueError(f"the ID bank has {np.shape(id_bank)[0]} latents; num_refs={num_refs} needs at least "
                       f"{num_refs}")


def _blocks(rows: np.ndarray, block: int = _STREAM_ROWS) -> Iterator[tuple[int, np.ndarray]]:
  for start in range(0, rows.shape[0], block):
    yield start, np.asarray(rows[start:start + block], np.float32)


def _pad_rows(x: np.ndarray | jax.Array, multiple: int) -> tuple[Any, int]:
  n = x.shape[0]
  pad = (-n) % multiple
  if pad:
    x = (jnp if isinstance(x, jax.Array) else np).concatenate(
        [x, (jnp if isinstance(x, jax.Array) else np).zeros((pad,) + x.shape[1:], x.dtype)])
  return x, n


def _rowblock_matmul(x: jax.Array, yt: jax.Array, block: int = _ROW_BLOCK) -> jax.Array:
  """``x @ yt`` for yt of shape (d, N), on fixed (block, d) blocks of x (its rows a
  multiple of block). XLA's gemm result for a row changes bitwise with the number
  of rows, and ``x @ y.T`` re-transposes y on every call (4x slower on CPU): callers
  keep banks transposed once (``_transpose``). One block (no loop) is the fast path."""
  blocks = x.reshape(-1, block, x.shape[-1])
  return jax.lax.map(lambda b: b @ yt, blocks).reshape(x.shape[0], yt.shape[1])


_matmul = jax.jit(_rowblock_matmul)
_transpose = jax.jit(lambda y: y.T)
_gram_small = jax.jit(lambda yt: yt.T @ yt)


def _matmul_rows(x: jax.Array | np.ndarray, yt: jax.Array) -> jax.Array:
  """``x @ yt`` for any number of rows (padded to whole blocks)."""
  padded, n = _pad_rows(x, _ROW_BLOCK)
  return _matmul(jnp.asarray(padded), yt)[:n]

# ---------------------------------------------------------------------------
# Priors.


@functools.partial(jax.tree_util.register_dataclass, data_fields=["mean", "var"],
                   meta_fields=["kind", "shape", "num_latents"])
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
    return {"kind": self.kind, "dim": self.dim, "num_latents": self.num_latents, "sigma": self.sigma,
            "mean_norm": float(np.linalg.norm(np.asarray(self.mean, np.float64))),
            "shell_radius": self.shell_radius()}


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
  for _, b in _blocks(rows):
    total += b.sum(0, dtype=np.float64)
  mean = total / n
  sq = np.zeros_like(mean)
  for _, b in _blocks(rows):
    sq += np.square(b - mean).sum(0)
  var = sq / (n - 1)
  var = np.float32(var.mean()) if kind == "pooled" else var.astype(np.float32)
  return GaussianPrior(jnp.asarray(mean, jnp.float32), jnp.asarray(var), kind, _latent_shape(latents), n)


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
def _sample_prior(prior: GaussianPrior, key: jax.Array, index: jax.Array) -> jax.Array:
  z = jax.vmap(lambda i: standard_normal(jax.random.fold_in(key, i), prior.dim))(index)
  return prior.mean + jnp.sqrt(prior.var) * z


def sample_prior(prior: GaussianPrior, key: jax.Array, sample_index: Any) -> jax.Array:
  """Draws (n, d): draw i is ``mean + sqrt(var) * standard_normal(fold_in(key, sample_index[i]))``,
  so it never depends on which batch or device produced it."""
  index = jnp.atleast_1d(jnp.asarray(sample_index, jnp.uint32))
  return _sample_prior(prior, key, index)


def gaussian_geometry(dim: int, sigma: float = 1.0) -> dict:
  """What an isotropic N(0, sigma^2 I_d) predicts (METHOD.md step 5)."""
  return {"dim": int(dim), "sigma": float(sigma), "shell_radius": math.sqrt(dim) * sigma,
          "pairwise_distance": math.sqrt(2 * dim) * sigma, "angle_origin_deg": 90.0,
          "angle_vertex_deg": 60.0, "angle_origin_std_deg": math.degrees(1 / math.sqrt(dim))}

# ---------------------------------------------------------------------------
# Bank statistics (streamed).


def norms(bank: Any) -> np.ndarray:
  """(N,) Euclidean norms, float64."""
  rows = as_rows(bank)
  out = np.empty(rows.shape[0], np.float64)
  for s, b in _blocks(rows):
    out[s:s + len(b)] = np.sqrt(np.square(b, dtype=np.float64).sum(1))
  return out


def bank_mean(bank: Any) -> np.ndarray:
  """(d,) float64 mean, streamed."""
  rows = as_rows(bank)
  total = np.zeros(rows.shape[1], np.float64)
  for _, b in _blocks(rows):
    total += b.sum(0, dtype=np.float64)
  return total / rows.shape[0]


def gram(a: Any, b: Any | None = None) -> np.ndarray:
  """``a @ b.T`` (float64 result of float32 products): a is streamed, b copied to
  the device once (b = a when None)."""
  ra = as_rows(a)
  rb_t = _transpose(jnp.asarray(as_rows(a if b is None else b)))
  if ra.shape[1] != rb_t.shape[0]:
    raise ValueError(f"latent sizes differ: {ra.shape[1]} vs {rb_t.shape[0]}")
  out = np.empty((ra.shape[0], rb_t.shape[1]), np.float64)
  for s, blk in _blocks(ra):
    out[s:s + len(blk)] = np.asarray(_matmul_rows(blk, rb_t))
  return out


def _dist_from_gram(g: np.ndarray, na2: np.ndarray, nb2: np.ndarray) -> np.ndarray:
  return np.sqrt(np.maximum(na2[:, None] + nb2[None, :] - 2 * g, 0.0))


def _angle_from_gram(g: np.ndarray, na2: np.ndarray, nb2: np.ndarray) -> np.ndarray:
  cos = g / np.sqrt(np.maximum(na2[:, None] * nb2[None, :], _TINY))
  return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def pairwise_distances(a: Any, b: Any | None = None) -> np.ndarray:
  """(Na, Nb) Euclidean distances via the Gram matrix (zero diagonal when b is None)."""
  g = gram(a, b)
  na2 = norms(a) ** 2
  out = _dist_from_gram(g, na2, na2 if b is None else norms(b) ** 2)
  if b is None:
    np.fill_diagonal(out, 0.0)
  return out


def angles_at_origin(a: Any, b: Any | None = None) -> np.ndarray:
  """(Na, Nb) angles in degrees between latents seen from the origin."""
  g = gram(a, b)
  na2 = norms(a) ** 2
  out = _angle_from_gram(g, na2, na2 if b is None else norms(b) ** 2)
  if b is None:
    np.fill_diagonal(out, 0.0)
  return out


def _vertex_from_gram(g: np.ndarray, triples: np.ndarray) -> np.ndarray:
  i, j, k = triples[:, 0], triples[:, 1], triples[:, 2]
  dot = g[j, k] - g[i, j] - g[i, k] + g[i, i]
  nj = g[j, j] - 2 * g[i, j] + g[i, i]
  nk = g[k, k] - 2 * g[i, k] + g[i, i]
  cos = dot / np.sqrt(np.maximum(nj * nk, _TINY))
  return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def angles_at_vertex(bank: Any, triples: Any) -> np.ndarray:
  """(T,) angles in degrees at latent i between latents j and k, for rows (i, j, k)."""
  triples = np.asarray(triples, np.int64)
  if triples.ndim != 2 or triples.shape[1] != 3:
    raise ValueError(f"triples must have shape (T, 3), got {triples.shape}")
  rows = as_rows(bank)
  used, inverse = np.unique(triples, return_inverse=True)
  g = gram(rows[used])
  return _vertex_from_gram(g, inverse.reshape(triples.shape))


def random_triples(n: int, num: int, seed: int = 0) -> np.ndarray:
  """(num, 3) triples of distinct indices in [0, n)."""
  if n < 3:
    raise ValueError(f"triples need at least 3 latents, got {n}")
  rng = np.random.default_rng(seed)
  return np.stack([rng.choice(n, 3, replace=False) for _ in range(num)])


def centre_distance(a: Any, b: Any) -> float:
  """|mean(a) - mean(b)| (means streamed in float64; not debiased, see ``separability``)."""
  check_banks(a, b)
  return float(np.linalg.norm(bank_mean(a) - bank_mean(b)))


def _mean_std(x: np.ndarray) -> dict:
  x = np.asarray(x, np.float64)
  return {"mean": float(x.mean()), "std": float(x.std())} if x.size else {"mean": float("nan"), "std": float("nan")}


def _describe_from_gram(g: np.ndarray, num_triples: int, seed: int) -> dict:
  n = g.shape[0]
  n2 = np.diag(g).copy()
  iu = np.triu_indices(n, 1)
  out = {"num_latents": int(n), "norm": _mean_std(np.sqrt(np.maximum(n2, 0))),
         "pairwise_distance": _mean_std(_dist_from_gram(g, n2, n2)[iu]),
         "angle_origin_deg": _mean_std(_angle_from_gram(g, n2, n2)[iu])}
  if n >= 3 and num_triples > 0:
    out["angle_vertex_deg"] = _mean_std(_vertex_from_gram(g, random_triples(n, num_triples, seed)))
  return out


def describe_bank(bank: Any, *, num_triples: int = 2000, seed: int = 0) -> dict:
  """Mean/std of norms, pairwise distances, angles at the origin and at a vertex
  (``num_triples`` random triples), plus what an isotropic Gaussian with the
  bank's pooled variance predicts."""
  g = gram(bank)
  out = _describe_from_gram(g, num_triples, seed)
  out["dim"] = int(as_rows(bank).shape[1])
  prior = fit_prior(bank) if out["num_latents"] >= 2 else None
  if prior is not None:
    out["isotropic_prediction"] = gaussian_geometry(out["dim"], prior.sigma)
  return out


def norm_vs_chi(bank: Any, prior: GaussianPrior | None = None, *, prior_from_bank: bool = True) -> dict:
  """Standardised residual norms ``|(x - mean) / sqrt(var)|`` against chi(d).

  When the prior's mean was estimated from these same N latents the residuals have
  variance (N-1)/N per dimension, so the norms are rescaled by sqrt(N/(N-1))
  (``prior_from_bank``). Returns the KS test against chi(d) and observed vs
  predicted mean/std of the norms, and the raw norms vs the prior's shell radius.
  """
  from scipy import stats as sps

  rows = as_rows(bank)
  prior = prior or fit_prior(rows)
  if prior.dim != rows.shape[1]:
    raise ValueError(f"prior dimension {prior.dim} != latent size {rows.shape[1]}")
  n, d = rows.shape
  mean = np.asarray(prior.mean, np.float64)
  inv_std = 1.0 / np.sqrt(np.asarray(prior.var, np.float64))
  r = np.empty(n, np.float64)
  for s, b in _blocks(rows):
    r[s:s + len(b)] = np.sqrt(np.square((b - mean) * inv_std).sum(1))
  if prior_from_bank:
    r *= math.sqrt(n / (n - 1))
  chi = sps.chi(df=d)
  ks = sps.kstest(r, chi.cdf)
  raw = norms(rows)
  return {"num_latents": int(n), "dim": int(d), "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
          "observed_mean": float(r.mean()), "observed_std": float(r.std(ddof=1)) if n > 1 else float("nan"),
          "chi_mean": float(chi.mean()), "chi_std": float(chi.std()),
          "raw_norm_mean": float(raw.mean()), "prior_shell_radius": prior.shell_radius()}

# ---------------------------------------------------------------------------
# Claims of the paper (METHOD.md step 4).


def gaussianity(bank: Any, *, num_dims: int = 1000, seed: int = 0, alpha: float = 0.05,
                return_pvalues: bool = False) -> dict:
  """Per-dimension normality tests on ``num_dims`` random dimensions (seeded).

  D'Agostino-Pearson (scipy ``normaltest``) when N >= 20, Shapiro-Wilk below.
  Under Gaussianity about ``alpha`` of the dimensions reject; ``binomial_pvalue``
  is the one-sided probability of at least that many rejections. With
  ``return_pvalues`` the per-dimension p-values (uniform under Gaussianity) come
  back as ``pvalues`` (a numpy array: pop it before writing JSON).
  """
  from scipy import stats as sps

  rows = as_rows(bank)
  n, d = rows.shape
  if n < 3:
    raise ValueError(f"normality tests need at least 3 latents, got {n}")
  dims = np.sort(np.random.default_rng(seed).choice(d, min(num_dims, d), replace=False))
  x = np.asarray(rows[:, dims], np.float64)
  if n >= 20:
    name, p = "normaltest", sps.normaltest(x, axis=0).pvalue
  else:
    name, p = "shapiro", np.array([sps.shapiro(x[:, j]).pvalue for j in range(x.shape[1])])
  k = int(np.sum(p < alpha))
  return {"test": name, "num_latents": int(n), "num_dims": int(len(dims)), "alpha": float(alpha),
          "fraction_rejected": k / len(dims), "expected_fraction": float(alpha),
          "binomial_pvalue": float(sps.binomtest(k, len(dims), alpha, alternative="greater").pvalue),
          "median_pvalue": float(np.median(p)),
          "mean_skew": float(np.mean(sps.skew(x, axis=0))),
          "mean_excess_kurtosis": float(np.mean(sps.kurtosis(x, axis=0))),
          **({"pvalues": np.asarray(p, np.float64)} if return_pvalues else {})}


def _stacked_gram(ro: np.ndarray, ri: np.ndarray) -> np.ndarray:
  """Gram matrix of [ood; id] without concatenating the banks."""
  g_oi = gram(ro, ri)
  return np.block([[gram(ro), g_oi], [g_oi.T, gram(ri)]])


def _span_features(g: np.ndarray, train: np.ndarray, rel_eps: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
  """Coordinates of every point in an orthonormal basis of span(x_train), from the
  Gram matrix alone: K_TT = U S U^T, f(x) = S^-1/2 U^T (X_T x). Also returns the
  map U S^-1/2 (basis vectors as combinations of training points)."""
  s, u = np.linalg.eigh(g[np.ix_(train, train)])
  keep = s > rel_eps * s.max()
  m = u[:, keep] / np.sqrt(s[keep])
  return g[:, train] @ m, m


def separability(ood_bank: Any, id_bank: Any, *, num_folds: int = 5, seed: int = 0, C: float = 1.0) -> dict:
  """Centre distance vs the d^(1/4) scale, and held-out linear-classifier accuracy.

  Centre distance: |m_ood - m_id|^2 is biased up by tr(S_ood)/N_ood + tr(S_id)/N_id
  (the noise of the two sample means); ``centre_distance_debiased`` removes it.
  Scale: for two N(mu_k, sigma^2 I_d), |x - y|^2 between domains exceeds the
  within-domain value 2 d sigma^2 by D^2, while |x - y|^2 fluctuates with std
  sqrt(8 d) sigma^2; pairs are told apart by distance once D^2 > sqrt(8 d) sigma^2,
  i.e. D > 8^(1/4) d^(1/4) sigma (the d^(1/4) law). Reported: ``d_quarter_ratio`` =
  D / (sigma d^(1/4)) and ``distance_gap_z`` = D^2 / (sqrt(8 d) sigma^2), with sigma^2
  the mean of the two pooled variances.

  Classifier: L2 logistic regression, stratified k-fold. By the representer theorem
  its weight vector lies in the span of the training latents, so it is fitted
  EXACTLY on coordinates in that span (from the Gram matrix), not on a lossy random
  projection. Also the held-out accuracy of the nearest class mean.
  """
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import StratifiedKFold

  check_banks(ood_bank, id_bank)
  ro, ri = as_rows(ood_bank), as_rows(id_bank)
  no, ni, d = ro.shape[0], ri.shape[0], ro.shape[1]
  if min(no, ni) < max(2, num_folds):
    raise ValueError(f"separability with num_folds={num_folds} needs at least {max(2, num_folds)} latents per "
                     f"bank, got OOD {no}, ID {ni}")
  po, pi = fit_prior(ro), fit_prior(ri)
  dist = float(np.linalg.norm(np.asarray(po.mean, np.float64) - np.asarray(pi.mean, np.float64)))
  var_o, var_i = po.sigma ** 2, pi.sigma ** 2
  d2_unbiased = dist ** 2 - d * var_o / no - d * var_i / ni
  sigma = math.sqrt((var_o + var_i) / 2)
  debiased = math.sqrt(max(d2_unbiased, 0.0))

  g = _stacked_gram(ro, ri)
  g = g / np.mean(np.diag(g))
  y = np.r_[np.ones(no, int), np.zeros(ni, int)]
  folds = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
  acc, acc_centroid = [], []
  for train, test in folds.split(np.zeros(len(y)), y):
    f, _ = _span_features(g, train)
    clf = LogisticRegression(C=C, max_iter=2000).fit(f[train], y[train])
    acc.append(clf.score(f[test], y[test]))
    # Nearest class mean: |x - m_k|^2 = |x|^2 - 2 x.m_k + |m_k|^2, all from the Gram matrix.
    to, ti = train[y[train] == 1], train[y[train] == 0]
    score = lambda idx: -2 * g[:, idx].mean(1) + g[np.ix_(idx, idx)].mean()
    pred = (score(to) < score(ti)).astype(int)
    acc_centroid.append(float(np.mean(pred[test] == y[test])))
  return {"dim": int(d), "num_ood": int(no), "num_id": int(ni), "sigma_ood": po.sigma, "sigma_id": pi.sigma,
          "centre_distance": dist, "centre_distance_sq_unbiased": float(d2_unbiased),
          "centre_distance_debiased": debiased, "d_quarter_scale": sigma * d ** 0.25,
          "d_quarter_ratio": debiased / (sigma * d ** 0.25),
          "distance_gap_z": float(d2_unbiased / (math.sqrt(8 * d) * sigma ** 2)),
          "classifier": "logistic regression (L2, C=%g) on exact span-of-training coordinates" % C,
          "num_folds": int(num_folds), "heldout_accuracy": float(np.mean(acc)),
          "heldout_accuracy_std": float(np.std(acc)), "nearest_mean_accuracy": float(np.mean(acc_centroid)),
          "chance_accuracy": max(no, ni) / (no + ni)}

# ---------------------------------------------------------------------------
# Mode-interference guard (METHOD.md step 7).


@functools.partial(jax.tree_util.register_dataclass, data_fields=["w", "b", "scale"], meta_fields=["kind"])
@dataclasses.dataclass(frozen=True)
class LinearGuard:
  """logit(x) = w . x + b: > 0 on the OOD side. ``scale``: std of the OOD bank's logits."""

  w: jax.Array  # (d,)
  b: jax.Array  # ()
  scale: jax.Array  # ()
  kind: str


def guard_logits(guard: LinearGuard, x: jax.Array) -> jax.Array:
  """(n,) logits of flattened latents (n, d); pure, usable under jit."""
  return jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1) @ guard.w + guard.b


def _project(rows: np.ndarray, w: np.ndarray) -> np.ndarray:
  out = np.empty(rows.shape[0], np.float64)
  for s, b in _blocks(rows):
    out[s:s + len(b)] = b.astype(np.float64) @ w
  return out


def fit_guard(ood_bank: Any, id_bank: Any, *, kind: str = "mean_diff", C: float = 1.0) -> LinearGuard:
  """A linear ID-vs-OOD classifier used to reject candidates landing on the ID side.

  'mean_diff': w = unit(m_ood - m_id), threshold at the midpoint of the two means
  (Fisher's discriminant under the method's own isotropic pooled-variance model).
  'logistic': L2 logistic regression fitted exactly in the span of the bank
  latents (see ``separability``); w is that combination of latents.
  """
  check_banks(ood_bank, id_bank)
  ro, ri = as_rows(ood_bank), as_rows(id_bank)
  if kind == "mean_diff":
    mo, mi = bank_mean(ro), bank_mean(ri)
    diff = mo - mi
    nrm = np.linalg.norm(diff)
    if not nrm > 0:
      raise ValueError("the OOD and ID bank means coincide: no mean-difference direction")
    w = diff / nrm
    b = -w @ (mo + mi) / 2
  elif kind == "logistic":
    from sklearn.linear_model import LogisticRegression

    no = ro.shape[0]
    g = _stacked_gram(ro, ri)
    scale = np.mean(np.diag(g))
    f, m = _span_features(g / scale, np.arange(g.shape[0]))
    y = np.r_[np.ones(no, int), np.zeros(ri.shape[0], int)]
    clf = LogisticRegression(C=C, max_iter=2000).fit(f, y)
    alpha = (m @ clf.coef_[0]) / scale  # logit = coef . f(x), f(x) = (X_T x / scale) m  =>  w = X^T alpha
    w = np.zeros(ro.shape[1], np.float64)
    for rows, a in ((ro, alpha[:no]), (ri, alpha[no:])):
      for s, blk in _blocks(rows):
        w += a[s:s + len(blk)] @ blk.astype(np.float64)
    b = float(clf.intercept_[0])
  else:
    raise ValueError(f"guard kind must be 'mean_diff' or 'logistic', got {kind!r}")
  scale = float(np.std(_project(ro, w) + b)) or 1.0
  return LinearGuard(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32), jnp.asarray(scale, jnp.float32), kind)

# ---------------------------------------------------------------------------
# Slerp and the three criteria.


def slerp(x0: Any, x1: Any, t: Any) -> jax.Array:
  """Unit directions slerped, norm interpolated linearly: (..., d), (..., d), (K,) -> (..., K, d)."""
  return _slerp(jnp.asarray(x0, jnp.float32), jnp.asarray(x1, jnp.float32), jnp.asarray(t, jnp.float32))


@jax.jit
def _slerp(x0: jax.Array, x1: jax.Array, t: jax.Array) -> jax.Array:
  n0 = jnp.linalg.norm(x0, axis=-1)
  n1 = jnp.linalg.norm(x1, axis=-1)
  u, v = x0 / n0[..., None], x1 / n1[..., None]
  alpha, beta, nd = _slerp_coefficients(jnp.sum(u * v, -1), t)  # (..., K)
  rho = (1 - t) * n0[..., None] + t * n1[..., None]
  return (rho * alpha / nd)[..., None] * u[..., None, :] + (rho * beta / nd)[..., None] * v[..., None, :]


def _slerp_coefficients(cos: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
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
  nd = jnp.sqrt(jnp.maximum(alpha ** 2 + beta ** 2 + 2 * alpha * beta * cos, _TINY))
  return alpha, beta, nd


def _criteria(cc: jax.Array, c_id: jax.Array, id_sq: jax.Array, c_ood: jax.Array, g_ood: jax.Array) -> jax.Array:
  """(3,) criteria of one candidate from inner products only.

  cc = |c|^2; c_id, id_sq: c.r and |r|^2 of the R ID references; c_ood (R,) and
  g_ood (R, R): c.r and the Gram matrix of the R OOD references. Returns the mean
  distance to the ID references, the mean angle at the origin to the OOD
  references, and the mean angle at c over all R(R-1)/2 pairs of OOD references
  (degrees). (r_j - c).(r_k - c) = G_jk - c.r_j - c.r_k + |c|^2.
  """
  r = c_ood.shape[-1]
  dist = _ordered_mean(jnp.sqrt(jnp.maximum(cc + id_sq - 2 * c_id, 0.0)))
  ood_sq = jnp.diagonal(g_ood)
  cos0 = c_ood / jnp.sqrt(jnp.maximum(cc * ood_sq, _TINY))
  ang0 = _ordered_mean(jnp.degrees(jnp.arccos(jnp.clip(cos0, -1.0, 1.0))))
  m = g_ood - c_ood[:, None] - c_ood[None, :] + cc
  nv = jnp.sqrt(jnp.maximum(jnp.diagonal(m), _TINY))
  iu, ju = np.triu_indices(r, 1)
  cosv = m[iu, ju] / (nv[iu] * nv[ju])
  angv = _ordered_mean(jnp.degrees(jnp.arccos(jnp.clip(cosv, -1.0, 1.0))))
  return jnp.stack([dist, ang0, angv])


def _ordered_mean(x: jax.Array) -> jax.Array:
  """Mean over the last axis by a fixed pairwise tree of elementwise adds: XLA's
  reductions may change their order with the batch size, and results must not."""
  n = x.shape[-1]
  width = 1 << max(n - 1, 0).bit_length()
  x = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (width - n,), x.dtype)], -1)
  while x.shape[-1] > 1:
    half = x.shape[-1] // 2
    x = x[..., :half] + x[..., half:]
  return x[..., 0] / n


_criteria_batch = jax.jit(jax.vmap(_criteria))


def criteria_numpy(candidate: np.ndarray, id_refs: np.ndarray, ood_refs: np.ndarray) -> np.ndarray:
  """The three criteria computed directly in float64 (reference implementation)."""
  c = np.asarray(candidate, np.float64).ravel()
  idr = np.asarray(id_refs, np.float64).reshape(len(id_refs), -1)
  oor = np.asarray(ood_refs, np.float64).reshape(len(ood_refs), -1)
  ang = lambda a, b: math.degrees(math.acos(max(-1.0, min(1.0, a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))))
  dist = np.mean([np.linalg.norm(c - r) for r in idr])
  ang0 = np.mean([ang(c, r) for r in oor])
  vecs = oor - c
  angv = np.mean([ang(vecs[j], vecs[k]) for j in range(len(oor)) for k in range(j + 1, len(oor))])
  return np.array([dist, ang0, angv])

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
  method: str = ("value = mean of the criterion over real OOD latents, each against num_refs random ID latents "
                 "and num_refs random OTHER OOD latents (leave-one-out), draws_per_latent draws each; "
                 "tolerance = tolerance_scale * std of those samples; self_acceptance = fraction of those real "
                 "samples inside all three tolerances")
  names: tuple[str, str, str] = CRITERIA

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["values"], d["tolerances"], d["stds"], d["names"] = (list(map(float, self.values)),
                                                           list(map(float, self.tolerances)),
                                                           list(map(float, self.stds)), list(self.names))
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


def _choose(key: jax.Array, n: int, r: int) -> jax.Array:
  """r distinct indices in [0, n), uniformly: the r largest of n uniforms."""
  return jax.lax.top_k(jax.random.uniform(key, (n,)), r)[1].astype(jnp.int32)


def reference_indices(key: jax.Array, candidate_index: Any, num_id: int, num_ood: int,
                      num_refs: int) -> tuple[np.ndarray, np.ndarray]:
  """(ID, OOD) reference indices (n, R) of candidates g of ``discover(..., key=key)``:
  the R largest of N uniforms from ``fold_in(fold_in(key, 2 or 3), g)``."""
  g = jnp.atleast_1d(jnp.asarray(candidate_index, jnp.uint32))
  return tuple(np.asarray(x) for x in _reference_indices(key, g, num_id, num_ood, num_refs))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _reference_indices(key, g, num_id, num_ood, num_refs):
  kid, kood = jax.random.fold_in(key, 2), jax.random.fold_in(key, 3)
  idx_id = jax.vmap(lambda i: _choose(jax.random.fold_in(kid, i), num_id, num_refs))(g)
  idx_ood = jax.vmap(lambda i: _choose(jax.random.fold_in(kood, i), num_ood, num_refs))(g)
  return idx_id, idx_ood


@dataclasses.dataclass
class _BankGeometry:
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
  def build(cls, ood_bank: Any, id_bank: Any, *, w: jax.Array | None = None,
            full_id_gram: bool = False) -> "_BankGeometry":
    start = time.perf_counter()
    ro, ri = as_rows(ood_bank), as_rows(id_bank)
    no, ni = ro.shape[0], ri.shape[0]
    ood, idb = jnp.asarray(ro), jnp.asarray(ri)
    w = jnp.zeros((ro.shape[1],), jnp.float32) if w is None else jnp.asarray(w, jnp.float32)
    all_t, extras, g_all = _stacked_geometry(ood, idb, w, full_id_gram=full_id_gram)
    jax.block_until_ready(g_all)
    return cls(ood, idb, all_t, extras, g_all, time.perf_counter() - start)

  @property
  def num_ood(self) -> int:
    return int(self.ood.shape[0])

  @property
  def num_id(self) -> int:
    return int(self.idb.shape[0])


_EXTRAS = 3  # rows of S after the banks: the guard direction w, the OOD mean, the ID mean.


@functools.partial(jax.jit, static_argnames=("full_id_gram",))
def _stacked_geometry(ood, idb, w, *, full_id_gram):
  """S^T and the Gram matrix of S = [ood; id; w; mean(ood); mean(id)] (fixed-block gemms)."""
  no, ni = ood.shape[0], idb.shape[0]
  extras = jnp.stack([w, jnp.mean(ood, 0), jnp.mean(idb, 0)])
  stacked = jnp.concatenate([ood, idb, extras])
  all_t = stacked.T
  n_all = no + ni + _EXTRAS
  pad = lambda x: jnp.concatenate([x, jnp.zeros(((-x.shape[0]) % _ROW_BLOCK, x.shape[1]), x.dtype)])
  if full_id_gram:
    return all_t, extras, _rowblock_matmul(pad(stacked), all_t)[:n_all]
  # Rejection needs only |r|^2 of the ID references: their other products meet zero coefficients.
  o_rows = _rowblock_matmul(pad(jnp.concatenate([ood, extras])), all_t)[:no + _EXTRAS]
  i_rows = jnp.zeros((ni, n_all), jnp.float32).at[:, :no].set(o_rows[:no, no:no + ni].T)
  i_rows = i_rows.at[:, no + ni:].set(o_rows[no:, no:no + ni].T)
  i_rows = i_rows.at[jnp.arange(ni), no + jnp.arange(ni)].set(jnp.sum(idb * idb, -1))
  return all_t, extras, jnp.concatenate([o_rows[:no], i_rows, o_rows[no:]])


@functools.partial(jax.jit, static_argnames=("num_ood", "num_refs", "draws"))
def _target_samples(g_all, key, *, num_ood, num_refs, draws):
  no, ni = num_ood, g_all.shape[0] - num_ood - _EXTRAS
  kid, kood = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)

  def one(i, j):
    s = (i * draws + j).astype(jnp.uint32)
    idx_id = no + _choose(jax.random.fold_in(kid, s), ni, num_refs)
    idx = _choose(jax.random.fold_in(kood, s), no - 1, num_refs)
    idx = idx + (idx >= i)  # leave-one-out: never the latent itself.
    return _criteria(g_all[i, i], g_all[i, idx_id], g_all[idx_id, idx_id], g_all[i, idx], g_all[idx][:, idx])

  ii, jj = jnp.meshgrid(jnp.arange(no), jnp.arange(draws), indexing="ij")
  return jax.vmap(one)(ii.ravel(), jj.ravel())


def _targets_from_geometry(geom: _BankGeometry, *, num_refs: int, tolerance_scale: float, key: jax.Array,
                           draws_per_latent: int) -> Targets:
  samples = np.asarray(_target_samples(geom.g_all, key, num_ood=geom.num_ood, num_refs=num_refs,
                                       draws=draws_per_latent), np.float64)
  values, stds = samples.mean(0), samples.std(0, ddof=1)
  tol = tolerance_scale * stds
  inside = np.all(np.abs(samples - values) <= tol, axis=1)
  return Targets(tuple(map(float, values)), tuple(map(float, tol)), tuple(map(float, stds)), int(num_refs),
                 float(tolerance_scale), int(samples.shape[0]), float(inside.mean()), int(draws_per_latent))


def compute_targets(ood_bank: Any, id_bank: Any, *, num_refs: int = 10, tolerance_scale: float = 1.0,
                    key: jax.Array, draws_per_latent: int = 4) -> Targets:
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
  geom = _BankGeometry.build(ood_bank, id_bank)
  return _targets_from_geometry(geom, num_refs=num_refs, tolerance_scale=tolerance_scale, key=key,
                                draws_per_latent=draws_per_latent)

# ---------------------------------------------------------------------------
# Scoring materialised candidates.


def _accept(stats, logit, values, tols, guard_margin):
  passed = jnp.concatenate([jnp.abs(stats - values) <= tols, (logit >= guard_margin)[..., None]], -1)
  return passed, jnp.all(passed, -1)


@functools.partial(jax.jit, static_argnames=("num_refs", "has_guard"))
def _score_shared(c, refs_t, gram_refs, values, tols, b, guard_margin, *, num_refs, has_guard):
  """refs_t = [id refs; ood refs; w]^T (d, 2R+1): one gemm pass over the candidates.
  gram_refs (computed once, outside: inside it could compile differently per chunk size)."""
  r = num_refs
  dots = _rowblock_matmul(c, refs_t, _SCORE_BLOCK)
  cc = jnp.sum(c * c, -1)
  n = c.shape[0]
  stats = jax.vmap(_criteria, in_axes=(0, 0, None, 0, None))(
      cc, dots[:, :r], jnp.diagonal(gram_refs)[:r], dots[:, r:2 * r], gram_refs[r:2 * r, r:2 * r])
  logit = dots[:, -1] + b if has_guard else jnp.full((n,), jnp.inf)
  return stats, logit, *_accept(stats, logit, values, tols, guard_margin)


@functools.partial(jax.jit, static_argnames=("num_refs", "has_guard"))
def _score_per_candidate(c, refs, w, values, tols, b, guard_margin, *, num_refs, has_guard):
  """refs (B, 2R, d): [id refs; ood refs] of each candidate."""
  r = num_refs
  dots = jnp.einsum("bd,brd->br", c, refs)
  g = jnp.einsum("brd,bsd->brs", refs[:, r:], refs[:, r:])
  id_sq = jnp.sum(refs[:, :r] * refs[:, :r], -1)
  stats = jax.vmap(_criteria)(jnp.sum(c * c, -1), dots[:, :r], id_sq, dots[:, r:], g)
  logit = jnp.sum(c * w, -1) + b if has_guard else jnp.full(c.shape[:1], jnp.inf)
  return stats, logit, *_accept(stats, logit, values, tols, guard_margin)


def score_candidates(candidates: Any, id_refs: Any, ood_refs: Any, targets: Targets, *,
                     guard: LinearGuard | None = None, guard_margin: float = 0.0, chunk_size: int = 256,
                     mesh: Any = None) -> dict:
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
    raise ValueError(f"references must be (R, ...) shared or (B, R, ...) per candidate for candidates "
                     f"{np.shape(candidates)}; got ID {id_refs.shape}, OOD {ood_refs.shape}")
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
  unit = _SCORE_BLOCK * parallel.data_size(mesh)  # whole row blocks on every device.
  chunk = max(unit, -(-int(chunk_size) // unit) * unit)
  place = (lambda x: parallel.shard_batch(x, mesh)) if mesh is not None else jnp.asarray
  if shared:
    refs_t = _transpose(jnp.concatenate([jnp.asarray(id_refs), jnp.asarray(ood_refs), w[None]]))
    gram_refs = _gram_small(refs_t)
  outs = []
  for s in range(0, b_total, chunk):
    blk, n = _pad_rows(c[s:s + chunk] if on_device else np.asarray(c[s:s + chunk]), chunk)
    if shared:
      out = _score_shared(place(blk), refs_t, gram_refs, values, tols, gb, margin, num_refs=r,
                          has_guard=guard is not None)
    else:
      refs, _ = _pad_rows(np.concatenate([id_refs[s:s + chunk], ood_refs[s:s + chunk]], 1), chunk)
      out = _score_per_candidate(place(blk), place(refs), w, values, tols, gb, margin, num_refs=r,
                                 has_guard=guard is not None)
    outs.append([np.asarray(o)[:n] for o in out])
  stats, logit, passed, accepted = (np.concatenate(x) for x in zip(*outs))
  dev = stats - np.asarray(targets.values)
  return {"stats": stats, "deviation": dev, "normalised": dev / np.asarray(targets.tolerances),
          "passed": passed, "guard_logit": logit, "accepted": accepted}


# ---------------------------------------------------------------------------
# The discovery kernel: paths of slerp candidates, scored (and optimised) from inner products.


@dataclasses.dataclass(frozen=True)
class _KernelConfig:
  num_ood: int
  num_interior: int
  num_refs: int
  opt_basis: str
  opt_steps: int
  opt_lr: float
  has_guard: bool
  guard_margin: float


def _candidate_dots(a: jax.Array, gb: jax.Array, rho: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Candidate c = rho * unit(sum_j a_j b_j / |b_j|): returns (c . b_j for all j, basis norms)."""
  nb = jnp.sqrt(jnp.maximum(jnp.diagonal(gb), _TINY))
  gn = gb / (nb[:, None] * nb[None, :])
  q = gn @ a
  scale = rho / jnp.sqrt(jnp.maximum(a @ q, _TINY))
  return scale * q * nb, nb


def _stats_from_coefficients(a, gb, rho, r, has_guard, guard_b):
  """Criteria and guard logit of one candidate in its basis
  [v, u, id refs (R), ood refs (R), w, mean(ood), mean(id)]."""
  dots, _ = _candidate_dots(a, gb, rho)
  ids, oods = slice(2, 2 + r), slice(2 + r, 2 + 2 * r)
  stats = _criteria(rho ** 2, dots[ids], jnp.diagonal(gb)[ids], dots[oods], gb[oods, oods])
  logit = dots[2 + 2 * r] + guard_b if has_guard else jnp.inf
  return stats, logit


def _trainable(r: int, opt_basis: str) -> np.ndarray:
  """Which basis coefficients the optimiser may move (see ``discover``'s opt_basis)."""
  mask = np.zeros(2 * r + 2 + _EXTRAS, np.float32)
  # v, u and mean(ood). Never w or mean(id): both are ID-vs-OOD image patterns, and moving
  # along them meets the inner-product criteria with latents that denoise into ID-looking or
  # mixed images (embedded demo, t_0=400: OOD hit rate 0.70 with them, 1.00 without).
  mask[[0, 1, 2 * r + 3]] = 1
  if opt_basis == "refs":
    mask[2:2 + 2 * r] = 1
  return mask


@functools.partial(jax.jit, static_argnames=("cfg",))
def _path_kernel(all_t, g_all, shell, prior, keys, sources, paths, values, tols, guard_b, *,
                 cfg: _KernelConfig):
  """One chunk of paths (a multiple of _ROW_BLOCK): prior draws, slerp candidates,
  their references, optional optimisation, criteria. Every per-candidate quantity
  depends only on the candidate's global index (fixed-shape matmuls, per-index keys).

  Candidate c is represented by coefficients a over its basis
  B = [v, u, id refs (R), ood refs (R), w, mean(ood), mean(id)] and the Gram matrix
  of B: the rows of B other than v are members of the stacked set S, so that Gram
  matrix is one gather from S's Gram matrix plus the draw's gemm row v . S. A slerp
  candidate has a = (beta, alpha, 0, ...) / nd.
  """
  k_prior, k_id, k_ood = keys
  kk, r = cfg.num_interior, cfg.num_refs
  no, ni = cfg.num_ood, g_all.shape[0] - cfg.num_ood - _EXTRAS
  z = _sample_prior(prior, k_prior, paths.astype(jnp.uint32))  # (P, d) = sample_prior(prior, k_prior, p)
  z_all = _rowblock_matmul(z, all_t)  # (P, No + Ni + 3): one gemm row per path
  zz = jnp.sum(z * z, -1)
  t = (jnp.arange(kk, dtype=jnp.float32) + 1) / (kk + 1)
  src = sources[paths % no]
  g = (paths[:, None] * kk + jnp.arange(kk)[None]).astype(jnp.uint32)  # (P, K) global candidate indices
  idx_id = jax.vmap(jax.vmap(lambda i: no + _choose(jax.random.fold_in(k_id, i), ni, r)))(g)
  idx_ood = jax.vmap(jax.vmap(lambda i: _choose(jax.random.fold_in(k_ood, i), no, r)))(g)

  def per_path(s, zrow, zz_p, ids, oods):
    nu, nv = jnp.sqrt(g_all[s, s]), jnp.sqrt(zz_p)
    alpha, beta, nd = _slerp_coefficients(zrow[s] / (nu * nv), t)
    rho = (1 - t) * nu + t * nv

    def per_candidate(al, be, nd_k, ids_k, oods_k):
      ix = jnp.concatenate([s[None], ids_k, oods_k, no + ni + jnp.arange(_EXTRAS)])  # u, refs, extras in S
      zr = zrow[ix]
      gb = jnp.concatenate([jnp.concatenate([zz_p[None], zr])[None],
                            jnp.concatenate([zr[:, None], g_all[ix][:, ix]], 1)], 0)
      a0 = jnp.zeros(ix.shape[0] + 1, jnp.float32).at[0].set(be / nd_k).at[1].set(al / nd_k)
      return a0, gb

    a0, gb = jax.vmap(per_candidate)(alpha, beta, nd, ids, oods)
    return a0, gb, rho

  a0, gb, rho = jax.vmap(per_path)(src, z_all, zz, idx_id, idx_ood)
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  a0, gb, rho = flat(a0), flat(gb), flat(rho)
  stats_fn = jax.vmap(lambda a, g, rh: _stats_from_coefficients(a, g, rh, r, cfg.has_guard, guard_b))
  a = a0
  if cfg.opt_steps:
    a, rho = _optimise(a0, gb, rho, shell, values, tols, cfg, stats_fn, z.shape[1])
  stats, logit = stats_fn(a, gb, rho)
  passed, accepted = _accept(stats, logit, values, tols, cfg.guard_margin)
  unflat = lambda x: x.reshape((paths.shape[0], kk) + x.shape[1:])
  return {"z": z, "source": src, "coef": unflat(a), "gram": unflat(gb), "rho": unflat(rho), "stats": unflat(stats),
          "logit": unflat(logit), "passed": unflat(passed), "accepted": unflat(accepted), "id_refs": idx_id - no,
          "ood_refs": idx_ood}


def _optimise(a0, gb, rho0, shell, values, tols, cfg: _KernelConfig, stats_fn, dim: int):
  """Adam on every candidate at once (the loss is a sum of per-candidate terms and
  Adam is per-coordinate, so candidates stay independent). Returns (coefficients, norms).

  Parameters: the basis coefficients a (direction c / |c| = unit(sum_j a_j b_j / |b_j|))
  and the norm, kept on the OOD shell: rho = centre + band * tanh(s) with centre, band
  the mean and std of the real OOD norms (the initial interpolated norm is first
  clipped into that band). With the norm frozen the two angle criteria are tied to
  each other (both are functions of the same c . r_j), so the norm must move.
  Loss: squared tolerance-normalised deviations (the guard, if any, only filters
  the result afterwards: pushing its logit up degrades the images). Step size for
  a: ``opt_lr / sqrt(d)`` (angles between independent latents scatter by 1/sqrt(d)
  radians), for s: ``opt_lr / 10``; both with cosine decay to 1%.
  """
  centre, band = shell
  s0 = jnp.arctanh(jnp.clip((rho0 - centre) / band, -0.95, 0.95))

  def loss(params):
    rho = centre + band * jnp.tanh(params["s"])
    stats, _ = stats_fn(params["a"], gb, rho)
    return jnp.sum(((stats - values) / tols) ** 2)

  sched = lambda lr: optax.cosine_decay_schedule(lr, cfg.opt_steps, alpha=0.01)
  opt = optax.partition({"a": optax.adam(sched(cfg.opt_lr / math.sqrt(dim))), "s": optax.adam(sched(cfg.opt_lr / 10))},
                        {"a": "a", "s": "s"})
  params = {"a": a0, "s": s0}
  mask = jnp.asarray(_trainable(cfg.num_refs, cfg.opt_basis))

  def step(carry, _):
    params, state = carry
    grads = jax.grad(loss)(params)
    grads = {"a": grads["a"] * mask, "s": grads["s"]}  # frozen coefficients get zero Adam updates
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=cfg.opt_steps)
  return params["a"], centre + band * jnp.tanh(params["s"])


@functools.partial(jax.jit, static_argnames=("with_refs",))
def _materialise(ood, idb, extras, z_rows, src, idx_id, idx_ood, coef, gb, rho, *, with_refs):
  """Latents c = rho * unit(sum_j a_j b_j / |b_j|) for a fixed block of candidates
  (extras = [w; mean(ood); mean(id)]). Reference weights, when used (opt_basis
  'refs'), are scattered into dense (block, N) matrices and applied as one gemm
  per bank (cheaper on CPU than gathering 2R rows of d numbers per candidate)."""
  nb = jnp.sqrt(jnp.maximum(jnp.diagonal(gb, axis1=1, axis2=2), _TINY))  # (B, M)
  gn = gb / (nb[:, :, None] * nb[:, None, :])
  scale = rho / jnp.sqrt(jnp.maximum(jnp.einsum("bi,bij,bj->b", coef, gn, coef), _TINY))
  wt = coef / nb
  r = idx_id.shape[1]
  c = wt[:, 0:1] * z_rows + wt[:, 1:2] * ood[src] + wt[:, 2 + 2 * r:] @ extras
  if with_refs:
    rows = jnp.arange(src.shape[0])[:, None]
    w_ood = jnp.zeros((src.shape[0], ood.shape[0]), jnp.float32).at[rows, idx_ood].add(wt[:, 2 + r:2 + 2 * r])
    w_id = jnp.zeros((src.shape[0], idb.shape[0]), jnp.float32).at[rows, idx_id].add(wt[:, 2:2 + r])
    c = c + w_ood @ ood + w_id @ idb
  return scale[:, None] * c


# ---------------------------------------------------------------------------
# discover().


@dataclasses.dataclass
class DiscoveryResult:
  """Accepted latents and everything needed to reproduce and judge them."""

  latents: np.ndarray  # (n, *latent_shape) float32
  candidate_index: np.ndarray  # (n,) global candidate index g = path * num_interior + k
  path_index: np.ndarray  # (n,) the prior draw is sample_prior(prior, fold_in(key, 0), path)
  source_index: np.ndarray  # (n,) the OOD latent the path starts from
  t: np.ndarray  # (n,) slerp position in (0, 1)
  id_ref_index: np.ndarray  # (n, R)
  ood_ref_index: np.ndarray  # (n, R)
  stats: np.ndarray  # (n, 3) criteria of the accepted latents
  guard_logit: np.ndarray  # (n,)
  num_candidates: int  # candidates examined (up to the last accepted one when num_samples was reached)
  num_scored: int  # candidates actually computed (>= num_candidates: a chunk may overshoot)
  acceptance_rate: float
  candidates_per_second: float
  seconds: float
  setup_seconds: float
  rejections: dict  # criterion -> candidates failing it (a candidate may fail several)
  sole_rejections: dict  # criterion -> candidates failing ONLY it
  most_rejecting: str | None
  targets: Targets
  prior: dict
  mode: str
  config: dict
  comparison: dict | None = None

  @property
  def num_accepted(self) -> int:
    return int(self.latents.shape[0])

  def summary(self) -> dict:
    """JSON-ready: everything but the arrays."""
    keys = ("num_candidates", "num_scored", "acceptance_rate", "candidates_per_second", "seconds", "setup_seconds",
            "rejections", "sole_rejections", "most_rejecting", "prior", "mode", "config", "comparison")
    out = {k: getattr(self, k) for k in keys}
    out["num_accepted"] = self.num_accepted
    out["targets"] = self.targets.to_dict()
    return out


def _resolve_guard(guard, ood_bank, id_bank):
  if guard is None or isinstance(guard, LinearGuard):
    return guard
  if isinstance(guard, str):
    return fit_guard(ood_bank, id_bank, kind=guard)
  raise ValueError(f"guard must be None, 'mean_diff', 'logistic' or a LinearGuard, got {guard!r}")


def discover(ood_bank: Any, id_bank: Any, *, num_samples: int, key: jax.Array, mode: str = "rejection",
             max_candidates: int | None = None, num_interior: int = 20, num_refs: int = 10,
             max_per_path: int | None = None,
             tolerance_scale: float = 1.0, targets: Targets | None = None, prior: GaussianPrior | None = None,
             prior_kind: str = "pooled", guard: LinearGuard | str | None = "mean_diff", guard_margin: float = 0.0,
             opt_steps: int = 200, opt_lr: float = 1.0, opt_basis: str = "global", chunk_paths: int = 32,
             draws_per_latent: int = 4, out: np.ndarray | None = None, compare: bool = True,
             mesh: Any = None) -> DiscoveryResult:
  """Latent discovery (METHOD.md step 6): slerp candidates between OOD latents and
  prior draws, kept when they meet the three geometric criteria and the guard.

  Path p starts at OOD latent ``perm[p % N_ood]`` (perm from ``fold_in(key, 1)``)
  and ends at the prior draw ``sample_prior(prior, fold_in(key, 0), p)``; its
  ``num_interior`` interior points are candidates g = p * num_interior + k at
  t = (k+1)/(num_interior+1). Candidate g compares with ``num_refs`` ID and OOD
  references from ``reference_indices(key, g, ...)``. A candidate is accepted when
  each criterion is within its tolerance of its target and (with a guard) its
  guard logit is >= ``guard_margin``.

  mode='optimize' first moves every candidate onto the criteria (``opt_steps`` Adam
  steps, see ``_optimise``) and accepts with the same test. ``opt_basis``:
  'global' (default) moves only v, u and the OOD bank mean (plus the norm, inside
  the OOD shell; the guard filters but is not optimised) -- moves that act on every
  reference alike,
  so accepted latents stay typical against FRESH references (``comparison``);
  'refs' also moves the candidate along its own 2R references: the highest
  acceptance, but it fits those particular references (fresh-reference pass rates
  collapse).

  ``max_per_path``: keep at most this many accepted candidates of one path (the
  ones furthest from its OOD latent, i.e. the most novel); None keeps them all, as
  the official code does. Neighbouring points of a path denoise into nearly the
  same image, so a cap spreads the samples over many prior draws (embedded demo:
  1 instead of all raised recall from 0.34 to 0.90, at a higher Frechet distance).

  Stops after ``num_samples`` acceptances (the first ones in global order) or
  ``max_candidates`` candidates (default 1000 * num_samples). ``chunk_paths``:
  paths per jitted call (rounded up to a multiple of 32; results do not depend on
  it). Targets default to ``compute_targets`` with ``fold_in(key, 5)``; the prior
  to ``fit_prior(ood_bank, prior_kind)``; the guard to ``fit_guard(kind=guard)``
  (None: no guard). ``out``: optional (num_samples, ...) array (e.g. a memmap) to
  write accepted latents into. The banks go to the device once (float32 rows and
  a transposed copy); setup costs one Gram matrix of both banks. ``mesh``: shard
  each chunk of paths over its data axis (whole 32-path blocks per device, the
  bank geometry replicated); the result is the same bits as on one device.
  """
  if mode not in ("rejection", "optimize"):
    raise ValueError(f"mode must be 'rejection' or 'optimize', got {mode!r}")
  if opt_basis not in ("global", "refs"):
    raise ValueError(f"opt_basis must be 'global' or 'refs', got {opt_basis!r}")
  check_banks(ood_bank, id_bank, num_refs=num_refs)
  if max_per_path is not None and int(max_per_path) < 1:
    raise ValueError(f"max_per_path must be >= 1 or None (keep all), got {max_per_path}")
  if num_samples < 1 or num_interior < 1 or chunk_paths < 1:
    raise ValueError(f"num_samples, num_interior and chunk_paths must be >= 1, got {num_samples}, {num_interior}, "
                     f"{chunk_paths}")
  if targets is not None and targets.num_refs != num_refs:
    raise ValueError(f"targets were computed with num_refs={targets.num_refs}, discover got num_refs={num_refs}")
  max_candidates = int(max_candidates or 1000 * num_samples)
  shape = _latent_shape(ood_bank)
  start = time.perf_counter()
  guard = _resolve_guard(guard, ood_bank, id_bank)
  geom = _BankGeometry.build(ood_bank, id_bank, w=None if guard is None else guard.w,
                             full_id_gram=mode == "optimize")
  if targets is None:
    targets = _targets_from_geometry(geom, num_refs=num_refs, tolerance_scale=tolerance_scale,
                                     key=jax.random.fold_in(key, 5), draws_per_latent=draws_per_latent)
  prior = prior or fit_prior(ood_bank, prior_kind)
  if prior.dim != geom.ood.shape[1]:
    raise ValueError(f"prior dimension {prior.dim} != latent size {geom.ood.shape[1]}")
  setup_seconds = time.perf_counter() - start

  d = int(geom.ood.shape[1])
  cfg = _KernelConfig(geom.num_ood, int(num_interior), int(num_refs), opt_basis,
                      int(opt_steps) if mode == "optimize" else 0, float(opt_lr), guard is not None,
                      float(guard_margin))
  keys = (jax.random.fold_in(key, 0), jax.random.fold_in(key, 2), jax.random.fold_in(key, 3))
  sources = jax.random.permutation(jax.random.fold_in(key, 1), geom.num_ood).astype(jnp.int32)
  values, tols = targets.arrays()
  gbias = guard.b if guard is not None else jnp.zeros((), jnp.float32)
  ood_norms = jnp.sqrt(jnp.diagonal(geom.g_all)[:geom.num_ood])
  shell = (jnp.mean(ood_norms), jnp.maximum(jnp.std(ood_norms), 1e-6 * jnp.mean(ood_norms)))
  # Several devices: the same single-device kernel runs on each device's own
  # sub-chunk of paths (asynchronous dispatch, no SPMD partitioning), so every
  # candidate gets exactly the bits it gets on one device.
  devices = [None] if mesh is None else list(mesh.devices.flat)
  sub = -(-int(chunk_paths) // _ROW_BLOCK) * _ROW_BLOCK
  chunk = sub * len(devices)
  num_paths = -(-max_candidates // num_interior)
  inputs = (geom.all_t, geom.g_all, shell, prior, keys, sources, values, tols, gbias)
  per_device = [inputs if dev is None else jax.device_put(inputs, dev) for dev in devices]
  if out is not None and (out.shape[0] < num_samples or tuple(out.shape[1:]) != shape):
    raise ValueError(f"out must have shape ({num_samples}, {', '.join(map(str, shape))}), got {out.shape}")
  blocks_out: list[np.ndarray] = []
  rec = {k: [] for k in ("candidate_index", "path_index", "source_index", "t", "id_ref_index", "ood_ref_index",
                         "stats", "guard_logit")}
  fails = np.zeros(4, np.int64)
  sole = np.zeros(4, np.int64)
  n_acc = examined = scored = 0
  loop_start = time.perf_counter()
  p0 = 0
  while p0 < num_paths and n_acc < num_samples:
    parts = []
    for j, (dev, (a_t, g_a, sh, pr, ks, src, val, tol, gb_)) in enumerate(zip(devices, per_device)):
      paths = np.arange(p0 + j * sub, p0 + (j + 1) * sub, dtype=np.int32)
      paths = jnp.asarray(paths) if dev is None else jax.device_put(paths, dev)
      parts.append(_path_kernel(a_t, g_a, sh, pr, ks, src, paths, val, tol, gb_, cfg=cfg))
    host = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0] if k != "z"}
    g = (np.arange(p0, p0 + chunk)[:, None] * num_interior + np.arange(num_interior)[None]).ravel()
    valid = g < max_candidates
    scored += int(valid.sum())
    acc = host["accepted"].ravel() & valid
    if max_per_path is not None:  # the last max_per_path accepted points of each path.
      per_path = acc.reshape(-1, num_interior)
      from_end = np.cumsum(per_path[:, ::-1], axis=1)[:, ::-1]
      acc = (per_path & (from_end <= int(max_per_path))).ravel()
    hits = np.flatnonzero(acc)
    need = num_samples - n_acc
    if len(hits) >= need:
      hits = hits[:need]
      valid &= g <= g[hits[-1]]
    examined += int(valid.sum())
    failed = ~host["passed"].reshape(-1, 4)[valid]
    fails += failed.sum(0)
    sole += (failed & (failed.sum(1, keepdims=True) == 1)).sum(0)
    if len(hits):
      pi, ki = np.divmod(hits, num_interior)
      blocks = []
      for s in range(0, len(hits), _MAT_BLOCK):
        sel_p, sel_k = pi[s:s + _MAT_BLOCK], ki[s:s + _MAT_BLOCK]
        pad = _MAT_BLOCK - len(sel_p)
        sel_p, sel_k = np.r_[sel_p, np.zeros(pad, int)], np.r_[sel_k, np.zeros(pad, int)]
        if len(devices) == 1:
          z = parts[0]["z"][sel_p]
        else:  # rows of several devices: gathered through the host onto the default device.
          z = jnp.asarray(np.stack([np.asarray(parts[i // sub]["z"][i % sub]) for i in sel_p]))
        m = _materialise(geom.ood, geom.idb, geom.extras, z, jnp.asarray(host["source"][sel_p]),
                         jnp.asarray(host["id_refs"][sel_p, sel_k]), jnp.asarray(host["ood_refs"][sel_p, sel_k]),
                         jnp.asarray(host["coef"][sel_p, sel_k]), jnp.asarray(host["gram"][sel_p, sel_k]),
                         jnp.asarray(host["rho"][sel_p, sel_k]), with_refs=cfg.opt_steps > 0 and opt_basis == "refs")
        blocks.append(np.asarray(m)[:_MAT_BLOCK - pad])
      mat = np.concatenate(blocks).reshape((len(hits),) + shape)
      if out is not None:
        out[n_acc:n_acc + len(hits)] = mat
      else:
        blocks_out.append(mat)
      rec["candidate_index"].append(g[hits])
      rec["path_index"].append(p0 + pi)
      rec["source_index"].append(host["source"][pi])
      rec["t"].append((ki + 1) / (num_interior + 1))
      rec["id_ref_index"].append(host["id_refs"][pi, ki])
      rec["ood_ref_index"].append(host["ood_refs"][pi, ki])
      rec["stats"].append(host["stats"][pi, ki])
      rec["guard_logit"].append(host["logit"][pi, ki])
      n_acc += len(hits)
    p0 += chunk
  seconds = time.perf_counter() - loop_start
  cat = lambda k, tail, dt: (np.concatenate(rec[k]) if rec[k] else np.zeros((0,) + tail, dt))
  r = num_refs
  rejections = {name: int(v) for name, v in zip(REJECTION_REASONS, fails)}
  considered = rejections if guard is not None else {k: v for k, v in rejections.items() if k != "guard"}
  result = DiscoveryResult(
      latents=(out[:n_acc] if out is not None else
               np.concatenate(blocks_out) if blocks_out else np.zeros((0,) + shape, np.float32)),
      candidate_index=cat("candidate_index", (), np.int64),
      path_index=cat("path_index", (), np.int64), source_index=cat("source_index", (), np.int64),
      t=cat("t", (), np.float64), id_ref_index=cat("id_ref_index", (r,), np.int32),
      ood_ref_index=cat("ood_ref_index", (r,), np.int32), stats=cat("stats", (3,), np.float32),
      guard_logit=cat("guard_logit", (), np.float32), num_candidates=examined, num_scored=scored,
      acceptance_rate=n_acc / max(examined, 1), candidates_per_second=scored / max(seconds, 1e-9), seconds=seconds,
      setup_seconds=setup_seconds, rejections=rejections,
      sole_rejections={name: int(v) for name, v in zip(REJECTION_REASONS, sole)},
      most_rejecting=(max(considered, key=considered.get) if any(considered.values()) else None),
      targets=targets, prior=prior.summary(), mode=mode,
      config={"num_samples": num_samples, "max_candidates": max_candidates, "num_interior": num_interior,
              "num_refs": num_refs, "max_per_path": max_per_path, "tolerance_scale": targets.tolerance_scale, "guard": guard.kind if guard else None,
              "guard_margin": guard_margin, "opt_steps": cfg.opt_steps, "opt_lr": opt_lr, "opt_basis": opt_basis,
              "chunk_paths": chunk_paths,
              "dim": d})
  if compare and n_acc:
    result.comparison = compare_to_bank(result.latents, ood_bank, id_bank, targets=targets, guard=guard,
                                        key=jax.random.fold_in(key, 4))
  return result

# ---------------------------------------------------------------------------
# Judging samples; baselines.


def compare_to_bank(latents: Any, ood_bank: Any, id_bank: Any, *, targets: Targets | None = None,
                    guard: LinearGuard | None = None, key: jax.Array | None = None, max_latents: int = 500,
                    num_triples: int = 2000) -> dict:
  """Statistics of generated latents next to the real OOD bank (JSON-ready).

  Same descriptive statistics for both; nearest-neighbour distance of each
  generated latent to the OOD bank vs the leave-one-out nearest-neighbour distance
  among real OOD latents (a memorisation indicator: ratio << 1 means copies); the
  criteria re-evaluated with FRESH random references (did selection over-fit its
  own references? compare ``pass_rate_all`` with the real latents'
  ``self_acceptance``; a near-copy fails whenever its source is drawn); the
  fraction on the ID side of the guard. Uses the first ``max_latents`` latents.
  """
  check_banks(latents, ood_bank)
  check_banks(ood_bank, id_bank)
  x = as_rows(latents)[:max_latents]
  ro, ri = as_rows(ood_bank), as_rows(id_bank)
  g_xx, g_xo, g_oo = gram(x), gram(x, ro), gram(ro)
  x2, o2 = np.diag(g_xx).copy(), np.diag(g_oo).copy()
  nn = _dist_from_gram(g_xo, x2, o2).min(1)
  d_oo = _dist_from_gram(g_oo, o2, o2)
  np.fill_diagonal(d_oo, np.inf)
  out = {"num_compared": int(len(x)), "generated": _describe_from_gram(g_xx, num_triples, 0),
         "ood_bank": _describe_from_gram(g_oo, num_triples, 0),
         "nn_distance_to_ood": _mean_std(nn), "ood_loo_nn_distance": _mean_std(d_oo.min(1))}
  out["nn_ratio"] = out["nn_distance_to_ood"]["mean"] / out["ood_loo_nn_distance"]["mean"]
  if targets is not None:
    r = targets.num_refs
    if ro.shape[0] < r or ri.shape[0] < r:
      raise ValueError(f"fresh references need {r} latents per bank")
    key = key if key is not None else jax.random.key(0)
    idx_id, idx_ood = reference_indices(key, np.arange(len(x)), ri.shape[0], ro.shape[0], r)
    g_xi = gram(x, ri)
    i2 = norms(ri) ** 2
    rows_n = np.arange(len(x))[:, None]
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    stats = np.asarray(_criteria_batch(
        f32(x2), f32(g_xi[rows_n, idx_id]), f32(i2[idx_id]), f32(g_xo[rows_n, idx_ood]),
        f32(g_oo[idx_ood[:, :, None], idx_ood[:, None, :]])), np.float64)
    inside = np.abs(stats - np.asarray(targets.values)) <= np.asarray(targets.tolerances)
    out["fresh_refs"] = {"pass_rate": {n: float(v) for n, v in zip(CRITERIA, inside.mean(0))},
                         "pass_rate_all": float(inside.all(1).mean()),
                         "mean_normalised_deviation": {
                             n: float(v) for n, v in zip(CRITERIA, (np.abs(stats - np.asarray(targets.values))
                                                                    / np.asarray(targets.tolerances)).mean(0))},
                         "real_ood_self_acceptance": targets.self_acceptance}
  if guard is not None:
    logits = _project(x, np.asarray(guard.w, np.float64)) + float(guard.b)
    out["id_side_fraction"] = float(np.mean(logits < 0))
  return out


def sample_gaussian_baseline(prior: GaussianPrior, n: int, key: jax.Array, *, chunk: int = 64) -> np.ndarray:
  """n latents straight from the fitted prior (draw i from ``fold_in(key, i)``)."""
  out = np.empty((n,) + prior.shape, np.float32)
  for s in range(0, n, chunk):
    idx = np.arange(s, min(n, s + chunk))
    out[s:s + len(idx)] = np.asarray(sample_prior(prior, key, idx)).reshape((len(idx),) + prior.shape)
  return out


def renoise_baseline(ood_bank: Any, n: int, key: jax.Array, strength: float, *,
                     prior: GaussianPrior | None = None) -> np.ndarray:
  """'Copy with noise': x_i = m + sqrt(1 - s^2) (x_src - m) + s sqrt(var) eps_i.

  src = i mod N; eps_i from ``fold_in(key, i)``; m, var from ``prior`` (default: the
  pooled prior of the bank). Variance-preserving about the prior mean: s = 0 copies
  the few-shot latents, s = 1 is a fresh prior draw, and if x_src ~ N(m, var) so is x_i.
  """
  if not 0.0 <= strength <= 1.0:
    raise ValueError(f"strength must lie in [0, 1], got {strength}")
  rows = as_rows(ood_bank)
  prior = prior or fit_prior(rows)
  mean = np.asarray(prior.mean)
  std = np.sqrt(np.asarray(prior.var))
  unit = dataclasses.replace(prior, mean=jnp.zeros_like(prior.mean), var=jnp.ones_like(prior.var))
  out = np.empty((n,) + _latent_shape(ood_bank), np.float32)
  keep = math.sqrt(1.0 - strength ** 2)
  for s in range(0, n, 64):
    idx = np.arange(s, min(n, s + 64))
    eps = np.asarray(sample_prior(unit, key, idx))
    src = np.asarray(rows[idx % rows.shape[0]])
    out[s:s + len(idx)] = (mean + keep * (src - mean) + strength * std * eps).reshape((len(idx),) + out.shape[1:])
  return out
