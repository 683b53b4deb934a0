"""The baselines discovery must beat, in latent space: the fitted Gaussian, and
"copy with noise" (few-shot latents re-noised)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from discovery_jax.discovery.linalg import as_rows, latent_shape
from discovery_jax.discovery.prior import GaussianPrior, fit_prior, sample_prior


def sample_gaussian_baseline(prior: GaussianPrior, n: int, key: jax.Array, *, chunk: int = 64) -> np.ndarray:
  """n latents straight from the fitted prior (draw i from ``fold_in(key, i)``)."""
  out = np.empty((n,) + prior.shape, np.float32)
  for s in range(0, n, chunk):
    idx = np.arange(s, min(n, s + chunk))
    out[s : s + len(idx)] = np.asarray(sample_prior(prior, key, idx)).reshape((len(idx),) + prior.shape)
  return out


def renoise_baseline(
    ood_bank: Any, n: int, key: jax.Array, strength: float, *, prior: GaussianPrior | None = None
) -> np.ndarray:
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
  out = np.empty((n,) + latent_shape(ood_bank), np.float32)
  keep = math.sqrt(1.0 - strength**2)
  for s in range(0, n, 64):
    idx = np.arange(s, min(n, s + 64))
    eps = np.asarray(sample_prior(unit, key, idx))
    src = np.asarray(rows[idx % rows.shape[0]])
    out[s : s + len(idx)] = (mean + keep * (src - mean) + strength * std * eps).reshape((len(idx),) + out.shape[1:])
  return out
