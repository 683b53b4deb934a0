"""The paper's two claims tested on a bank: Gaussian latents, separable domains."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from discovery_jax.discovery.linalg import as_rows, check_banks, span_features, stacked_gram
from discovery_jax.discovery.prior import fit_prior


def gaussianity(
    bank: Any, *, num_dims: int = 1000, seed: int = 0, alpha: float = 0.05, return_pvalues: bool = False
) -> dict:
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
  return {
      "test": name,
      "num_latents": int(n),
      "num_dims": int(len(dims)),
      "alpha": float(alpha),
      "fraction_rejected": k / len(dims),
      "expected_fraction": float(alpha),
      "binomial_pvalue": float(sps.binomtest(k, len(dims), alpha, alternative="greater").pvalue),
      "median_pvalue": float(np.median(p)),
      "mean_skew": float(np.mean(sps.skew(x, axis=0))),
      "mean_excess_kurtosis": float(np.mean(sps.kurtosis(x, axis=0))),
      **({"pvalues": np.asarray(p, np.float64)} if return_pvalues else {}),
  }


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
    raise ValueError(
        f"separability with num_folds={num_folds} needs at least {max(2, num_folds)} latents per "
        f"bank, got OOD {no}, ID {ni}"
    )
  po, pi = fit_prior(ro), fit_prior(ri)
  dist = float(np.linalg.norm(np.asarray(po.mean, np.float64) - np.asarray(pi.mean, np.float64)))
  var_o, var_i = po.sigma**2, pi.sigma**2
  d2_unbiased = dist**2 - d * var_o / no - d * var_i / ni
  sigma = math.sqrt((var_o + var_i) / 2)
  debiased = math.sqrt(max(d2_unbiased, 0.0))

  g = stacked_gram(ro, ri)
  g = g / np.mean(np.diag(g))
  y = np.r_[np.ones(no, int), np.zeros(ni, int)]
  folds = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
  acc, acc_centroid = [], []
  for train, test in folds.split(np.zeros(len(y)), y):
    f, _ = span_features(g, train)
    clf = LogisticRegression(C=C, max_iter=2000).fit(f[train], y[train])
    acc.append(clf.score(f[test], y[test]))
    # Nearest class mean: |x - m_k|^2 = |x|^2 - 2 x.m_k + |m_k|^2, all from the Gram matrix.
    to, ti = train[y[train] == 1], train[y[train] == 0]
    score = lambda idx: -2 * g[:, idx].mean(1) + g[np.ix_(idx, idx)].mean()
    pred = (score(to) < score(ti)).astype(int)
    acc_centroid.append(float(np.mean(pred[test] == y[test])))
  return {
      "dim": int(d),
      "num_ood": int(no),
      "num_id": int(ni),
      "sigma_ood": po.sigma,
      "sigma_id": pi.sigma,
      "centre_distance": dist,
      "centre_distance_sq_unbiased": float(d2_unbiased),
      "centre_distance_debiased": debiased,
      "d_quarter_scale": sigma * d**0.25,
      "d_quarter_ratio": debiased / (sigma * d**0.25),
      "distance_gap_z": float(d2_unbiased / (math.sqrt(8 * d) * sigma**2)),
      "classifier": "logistic regression (L2, C=%g) on exact span-of-training coordinates" % C,
      "num_folds": int(num_folds),
      "heldout_accuracy": float(np.mean(acc)),
      "heldout_accuracy_std": float(np.std(acc)),
      "nearest_mean_accuracy": float(np.mean(acc_centroid)),
      "chance_accuracy": max(no, ni) / (no + ni),
  }
