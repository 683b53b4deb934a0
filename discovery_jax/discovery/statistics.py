"""Descriptive geometry of latent banks: distances, angles, norms against chi(d)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from discovery_jax.discovery.linalg import (
    TINY,
    angle_from_gram,
    as_rows,
    bank_mean,
    check_banks,
    dist_from_gram,
    gram,
    norms,
    row_blocks,
)
from discovery_jax.discovery.prior import GaussianPrior, fit_prior, gaussian_geometry


def pairwise_distances(a: Any, b: Any | None = None) -> np.ndarray:
  """(Na, Nb) Euclidean distances via the Gram matrix (zero diagonal when b is None)."""
  g = gram(a, b)
  na2 = norms(a) ** 2
  out = dist_from_gram(g, na2, na2 if b is None else norms(b) ** 2)
  if b is None:
    np.fill_diagonal(out, 0.0)
  return out


def angles_at_origin(a: Any, b: Any | None = None) -> np.ndarray:
  """(Na, Nb) angles in degrees between latents seen from the origin."""
  g = gram(a, b)
  na2 = norms(a) ** 2
  out = angle_from_gram(g, na2, na2 if b is None else norms(b) ** 2)
  if b is None:
    np.fill_diagonal(out, 0.0)
  return out


def vertex_from_gram(g: np.ndarray, triples: np.ndarray) -> np.ndarray:
  i, j, k = triples[:, 0], triples[:, 1], triples[:, 2]
  dot = g[j, k] - g[i, j] - g[i, k] + g[i, i]
  nj = g[j, j] - 2 * g[i, j] + g[i, i]
  nk = g[k, k] - 2 * g[i, k] + g[i, i]
  cos = dot / np.sqrt(np.maximum(nj * nk, TINY))
  return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def angles_at_vertex(bank: Any, triples: Any) -> np.ndarray:
  """(T,) angles in degrees at latent i between latents j and k, for rows (i, j, k)."""
  triples = np.asarray(triples, np.int64)
  if triples.ndim != 2 or triples.shape[1] != 3:
    raise ValueError(f"triples must have shape (T, 3), got {triples.shape}")
  rows = as_rows(bank)
  used, inverse = np.unique(triples, return_inverse=True)
  g = gram(rows[used])
  return vertex_from_gram(g, inverse.reshape(triples.shape))


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


def mean_std(x: np.ndarray) -> dict:
  x = np.asarray(x, np.float64)
  return {"mean": float(x.mean()), "std": float(x.std())} if x.size else {"mean": float("nan"), "std": float("nan")}


def describe_from_gram(g: np.ndarray, num_triples: int, seed: int) -> dict:
  n = g.shape[0]
  n2 = np.diag(g).copy()
  iu = np.triu_indices(n, 1)
  out = {
      "num_latents": int(n),
      "norm": mean_std(np.sqrt(np.maximum(n2, 0))),
      "pairwise_distance": mean_std(dist_from_gram(g, n2, n2)[iu]),
      "angle_origin_deg": mean_std(angle_from_gram(g, n2, n2)[iu]),
  }
  if n >= 3 and num_triples > 0:
    out["angle_vertex_deg"] = mean_std(vertex_from_gram(g, random_triples(n, num_triples, seed)))
  return out


def describe_bank(bank: Any, *, num_triples: int = 2000, seed: int = 0) -> dict:
  """Mean/std of norms, pairwise distances, angles at the origin and at a vertex
  (``num_triples`` random triples), plus what an isotropic Gaussian with the
  bank's pooled variance predicts."""
  g = gram(bank)
  out = describe_from_gram(g, num_triples, seed)
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
  for s, b in row_blocks(rows):
    r[s : s + len(b)] = np.sqrt(np.square((b - mean) * inv_std).sum(1))
  if prior_from_bank:
    r *= math.sqrt(n / (n - 1))
  chi = sps.chi(df=d)
  ks = sps.kstest(r, chi.cdf)
  raw = norms(rows)
  return {
      "num_latents": int(n),
      "dim": int(d),
      "ks_statistic": float(ks.statistic),
      "ks_pvalue": float(ks.pvalue),
      "observed_mean": float(r.mean()),
      "observed_std": float(r.std(ddof=1)) if n > 1 else float("nan"),
      "chi_mean": float(chi.mean()),
      "chi_std": float(chi.std()),
      "raw_norm_mean": float(raw.mean()),
      "prior_shell_radius": prior.shell_radius(),
  }
