"""Evaluation metrics on synthetic features with known answers, and the offline
stand-in feature extractors."""

import json
import pickle

import numpy as np
import pytest

from discovery_jax.metrics import features
from discovery_jax.metrics import scores as metrics


def _normal(n, d, seed, shift=0.0):
  return np.random.default_rng(seed).standard_normal((n, d)) + shift


# ---------------------------------------------------------------------------
# FID.


def test_frechet_distance_closed_form_for_diagonal_covariances():
  rng = np.random.default_rng(0)
  d = 6
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  v1, v2 = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
  assert got == pytest.approx(want, rel=1e-9)
  assert metrics.frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0.0, abs=1e-9)


def test_fid_from_features_known_answers():
  d = 8
  a, b = _normal(20000, d, 0), _normal(20000, d, 1)
  mu = np.linspace(-1.0, 1.0, d)
  assert metrics.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
  assert metrics.fid_from_features(a, b) < 0.01
  assert metrics.fid_from_features(a, b + mu) == pytest.approx(mu @ mu, rel=0.03)
  assert isinstance(metrics.fid_from_features(a, b), float)


def test_fid_singular_covariances_are_handled():
  # Fewer samples than dimensions: both covariances are singular.
  a, b = _normal(40, 100, 0), _normal(40, 100, 1)
  same = metrics.fid_from_features(a, a[::-1])
  other = metrics.fid_from_features(a, b)
  assert np.isfinite(other) and other > 10 and same == pytest.approx(0.0, abs=1e-6)
  assert metrics.fid_from_features(a, b, method="eigh") == pytest.approx(other, rel=1e-6)
  assert metrics.fid_from_features(a, a[::-1], method="eigh") == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="feature dimensions differ"):
    metrics.fid_from_features(a, b[:, :50])


# ---------------------------------------------------------------------------
# KID.


def _kid_by_definition(x, y):
  k = lambda u, v: (u @ v / x.shape[1] + 1.0) ** 3
  m = len(x)
  kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  return kxx + kyy - 2 * kxy


def test_kid_matches_its_definition_and_known_answers():
  x, y = _normal(7, 5, 0), _normal(7, 5, 1, shift=0.3)
  one = metrics.kid(x, y, num_subsets=1, subset_size=7)
  assert one["kid_mean"] == pytest.approx(_kid_by_definition(x, y), rel=1e-10)
  assert one["kid_std"] == 0.0 and one["subset_size"] == 7

  a, b = _normal(2000, 16, 2), _normal(2000, 16, 3)
  same = metrics.kid(a, b, num_subsets=20, subset_size=500)
  shifted = metrics.kid(a, b + 0.5, num_subsets=20, subset_size=500)
  assert abs(same["kid_mean"]) < max(3 * same["kid_std"], 1e-3)
  assert shifted["kid_mean"] > 10 * max(same["kid_std"], 1e-3)
  assert metrics.kid(a[:30], b, num_subsets=2)["subset_size"] == 30  # clipped to the smaller set.


# ---------------------------------------------------------------------------
# Precision / recall.


def test_precision_recall_known_answers():
  real = _normal(400, 8, 0)
  assert metrics.precision_recall(real, real.copy()) == {"precision": 1.0, "recall": 1.0, "k": 3}
  far = metrics.precision_recall(real, real + 100.0)
  assert far["precision"] == 0.0 and far["recall"] == 0.0
  # Half the fakes are real samples, half far away: precision 1/2; recall stays 1.
  half = metrics.precision_recall(real, np.concatenate([real[:200], real[200:] + 100.0]))
  assert half["precision"] == pytest.approx(0.5) and half["recall"] > 0.9
  # Mode collapse: all fakes near one real sample -> high precision, low recall.
  collapsed = metrics.precision_recall(real, real[:1] + 1e-3 * _normal(50, 8, 1))
  assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.1
  with pytest.raises(ValueError, match="more than 3 samples"):
    metrics.precision_recall(real[:3], real)


# ---------------------------------------------------------------------------
# Diversity.


def test_diversity():
  d = 64
  x = _normal(300, d, 0)
  div = metrics.diversity(x, chunk=64)  # several chunks.
  assert div["num_pairs"] == 300 * 299 // 2
  assert div["mean_pairwise_distance"] == pytest.approx(np.sqrt(2 * d), rel=0.02)
  full = np.linalg.norm(x[:, None] - x[None], axis=-1)[np.triu_indices(300, 1)]
  assert div["mean_pairwise_distance"] == pytest.approx(full.mean(), rel=1e-9)
  assert div["std_pairwise_distance"] == pytest.approx(full.std(), rel=1e-6)
  assert metrics.diversity(np.repeat(x[:1], 10, 0))["mean_pairwise_distance"] == pytest.approx(0, abs=1e-6)
  assert metrics.diversity(x, max_samples=50)["num_samples"] == 50


def test_pixel_diversity():
  rng = np.random.default_rng(0)
  noise = rng.uniform(-1, 1, (40, 16, 16, 3)).astype(np.float32)
  got = metrics.pixel_diversity(noise)["mean_pairwise_rms"]
  assert got == pytest.approx(np.sqrt(1 / 6), rel=0.02)  # E|u - v|^2 = 1/6 for u, v ~ U(0, 1).
  same = metrics.pixel_diversity(np.repeat(noise[:1], 5, 0))["mean_pairwise_rms"]
  assert same == pytest.approx(0.0, abs=1e-3)
  as_uint8 = np.round((noise + 1) * 127.5).astype(np.uint8)
  assert metrics.pixel_diversity(as_uint8)["mean_pairwise_rms"] == pytest.approx(got, abs=2e-3)


# ---------------------------------------------------------------------------
# Memorization.


def test_memorization_flags_copies_not_fresh_samples():
  d = 32
  train, heldout, fresh = _normal(10, d, 0), _normal(200, d, 1), _normal(200, d, 2)
  copies = np.concatenate([train[[0, 3, 3, 7]], train[[1]] + 1e-3])
  new = metrics.memorization(fresh, train, heldout)
  copied = metrics.memorization(copies, train, heldout, return_per_sample=True)
  assert new["num_exact_copies"] == 0 and new["frac_near_copies"] == 0.0
  assert 0.35 < new["frac_closer_than_heldout_median"] < 0.65
  assert 0.8 < new["nn_median_ratio"] < 1.25
  assert copied["num_exact_copies"] == 4 and copied["frac_near_copies"] == 1.0
  assert copied["frac_closer_than_heldout_median"] == 1.0 and copied["gen_nn_min"] == 0.0
  assert copied["gen_nn_train_index"] == [0, 3, 3, 7, 1]
  assert copied["num_train_images_matched"] == 4
  assert "num_heldout" not in metrics.memorization(fresh, train)
  json.dumps(copied)


# ---------------------------------------------------------------------------
# Domain classifier.


def test_domain_classifier_on_separable_data():
  d = 20
  direction = np.zeros(d)
  direction[0] = 4.0
  id_real, ood_real = _normal(200, d, 0), _normal(200, d, 1, shift=direction)
  clf = metrics.fit_domain_classifier(id_real, ood_real, seed=0)
  assert clf.fit_report["heldout_accuracy"] > 0.95 and clf.fit_report["num_heldout"] == 100

  # Generated: 70 in the target domain, 30 fallen back into the ID domain.
  gen = np.concatenate([_normal(70, d, 2, shift=direction), _normal(30, d, 3)])
  rates = metrics.domain_rates(clf, gen)
  assert rates["ood_hit_rate"] == pytest.approx(0.7, abs=0.05)
  assert rates["ood_hit_rate"] + rates["id_fallback_rate"] == pytest.approx(1.0)
  assert rates["confident_ood_rate"] + rates["confident_id_rate"] + rates["ambiguous_rate"] == pytest.approx(1.0)
  assert rates["classifier"]["num_id"] == 200
  np.testing.assert_array_equal(clf.predict(gen), (clf.predict_ood_proba(gen) >= 0.5).astype(int))
  json.dumps(rates)

  # Reusable after pickling; refuses to predict unfitted.
  again = pickle.loads(pickle.dumps(clf))
  np.testing.assert_allclose(again.predict_ood_proba(gen), clf.predict_ood_proba(gen))
  with pytest.raises(RuntimeError, match="not fitted"):
    metrics.DomainClassifier().rates(gen)


def test_inputs_are_validated():
  with pytest.raises(ValueError, match="NaN"):
    metrics.fid_from_features(np.full((5, 2), np.nan), np.zeros((5, 2)))
  with pytest.raises(ValueError, match=r"must be \(N, F\)"):
    metrics.diversity(np.zeros((2, 3, 4)))


# ---------------------------------------------------------------------------
# Stand-in feature extractors.


def _images(n=10, size=32, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: features.random_conv_extractor(seed, size=32),
        lambda seed: features.random_projection_extractor(seed, dim=64, size=16),
        lambda seed: features.pixel_extractor(16),
    ],
)
def test_standin_extractors_deterministic_and_batch_independent(make):
  x = _images()
  ex = make(0)
  f4 = ex(x, batch_size=4)  # 4 + 4 + 2 (padded).
  assert f4.shape == (10, ex.dim) and f4.dtype == np.float32
  np.testing.assert_allclose(ex(x, batch_size=16), f4, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ex(iter([x[:3], x[3:]]), batch_size=7), f4, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(make(0)(x, batch_size=4), f4)  # rebuilt from the seed.
  if ex.name != "pixels":
    assert make(0).info["weights_sha256"] == ex.info["weights_sha256"]
    assert not np.allclose(make(1)(x, batch_size=4), f4)
  # uint8 in [0, 255] and floats in [-1, 1] are the same images.
  as_uint8 = np.round((x + 1) * 127.5).astype(np.uint8)
  np.testing.assert_allclose(ex(as_uint8, batch_size=4), f4, rtol=1e-5, atol=1e-6)


def test_extractor_conventions():
  gray = _images(4, 16)[..., :1]
  ex = features.pixel_extractor(None)
  np.testing.assert_allclose(ex(gray), ex(np.repeat(gray, 3, -1)))
  unquantized = ex(np.full((1, 4, 4, 3), 0.001, np.float32), quantize=False)
  assert unquantized.max() == pytest.approx(0.001, abs=1e-6)
  # Quantized: 0.001 in [-1, 1] is level 128 of 255, i.e. 2 * 128 / 255 - 1 = 1 / 255.
  assert ex(np.full((1, 4, 4, 3), 0.001, np.float32)).max() == pytest.approx(1 / 255, abs=1e-6)
  assert ex(np.full((1, 4, 4, 3), 5.0, np.float32), quantize=False).max() == 1.0  # clipped.
  with pytest.raises(ValueError, match="unknown feature extractor"):
    features.create_extractor("lpips")
  with pytest.raises(ValueError, match="inception_path"):
    features.create_extractor("inception")
  with pytest.raises(ValueError, match="1 or 3 channels"):
    ex(np.zeros((2, 4, 4, 4), np.float32))
  with pytest.raises(ValueError, match="NHWC"):
    ex(np.zeros((4, 4, 3), np.float32))  # one image without its batch axis.


def test_random_conv_features_separate_domains():
  """The stand-in must see the difference between two image families, or the demo's
  metrics would be meaningless."""
  rng = np.random.default_rng(0)
  smooth = np.cumsum(rng.standard_normal((60, 32, 32, 3)), axis=1) / 16.0
  noisy = rng.uniform(-1, 1, (60, 32, 32, 3))
  ex = features.random_conv_extractor(0, size=32)
  fa, fb = ex(np.clip(smooth, -1, 1)), ex(noisy)
  clf = metrics.fit_domain_classifier(fa[:40], fb[:40])
  assert clf.rates(fb[40:])["ood_hit_rate"] == 1.0 and clf.rates(fa[40:])["ood_hit_rate"] == 0.0
  within = metrics.fid_from_features(fa[:30], fa[30:], method="eigh")
  assert within < 0.5 * metrics.fid_from_features(fa[:30], fb[:30], method="eigh")
