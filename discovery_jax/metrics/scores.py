"""Sample-quality metrics over feature arrays (N, F): pure numpy/scipy/sklearn, float64.

Every function returns plain Python floats/ints (or dicts of them), ready for JSON.
Features come from ``discovery_jax.metrics.features`` (Inception pool3 for FID/KID; the
stand-ins elsewhere). What each metric answers for this project (docs/method.md, "Evaluation"):

* ``fid_from_features`` / ``kid``: distance of the generated set to held-out real
  target images (KID is unbiased, so it is the one to trust with few real images);
* ``precision_recall``: fidelity (generated inside the real manifold) and coverage
  (real inside the generated manifold), Kynkaanniemi et al. 2019;
* ``diversity`` / ``pixel_diversity``: mean pairwise distance within a set;
* ``memorization``: are the samples new images or copies of the few-shot training set;
* ``DomainClassifier``: how many samples land in the target domain and how many fall
  back into the model's own (ID) domain (mode interference, step 7).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterator

import numpy as np
from scipy import linalg

DEFAULT_CHUNK = 1024


def as_features(x: Any, name: str = "features") -> np.ndarray:
  """A finite float64 (N, F) array; 1-D input is one feature per sample."""
  x = np.asarray(x, dtype=np.float64)
  if x.ndim == 1:
    x = x[:, None]
  if x.ndim != 2:
    raise ValueError(f"{name} must be (N, F), got shape {x.shape}")
  if x.shape[0] == 0:
    raise ValueError(f"{name} is empty")
  if not np.isfinite(x).all():
    raise ValueError(f"{name} contains NaN or inf")
  return x


def _check_dims(a: np.ndarray, b: np.ndarray) -> None:
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")


# ---------------------------------------------------------------------------
# Frechet distance (FID).


def gaussian_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased covariance (``np.cov(rowvar=False)``, as pytorch-fid)."""
  x = as_features(features)
  if x.shape[0] < 2:
    raise ValueError("a covariance needs at least 2 samples")
  return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrtm_checked(a: np.ndarray) -> tuple[np.ndarray, float]:
  """``sqrtm(a)`` and its relative residual |X X - a|_F / |a|_F (inf when non-finite).

  scipy warns on every singular product, the normal case with fewer samples than
  dimensions; the residual says whether the root is actually inaccurate.
  """
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    x = linalg.sqrtm(a)
  if not np.isfinite(x).all():
    return x, float("inf")
  return x, float(np.linalg.norm(x @ x - a) / max(np.linalg.norm(a), 1e-300))


def _trace_sqrt_product_eigh(s1: np.ndarray, s2: np.ndarray) -> float:
  """tr((S1 S2)^(1/2)) as the sum of sqrt(eig(S1^(1/2) S2 S1^(1/2))), a symmetric PSD
  matrix with the same eigenvalues as S1 S2: two ``eigh`` calls, no complex Schur form."""
  w, v = np.linalg.eigh(s1)
  root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
  m = root @ s2 @ root
  return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6, method: str = "sqrtm") -> float:
  """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

  ``method='sqrtm'`` is the reference formula (pytorch-fid, TTUR). ``sqrtm`` of a
  product of singular covariances (fewer samples than dimensions) can be non-finite
  or inaccurate: then ``eps`` is added to both diagonals and the root retaken. An
  imaginary part from round-off is discarded when negligible, otherwise this raises.
  ``method='eigh'`` computes the same trace from symmetric eigendecompositions: equal
  to round-off, several times faster at 2048 dimensions, never complex.
  A round-off negative result (identical statistics) is reported as 0.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
    raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
  diff = mu1 - mu2
  if method == "eigh":
    tr_covmean = _trace_sqrt_product_eigh(s1, s2)
  elif method == "sqrtm":
    covmean, residual = _sqrtm_checked(s1 @ s2)
    if residual > 1e-5:
      offset = np.eye(s1.shape[0]) * eps
      covmean, residual = _sqrtm_checked((s1 + offset) @ (s2 + offset))
      if not np.isfinite(residual):
        raise ValueError("frechet_distance: sqrtm is not finite even with eps on the diagonal")
    if np.iscomplexobj(covmean):
      diag = np.diagonal(covmean)
      if np.abs(diag.imag).max() > 1e-3 * max(1.0, np.abs(diag.real).max()):
        raise ValueError(
            f"frechet_distance: sqrtm has a significant imaginary component " f"({np.abs(diag.imag).max():.3g})"
        )
      covmean = covmean.real
    tr_covmean = float(np.trace(covmean))
  else:
    raise ValueError(f"method must be 'sqrtm' or 'eigh', got {method!r}")
  fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
  return max(fd, 0.0) if fd > -1e-6 * max(1.0, float(np.trace(s1) + np.trace(s2))) else fd


def fid_from_features(a: Any, b: Any, eps: float = 1e-6, method: str = "sqrtm") -> float:
  """FID between two feature sets (use Inception pool3 features for a real FID)."""
  a, b = as_features(a, "a"), as_features(b, "b")
  _check_dims(a, b)
  return frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b), eps=eps, method=method)


# ---------------------------------------------------------------------------
# KID.


def _polynomial_kernel(a: np.ndarray, b: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
  return (gamma * (a @ b.T) + coef0) ** degree


def kid(
    a: Any,
    b: Any,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> dict:
  """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the kernel
  ``(gamma x.y + coef0)^degree``, gamma = 1/F by default, averaged over random subsets.

  Subsets draw ``min(subset_size, len(a), len(b))`` samples without replacement from
  each set; ``kid_std`` is the standard deviation over subsets (ddof 0).
  """
  a, b = as_features(a, "a"), as_features(b, "b")
  _check_dims(a, b)
  m = min(int(subset_size), a.shape[0], b.shape[0])
  if m < 2:
    raise ValueError("KID needs at least 2 samples in each set")
  gamma = 1.0 / a.shape[1] if gamma is None else float(gamma)
  rng = np.random.default_rng(seed)
  values = np.empty(int(num_subsets))
  for s in range(int(num_subsets)):
    x = a[rng.choice(a.shape[0], m, replace=False)]
    y = b[rng.choice(b.shape[0], m, replace=False)]
    kxx = _polynomial_kernel(x, x, degree, gamma, coef0)
    kyy = _polynomial_kernel(y, y, degree, gamma, coef0)
    kxy = _polynomial_kernel(x, y, degree, gamma, coef0)
    values[s] = (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2.0 * kxy.mean()
    )
  return {
      "kid_mean": float(values.mean()),
      "kid_std": float(values.std()),
      "num_subsets": int(num_subsets),
      "subset_size": int(m),
  }


# ---------------------------------------------------------------------------
# Distances.


def _row_chunks(n: int, chunk: int) -> Iterator[slice]:
  for i in range(0, n, chunk):
    yield slice(i, min(i + chunk, n))


def pairwise_distances(a: Any, b: Any) -> np.ndarray:
  """Euclidean distances (len(a), len(b)) via the Gram expansion, clipped at 0.

  Keeps float32 input in float32 (pixel arrays are large) and computes everything
  else in float64.
  """
  a, b = np.asarray(a), np.asarray(b)
  dtype = np.float32 if a.dtype == np.float32 and b.dtype == np.float32 else np.float64
  a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
  sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
  return np.sqrt(np.maximum(sq, 0.0))


def nearest_neighbours(query: Any, reference: Any, *, chunk: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
  """For each query row: (distance to, index of) its nearest reference row.

  The winner's distance is recomputed directly as |q - r| so that an exact copy
  reads 0 rather than the Gram expansion's round-off.
  """
  q, r = as_features(query, "query"), as_features(reference, "reference")
  _check_dims(q, r)
  idx = np.empty(q.shape[0], np.int64)
  for sl in _row_chunks(q.shape[0], chunk):
    idx[sl] = pairwise_distances(q[sl], r).argmin(axis=1)
  dist = np.sqrt(((q - r[idx]) ** 2).sum(axis=1))
  return dist, idx


def kth_neighbour_radii(x: np.ndarray, k: int, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
  """Distance from each row of ``x`` to its k-th nearest OTHER row."""
  radii = np.empty(x.shape[0])
  for sl in _row_chunks(x.shape[0], chunk):
    d = pairwise_distances(x[sl], x)
    # Column k of the sorted row: index 0 is the row itself (distance 0).
    radii[sl] = np.partition(d, k, axis=1)[:, k]
  return radii


def _inside_manifold(query: np.ndarray, support: np.ndarray, radii: np.ndarray, chunk: int) -> np.ndarray:
  inside = np.empty(query.shape[0], bool)
  for sl in _row_chunks(query.shape[0], chunk):
    inside[sl] = (pairwise_distances(query[sl], support) <= radii[None, :]).any(axis=1)
  return inside


def precision_recall(real: Any, fake: Any, *, k: int = 3, chunk: int = DEFAULT_CHUNK) -> dict:
  """Improved precision and recall (Kynkaanniemi et al. 2019).

  Each set's manifold is the union of balls around its samples with radius the
  distance to the k-th nearest neighbour in the same set. Precision: fraction of
  fakes inside the real manifold. Recall: fraction of reals inside the fake manifold.
  """
  real, fake = as_features(real, "real"), as_features(fake, "fake")
  _check_dims(real, fake)
  if min(real.shape[0], fake.shape[0]) <= k:
    raise ValueError(
        f"precision_recall with k={k} needs more than {k} samples in each set "
        f"(got {real.shape[0]} real, {fake.shape[0]} fake)"
    )
  real_radii = kth_neighbour_radii(real, k, chunk)
  fake_radii = kth_neighbour_radii(fake, k, chunk)
  precision = _inside_manifold(fake, real, real_radii, chunk).mean()
  recall = _inside_manifold(real, fake, fake_radii, chunk).mean()
  return {"precision": float(precision), "recall": float(recall), "k": int(k)}


# ---------------------------------------------------------------------------
# Diversity.


def _subsample(x: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
  if max_samples is not None and x.shape[0] > max_samples:
    x = x[np.sort(np.random.default_rng(seed).choice(x.shape[0], int(max_samples), replace=False))]
  return x


def _pairwise_moments(x: np.ndarray, chunk: int) -> tuple[float, float, int]:
  """Mean and std of |x_i - x_j| over all pairs i < j, streamed in row chunks."""
  n = x.shape[0]
  total, total_sq, count = 0.0, 0.0, 0
  for sl in _row_chunks(n, chunk):
    d = pairwise_distances(x[sl], x).astype(np.float64)
    rows = np.arange(sl.start, sl.stop)[:, None]
    d = d[np.arange(n)[None, :] > rows]  # strict upper triangle.
    total += d.sum()
    total_sq += (d * d).sum()
    count += d.size
  mean = total / count
  return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0)), count


def diversity(features: Any, *, max_samples: int | None = None, seed: int = 0, chunk: int = DEFAULT_CHUNK) -> dict:
  """Mean (and std) pairwise Euclidean feature distance within one set.

  Compare a generated set's value with the held-out real set's: lower means
  collapsed or repetitive samples. ``max_samples`` subsamples (seeded) large sets.
  """
  x = _subsample(as_features(features), max_samples, seed)
  if x.shape[0] < 2:
    raise ValueError("diversity needs at least 2 samples")
  mean, std, pairs = _pairwise_moments(x, chunk)
  return {
      "mean_pairwise_distance": float(mean),
      "std_pairwise_distance": float(std),
      "num_samples": int(x.shape[0]),
      "num_pairs": int(pairs),
  }


def pixel_diversity(
    images: Any,
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
    max_samples: int | None = 500,
    seed: int = 0,
    chunk: int = 256,
) -> dict:
  """Mean pairwise RMS pixel difference on a [0, 1] scale (no learned metric: an
  LPIPS-free diversity). 0 for identical images; ~0.41 for independent uniform noise.

  Runs in float32 on ``max_samples`` images (seeded subsample; None for all).
  """
  x = np.asarray(images)
  if x.ndim < 2 or x.shape[0] < 2:
    raise ValueError(f"pixel_diversity needs at least 2 images, got shape {x.shape}")
  x = _subsample(x.reshape(x.shape[0], -1), max_samples, seed)
  if x.dtype == np.uint8:
    x = x.astype(np.float32) / 255.0
  else:
    lo, hi = value_range
    x = ((x.astype(np.float32) - lo) / (hi - lo)).astype(np.float32)
  scale = 1.0 / math.sqrt(x.shape[1])
  mean, std, pairs = _pairwise_moments(x, chunk)
  return {
      "mean_pairwise_rms": float(mean * scale),
      "std_pairwise_rms": float(std * scale),
      "num_samples": int(x.shape[0]),
      "num_pairs": int(pairs),
  }


# ---------------------------------------------------------------------------
# Memorization.


def memorization(
    generated: Any,
    train: Any,
    heldout: Any | None = None,
    *,
    copy_ratio: float = 0.1,
    return_per_sample: bool = False,
    chunk: int = DEFAULT_CHUNK,
) -> dict:
  """New images or copies? Nearest-neighbour distances to the few-shot training set.

  The reference scale is the same statistic for held-out real target images (fresh
  draws of the target domain, never trained on): a generator that copies puts its
  samples much closer to the training set than real new images are.

  Reports, for generated and held-out sets, the mean/median NN distance to ``train``;
  ``frac_closer_than_heldout_median`` (0.5 is what fresh target images give, values
  near 1 mean the samples hug the training images); ``frac_near_copies`` (NN distance
  below ``copy_ratio`` x the held-out median) and ``num_exact_copies`` (distance <=
  1e-6 x that median, i.e. identical up to round-off). ``return_per_sample`` adds
  per-sample distances and training indices (lists) for figures.
  """
  gen, tr = as_features(generated, "generated"), as_features(train, "train")
  _check_dims(gen, tr)
  d_gen, idx_gen = nearest_neighbours(gen, tr, chunk=chunk)
  out: dict[str, Any] = {
      "num_generated": int(gen.shape[0]),
      "num_train": int(tr.shape[0]),
      "gen_nn_mean": float(d_gen.mean()),
      "gen_nn_median": float(np.median(d_gen)),
      "gen_nn_min": float(d_gen.min()),
      "num_train_images_matched": int(np.unique(idx_gen).size),
  }
  if heldout is not None:
    ho = as_features(heldout, "heldout")
    _check_dims(ho, tr)
    d_ho, _ = nearest_neighbours(ho, tr, chunk=chunk)
    median = float(np.median(d_ho))
    out.update(
        {
            "num_heldout": int(ho.shape[0]),
            "heldout_nn_mean": float(d_ho.mean()),
            "heldout_nn_median": median,
            "frac_closer_than_heldout_median": float((d_gen < median).mean()),
            "nn_median_ratio": float(np.median(d_gen) / median) if median > 0 else float("nan"),
            "copy_ratio": float(copy_ratio),
            "frac_near_copies": float((d_gen < copy_ratio * median).mean()),
            "num_exact_copies": int((d_gen <= 1e-6 * median).sum()),
        }
    )
  else:
    out["num_exact_copies"] = int((d_gen <= 1e-6 * max(float(np.median(d_gen)), 1e-12)).sum())
  if return_per_sample:
    out["gen_nn_distances"] = [float(v) for v in d_gen]
    out["gen_nn_train_index"] = [int(v) for v in idx_gen]
  return out


# ---------------------------------------------------------------------------
# Domain classifier.


class DomainClassifier:
  """Logistic regression (standardized features, balanced class weights): ID = 0, OOD = 1.

  ``fit`` trains on real ID vs real OOD features, reporting held-out accuracy on a
  stratified split before refitting on everything; ``rates`` then scores generated
  samples. Picklable, so a trained classifier can be saved and reused.
  """

  def __init__(self, C: float = 1.0, max_iter: int = 5000):
    self.C = float(C)
    self.max_iter = int(max_iter)
    self.pipeline = None
    self.fit_report: dict = {}

  def _make(self):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight="balanced")
    )

  def fit(
      self, id_features: Any, ood_features: Any, *, heldout_fraction: float = 0.25, seed: int = 0
  ) -> "DomainClassifier":
    id_x, ood_x = as_features(id_features, "id_features"), as_features(ood_features, "ood_features")
    _check_dims(id_x, ood_x)
    x = np.concatenate([id_x, ood_x])
    y = np.concatenate([np.zeros(len(id_x), np.int64), np.ones(len(ood_x), np.int64)])
    report: dict[str, Any] = {"num_id": int(len(id_x)), "num_ood": int(len(ood_x)), "C": self.C}
    if heldout_fraction > 0 and min(len(id_x), len(ood_x)) >= 4:
      from sklearn.metrics import balanced_accuracy_score
      from sklearn.model_selection import train_test_split

      xtr, xte, ytr, yte = train_test_split(x, y, test_size=heldout_fraction, stratify=y, random_state=seed)
      pred = self._make().fit(xtr, ytr).predict(xte)
      report.update(
          {
              "heldout_accuracy": float((pred == yte).mean()),
              "heldout_balanced_accuracy": float(balanced_accuracy_score(yte, pred)),
              "num_heldout": int(len(yte)),
          }
      )
    self.pipeline = self._make().fit(x, y)
    report["train_accuracy"] = float((self.pipeline.predict(x) == y).mean())
    self.fit_report = report
    return self

  def _check_fitted(self) -> None:
    if self.pipeline is None:
      raise RuntimeError("DomainClassifier is not fitted; call fit(id_features, ood_features) first")

  def predict_ood_proba(self, features: Any) -> np.ndarray:
    """P(target / OOD domain) per sample, float64 (N,)."""
    self._check_fitted()
    return self.pipeline.predict_proba(as_features(features))[:, 1]

  def predict(self, features: Any, threshold: float = 0.5) -> np.ndarray:
    """1 = target (OOD) domain, 0 = the model's own (ID) domain."""
    return (self.predict_ood_proba(features) >= threshold).astype(np.int64)

  def rates(self, features: Any, *, threshold: float = 0.5, confidence: float = 0.9) -> dict:
    """Where generated samples land: ``ood_hit_rate`` (P(OOD) >= threshold) and
    ``id_fallback_rate`` (the rest); ``confident_*`` use ``confidence`` / 1 - confidence,
    and ``ambiguous_rate`` in between flags mixtures of the two domains."""
    p = self.predict_ood_proba(features)
    confident_ood, confident_id = p >= confidence, p <= 1.0 - confidence
    return {
        "ood_hit_rate": float((p >= threshold).mean()),
        "id_fallback_rate": float((p < threshold).mean()),
        "confident_ood_rate": float(confident_ood.mean()),
        "confident_id_rate": float(confident_id.mean()),
        "ambiguous_rate": float((~confident_ood & ~confident_id).mean()),
        "mean_ood_probability": float(p.mean()),
        "num_samples": int(p.size),
        "threshold": float(threshold),
        "confidence": float(confidence),
    }


def fit_domain_classifier(id_features: Any, ood_features: Any, **kwargs: Any) -> DomainClassifier:
  """``DomainClassifier(C, max_iter).fit(id, ood, heldout_fraction, seed)`` in one call."""
  init = {k: kwargs.pop(k) for k in ("C", "max_iter") if k in kwargs}
  return DomainClassifier(**init).fit(id_features, ood_features, **kwargs)


def domain_rates(classifier: DomainClassifier, generated: Any, **kwargs: Any) -> dict:
  """``classifier.rates(generated)`` plus the classifier's own fit report."""
  return {**classifier.rates(generated, **kwargs), "classifier": dict(classifier.fit_report)}
