"""The mode-interference guard: a linear ID-vs-OOD classifier on latents."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from discovery_jax.discovery.linalg import as_rows, bank_mean, check_banks, row_blocks, span_features, stacked_gram


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


def project(rows: np.ndarray, w: np.ndarray) -> np.ndarray:
  out = np.empty(rows.shape[0], np.float64)
  for s, b in row_blocks(rows):
    out[s : s + len(b)] = b.astype(np.float64) @ w
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
    g = stacked_gram(ro, ri)
    scale = np.mean(np.diag(g))
    f, m = span_features(g / scale, np.arange(g.shape[0]))
    y = np.r_[np.ones(no, int), np.zeros(ri.shape[0], int)]
    clf = LogisticRegression(C=C, max_iter=2000).fit(f, y)
    alpha = (m @ clf.coef_[0]) / scale  # logit = coef . f(x), f(x) = (X_T x / scale) m  =>  w = X^T alpha
    w = np.zeros(ro.shape[1], np.float64)
    for rows, a in ((ro, alpha[:no]), (ri, alpha[no:])):
      for s, blk in row_blocks(rows):
        w += a[s : s + len(blk)] @ blk.astype(np.float64)
    b = float(clf.intercept_[0])
  else:
    raise ValueError(f"guard kind must be 'mean_diff' or 'logistic', got {kind!r}")
  scale = float(np.std(project(ro, w) + b)) or 1.0
  return LinearGuard(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32), jnp.asarray(scale, jnp.float32), kind)
