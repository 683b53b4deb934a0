"""Latent geometry and discovery on synthetic Gaussians with known answers.

Small d (3,072-8,000) and N (40-120) so the file runs in well under a minute; the
criteria of accepted latents are recomputed here directly in float64, independent
of the inner-product algebra the module uses.
"""

import json
import math

import jax
import numpy as np
import pytest

from discovery_jax import discovery as geo

D = 3072
SHAPE = (32, 32, 3)


def gaussian_bank(n, d, *, mean=0.0, sigma=1.0, seed=0, shape=None):
  x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32) * sigma + np.float32(mean)
  return x.reshape((n,) + shape) if shape else x


def angle(a, b):
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  return math.degrees(math.acos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1)))


def direct_criteria(c, id_refs, ood_refs):
  """The three criteria from their definitions: subtract, norm, arccos (float64)."""
  c = np.asarray(c, np.float64).ravel()
  dist = np.mean([np.linalg.norm(c - np.asarray(r, np.float64).ravel()) for r in id_refs])
  ang0 = np.mean([angle(c, r) for r in ood_refs])
  vecs = [np.asarray(r, np.float64).ravel() - c for r in ood_refs]
  angv = np.mean([angle(vecs[j], vecs[k]) for j in range(len(vecs)) for k in range(j + 1, len(vecs))])
  return np.array([dist, ang0, angv])


def assert_meets_criteria(result, ood, idb, indices, slack=0.01):
  targets = np.asarray(result.targets.values)
  tol = np.asarray(result.targets.tolerances)
  for i in indices:
    stats = direct_criteria(result.latents[i], idb[result.id_ref_index[i]], ood[result.ood_ref_index[i]])
    np.testing.assert_allclose(stats, result.stats[i], rtol=2e-5, atol=2e-3)
    assert np.all(np.abs(stats - targets) <= tol * (1 + slack)), (i, stats, targets, tol)


# ---------------------------------------------------------------------------
# Geometry of a high-dimensional Gaussian and the bank statistics.


def test_gaussian_shell_angles_and_distances():
  d, sigma = 8000, 2.0
  bank = gaussian_bank(60, d, sigma=sigma, seed=1)
  facts = geo.gaussian_geometry(d, sigma)
  desc = geo.describe_bank(bank, num_triples=500)
  assert desc["norm"]["mean"] == pytest.approx(facts["shell_radius"], rel=0.01)
  assert desc["norm"]["std"] < 0.02 * facts["shell_radius"]  # a thin shell
  assert desc["pairwise_distance"]["mean"] == pytest.approx(facts["pairwise_distance"], rel=0.01)
  assert desc["angle_origin_deg"]["mean"] == pytest.approx(90.0, abs=0.3)
  assert desc["angle_origin_deg"]["std"] == pytest.approx(facts["angle_origin_std_deg"], rel=0.2)
  assert desc["angle_vertex_deg"]["mean"] == pytest.approx(60.0, abs=0.3)
  assert desc["isotropic_prediction"]["sigma"] == pytest.approx(sigma, rel=0.01)
  # The Gram-matrix statistics equal direct computations.
  x = bank[:5].astype(np.float64)
  np.testing.assert_allclose(geo.norms(bank[:5]), np.linalg.norm(x, axis=1), rtol=1e-6)
  dist = geo.pairwise_distances(bank[:5])
  np.testing.assert_allclose(dist, np.linalg.norm(x[:, None] - x[None], axis=-1), rtol=1e-4, atol=1e-3)
  ang = geo.angles_at_origin(bank[:3], bank[3:5])
  np.testing.assert_allclose(ang, [[angle(a, b) for b in x[3:5]] for a in x[:3]], atol=1e-3)
  triples = np.array([[0, 1, 2], [4, 3, 0]])
  np.testing.assert_allclose(
      geo.angles_at_vertex(bank, triples), [angle(x[1] - x[0], x[2] - x[0]), angle(x[3] - x[4], x[0] - x[4])], atol=1e-3
  )
  other = gaussian_bank(60, d, mean=0.5, sigma=sigma, seed=2)
  # Centre distance: sqrt(d) * 0.5 plus the noise of two sample means, sigma^2 d (1/60 + 1/60).
  expected = math.sqrt(0.25 * d + sigma**2 * d * 2 / 60)
  assert geo.centre_distance(bank, other) == pytest.approx(expected, rel=0.03)


def test_fit_prior_recovers_mean_and_variance(tmp_path):
  rng = np.random.default_rng(3)
  n, d = 400, 2000
  true_mean = rng.standard_normal(d).astype(np.float32)
  true_var = rng.uniform(0.5, 2.0, d).astype(np.float32)
  x = (true_mean + np.sqrt(true_var) * rng.standard_normal((n, d))).astype(np.float32)
  pooled = geo.fit_prior(x)
  diagonal = geo.fit_prior(x, "diagonal")
  assert pooled.kind == "pooled" and pooled.var.shape == () and diagonal.var.shape == (d,)
  # The pooled variance is the mean over dimensions of the per-dimension unbiased variance.
  np.testing.assert_allclose(float(pooled.var), np.var(x.astype(np.float64), axis=0, ddof=1).mean(), rtol=1e-5)
  assert float(pooled.var) == pytest.approx(true_var.mean(), rel=0.02)
  assert np.corrcoef(np.asarray(diagonal.var), true_var)[0, 1] > 0.9
  assert np.abs(np.asarray(pooled.mean) - true_mean).max() < 6 * math.sqrt(2.0 / n)
  # A memmap bank gives the same prior (streamed, not copied whole).
  mm = np.lib.format.open_memmap(tmp_path / "bank.npy", mode="w+", dtype=np.float32, shape=(n, 20, 100))
  mm[:] = x.reshape(n, 20, 100)
  from_mm = geo.fit_prior(mm)
  assert from_mm.shape == (20, 100)
  np.testing.assert_array_equal(np.asarray(from_mm.mean), np.asarray(pooled.mean))
  with pytest.raises(ValueError, match="at least 2"):
    geo.fit_prior(x[:1])


def test_sample_prior_depends_only_on_the_global_index():
  prior = geo.fit_prior(gaussian_bank(50, 1000, mean=3.0, sigma=2.0, seed=4))
  key = jax.random.key(7)
  all_ten = np.asarray(geo.sample_prior(prior, key, np.arange(10)))
  np.testing.assert_array_equal(np.asarray(geo.sample_prior(prior, key, [3, 7])), all_ten[[3, 7]])
  many = np.asarray(geo.sample_prior(prior, key, np.arange(400)))
  assert many.mean() == pytest.approx(float(np.mean(prior.mean)), abs=0.02)
  assert many.std(0).mean() == pytest.approx(prior.sigma, rel=0.02)
  base = geo.sample_gaussian_baseline(prior, 10, key)
  np.testing.assert_array_equal(base.reshape(10, -1), all_ten)


def test_slerp_directions_and_norms():
  rng = np.random.default_rng(5)
  a = rng.standard_normal(500).astype(np.float32) * 3
  b = rng.standard_normal(500).astype(np.float32)
  t = np.linspace(0, 1, 11)
  path = np.asarray(geo.slerp(a, b, t), np.float64)
  np.testing.assert_allclose(path[0], a, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(path[-1], b, rtol=1e-5, atol=1e-5)
  norms = np.linalg.norm(path, axis=1)
  np.testing.assert_allclose(norms, (1 - t) * np.linalg.norm(a) + t * np.linalg.norm(b), rtol=1e-5)
  omega = angle(a, b)
  np.testing.assert_allclose([angle(p, a) for p in path], t * omega, atol=2e-2)  # constant angular speed
  # Batched, and the degenerate case of parallel endpoints stays finite with unit directions.
  batched = np.asarray(geo.slerp(np.stack([a, a]), np.stack([b, 2 * a]), t[1:-1]))
  assert batched.shape == (2, 9, 500)
  np.testing.assert_allclose(batched[0], path[1:-1], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      batched[1] / np.linalg.norm(batched[1], axis=1, keepdims=True),
      np.broadcast_to(a / np.linalg.norm(a), (9, 500)),
      atol=1e-5,
  )


# ---------------------------------------------------------------------------
# Claims: Gaussianity and separability.


def test_gaussianity_and_chi_norms():
  gauss = gaussian_bank(120, 4000, mean=1.0, sigma=0.5, seed=6)
  g = geo.gaussianity(gauss, num_dims=800, seed=0)
  assert g["test"] == "normaltest" and g["num_dims"] == 800
  assert 0.01 <= g["fraction_rejected"] <= 0.10 and g["binomial_pvalue"] > 1e-3
  json.dumps(g)
  p = geo.gaussianity(gauss, num_dims=800, seed=0, return_pvalues=True)["pvalues"]
  assert p.shape == (800,) and np.mean(p < 0.05) == g["fraction_rejected"] and 0.4 < np.median(p) < 0.6
  skewed = np.random.default_rng(6).exponential(size=(120, 4000)).astype(np.float32)
  s = geo.gaussianity(skewed, num_dims=800, seed=0)
  assert s["fraction_rejected"] > 0.9 and s["binomial_pvalue"] < 1e-10
  assert geo.gaussianity(gauss[:15], num_dims=50)["test"] == "shapiro"
  chi = geo.norm_vs_chi(gauss)
  assert chi["ks_pvalue"] > 1e-3
  assert chi["observed_mean"] == pytest.approx(chi["chi_mean"], rel=0.002)
  assert chi["raw_norm_mean"] == pytest.approx(chi["prior_shell_radius"], rel=0.01)
  # Unequal per-dimension variances: the pooled prior's chi law misses the norm spread.
  rng = np.random.default_rng(8)
  scales = np.where(np.arange(4000) < 200, 6.0, 0.5).astype(np.float32)
  aniso = (rng.standard_normal((120, 4000)) * scales).astype(np.float32)
  bad = geo.norm_vs_chi(aniso)
  assert bad["observed_std"] > 2 * bad["chi_std"] and bad["ks_pvalue"] < 1e-3


def test_separability_far_and_identical():
  d = 4000
  ood = gaussian_bank(80, d, seed=9)
  shift = np.zeros(d, np.float32)
  shift[:] = 3 * d**0.25 / math.sqrt(d)  # centre distance 3 d^(1/4) sigma
  far = geo.separability(ood, gaussian_bank(80, d, seed=10) + shift, num_folds=4)
  assert far["centre_distance_debiased"] == pytest.approx(3 * d**0.25, rel=0.1)
  assert far["d_quarter_ratio"] == pytest.approx(3.0, rel=0.1)
  assert far["distance_gap_z"] > 2
  assert far["heldout_accuracy"] > 0.95 and far["nearest_mean_accuracy"] > 0.95
  same = geo.separability(ood, gaussian_bank(80, d, seed=11), num_folds=4)
  # The raw distance of two sample means is NOT zero (sqrt(d (1/80 + 1/80)) sigma)...
  assert same["centre_distance"] == pytest.approx(math.sqrt(d * 2 / 80), rel=0.1)
  assert same["d_quarter_ratio"] < 0.6  # ...the debiased one is near it
  assert 0.3 <= same["heldout_accuracy"] <= 0.7 and 0.3 <= same["nearest_mean_accuracy"] <= 0.7
  json.dumps(far)


def test_guards_split_the_banks():
  ood = gaussian_bank(60, D, mean=0.1, seed=12)
  idb = gaussian_bank(60, D, mean=-0.1, seed=13)
  for kind in ("mean_diff", "logistic"):
    guard = geo.fit_guard(ood, idb, kind=kind)
    fn = jax.jit(geo.guard_logits)
    assert np.mean(np.asarray(fn(guard, ood)) > 0) > 0.95
    assert np.mean(np.asarray(fn(guard, idb)) < 0) > 0.95
  # The span-coordinate fit IS plain L2 logistic regression in d dimensions (representer theorem).
  from sklearn.linear_model import LogisticRegression

  x = np.concatenate([ood, idb]).astype(np.float64)
  scale = np.mean(np.sum(x * x, 1))
  clf = LogisticRegression(C=1.0, max_iter=5000, tol=1e-8).fit(x / np.sqrt(scale), np.r_[np.ones(60), np.zeros(60)])
  np.testing.assert_allclose(
      np.asarray(geo.guard_logits(geo.fit_guard(ood, idb, kind="logistic"), x)),
      clf.decision_function(x / np.sqrt(scale)),
      rtol=0.02,
      atol=0.02,
  )
  held_out = gaussian_bank(40, D, mean=-0.1, seed=14)
  assert np.mean(np.asarray(geo.guard_logits(geo.fit_guard(ood, idb), held_out)) < 0) > 0.95


# ---------------------------------------------------------------------------
# Targets, scoring, errors.


def test_targets_match_gaussian_geometry():
  sigma, shift = 1.5, 0.2
  ood = gaussian_bank(60, D, sigma=sigma, seed=15)
  idb = gaussian_bank(60, D, mean=shift, sigma=sigma, seed=16)
  t = geo.compute_targets(ood, idb, num_refs=8, tolerance_scale=2.0, key=jax.random.key(0))
  dist, ang0, angv = t.values
  assert dist == pytest.approx(math.sqrt(2 * D * sigma**2 + D * shift**2), rel=0.01)
  assert ang0 == pytest.approx(90.0, abs=0.5)
  assert angv == pytest.approx(60.0, abs=0.5)
  assert t.num_samples == 60 * 4 and t.tolerance_scale == 2.0
  np.testing.assert_allclose(t.tolerances, 2 * np.asarray(t.stds))
  assert all(s > 0 for s in t.stds) and 0.5 < t.self_acceptance <= 1.0
  again = geo.Targets.from_dict(json.loads(json.dumps(t.to_dict())))
  assert again == t


def test_clear_errors():
  ood = gaussian_bank(10, 48, shape=(4, 4, 3))
  idb = gaussian_bank(20, 48, shape=(4, 4, 3))
  with pytest.raises(ValueError, match=r"OOD bank has 10 latents.*at least 11"):
    geo.compute_targets(ood, idb, num_refs=10, key=jax.random.key(0))
  with pytest.raises(ValueError, match=r"ID bank has 20 latents.*at least 25"):
    geo.discover(gaussian_bank(40, 48, shape=(4, 4, 3)), idb, num_samples=1, num_refs=25, key=jax.random.key(0))
  with pytest.raises(ValueError, match=r"\(4, 4, 3\).*\(8, 8, 3\)"):
    geo.discover(ood, gaussian_bank(20, 192, shape=(8, 8, 3)), num_samples=1, num_refs=5, key=jax.random.key(0))
  with pytest.raises(ValueError, match="num_refs must be >= 2"):
    geo.check_banks(ood, idb, num_refs=1)
  with pytest.raises(ValueError, match="mode"):
    geo.discover(ood, idb, num_samples=1, num_refs=5, mode="anneal", key=jax.random.key(0))


def test_score_candidates_matches_direct_computation_and_chunking():
  rng = np.random.default_rng(17)
  cands = gaussian_bank(45, D, seed=18, shape=SHAPE)
  idr, oodr = gaussian_bank(6, D, mean=0.3, seed=19, shape=SHAPE), gaussian_bank(6, D, seed=20, shape=SHAPE)
  per_id = rng.standard_normal((45, 6) + SHAPE).astype(np.float32)
  per_ood = rng.standard_normal((45, 6) + SHAPE).astype(np.float32)
  targets = geo.Targets((98.0, 90.0, 60.0), (2.0, 1.0, 1.0), (1.0, 0.5, 0.5), 6, 2.0, 1, 1.0)
  guard = geo.fit_guard(gaussian_bank(20, D, mean=0.2, seed=21), gaussian_bank(20, D, mean=-0.2, seed=22))
  shared = geo.score_candidates(cands, idr, oodr, targets, guard=guard)
  per = geo.score_candidates(cands, per_id, per_ood, targets)
  for i in (0, 17, 44):
    np.testing.assert_allclose(shared["stats"][i], direct_criteria(cands[i], idr, oodr), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(per["stats"][i], direct_criteria(cands[i], per_id[i], per_ood[i]), rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(
      shared["guard_logit"], np.asarray(geo.guard_logits(guard, cands.reshape(45, -1))), rtol=1e-4, atol=1e-3
  )
  expect = np.all(np.abs(shared["stats"] - targets.values) <= targets.tolerances, 1) & (shared["guard_logit"] >= 0)
  np.testing.assert_array_equal(shared["accepted"], expect)
  assert np.all(np.isinf(per["guard_logit"]))
  for subset, chunk in ((slice(None), 512), (slice(5, 30), 256)):  # nor on the chunk size or the batch
    again = geo.score_candidates(cands[subset], idr, oodr, targets, guard=guard, chunk_size=chunk)
    np.testing.assert_array_equal(again["stats"], shared["stats"][subset])
    np.testing.assert_array_equal(again["accepted"], shared["accepted"][subset])


# ---------------------------------------------------------------------------
# Discovery.


@pytest.fixture(scope="module")
def runs():
  """One tight-tolerance setting, scored by rejection (two chunk sizes) and by optimisation."""
  ood = gaussian_bank(60, D, mean=0.05, seed=23, shape=SHAPE)
  idb = gaussian_bank(60, D, mean=-0.05, seed=24, shape=SHAPE)
  key = jax.random.key(42)
  targets = geo.compute_targets(ood, idb, num_refs=10, tolerance_scale=0.3, key=jax.random.key(1))
  common = dict(num_samples=5000, key=key, max_candidates=2000, targets=targets)
  rejection = geo.discover(ood, idb, mode="rejection", chunk_paths=32, **common)
  rejection_64 = geo.discover(ood, idb, mode="rejection", chunk_paths=64, compare=False, **common)
  optimize = geo.discover(ood, idb, mode="optimize", compare=False, **common)
  return dict(
      ood=ood.reshape(60, -1),
      idb=idb.reshape(60, -1),
      ood_bank=ood,
      id_bank=idb,
      key=key,
      targets=targets,
      rejection=rejection,
      rejection_64=rejection_64,
      optimize=optimize,
  )


@pytest.mark.slow
def test_rejection_accepts_only_what_meets_the_criteria(runs):
  r = runs["rejection"]
  assert 0 < r.num_accepted < 100 and r.latents.shape[1:] == SHAPE
  assert_meets_criteria(r, runs["ood"], runs["idb"], range(r.num_accepted))
  assert np.all(r.guard_logit >= 0)
  # Every accepted latent is reproducible from public pieces: its source, its prior draw, its t, its references.
  prior = geo.fit_prior(runs["ood"])
  k = jax.random.fold_in(runs["key"], 0)
  for i in range(min(3, r.num_accepted)):
    draw = np.asarray(geo.path_draws(runs["ood_bank"], runs["id_bank"], prior, k, [r.path_index[i]]))[0]
    latent = np.asarray(geo.slerp(runs["ood"][r.source_index[i]], draw, [r.t[i]]))[0]
    np.testing.assert_allclose(r.latents[i].ravel(), latent, rtol=1e-4, atol=1e-4)
    id_ref, ood_ref = geo.reference_indices(runs["key"], r.candidate_index[i], 60, 60, 10)
    np.testing.assert_array_equal(id_ref[0], r.id_ref_index[i])
    np.testing.assert_array_equal(ood_ref[0], r.ood_ref_index[i])
  assert np.all((r.t > 0) & (r.t < 1))
  np.testing.assert_array_equal(r.candidate_index, r.path_index * 20 + np.rint(r.t * 21 - 1).astype(int))


@pytest.mark.slow
def test_results_do_not_depend_on_chunk_size(runs):
  a, b = runs["rejection"], runs["rejection_64"]
  np.testing.assert_array_equal(a.candidate_index, b.candidate_index)
  np.testing.assert_array_equal(a.latents, b.latents)
  np.testing.assert_array_equal(a.stats, b.stats)
  assert a.rejections == b.rejections and a.num_candidates == b.num_candidates


@pytest.mark.slow
def test_budget_accounting_and_rejection_counts(runs):
  r = runs["rejection"]
  assert r.num_candidates == 2000 and r.num_accepted < 5000  # the budget ran out first
  assert r.acceptance_rate == pytest.approx(r.num_accepted / 2000)
  rejected = 2000 - r.num_accepted
  assert sum(r.sole_rejections.values()) <= rejected <= sum(r.rejections.values())
  assert r.most_rejecting == max(r.rejections, key=r.rejections.get)
  summary = json.loads(json.dumps(r.summary()))
  assert summary["targets"]["values"] == list(runs["targets"].values)
  fresh = summary["comparison"]["fresh_refs"]
  assert set(fresh["pass_rate"]) == set(geo.CRITERIA)
  assert summary["comparison"]["generated"]["num_latents"] == r.num_accepted
  # Stopping at num_samples: the first accepted candidates in global order, the same latents.
  first = geo.discover(
      runs["ood_bank"],
      runs["id_bank"],
      num_samples=3,
      key=runs["key"],
      max_candidates=2000,
      targets=runs["targets"],
      compare=False,
  )
  np.testing.assert_array_equal(first.candidate_index, r.candidate_index[:3])
  np.testing.assert_array_equal(first.latents.reshape(3, -1), r.latents[:3].reshape(3, -1))
  assert first.num_candidates == r.candidate_index[2] + 1


@pytest.mark.slow
def test_optimisation_accepts_ten_times_more(runs):
  rej, opt = runs["rejection"], runs["optimize"]
  assert rej.num_accepted > 0
  assert opt.acceptance_rate >= 10 * rej.acceptance_rate
  assert opt.num_candidates == rej.num_candidates == 2000
  assert_meets_criteria(opt, runs["ood"], runs["idb"], range(0, opt.num_accepted, max(1, opt.num_accepted // 40)))
  ood_norms = np.linalg.norm(runs["ood"].astype(np.float64), axis=1)
  norms = np.linalg.norm(opt.latents.reshape(opt.num_accepted, -1).astype(np.float64), axis=1)
  assert np.all(np.abs(norms - ood_norms.mean()) <= ood_norms.std() * 1.0001)  # on the OOD shell
  assert np.all(opt.guard_logit >= 0)


def test_renoise_baseline():
  ood = gaussian_bank(30, 2000, mean=0.5, sigma=2.0, seed=25, shape=(20, 100))
  key = jax.random.key(3)
  copies = geo.renoise_baseline(ood, 60, key, 0.0)
  np.testing.assert_allclose(copies, np.concatenate([ood, ood]), rtol=1e-5, atol=1e-5)
  fresh = geo.renoise_baseline(ood, 30, key, 1.0).reshape(30, -1)
  prior = geo.fit_prior(ood)
  src = ood.reshape(30, -1) - np.asarray(prior.mean)
  assert (
      abs(
          np.mean(
              np.sum(src * (fresh - np.asarray(prior.mean)), 1)
              / (np.linalg.norm(src, axis=1) * np.linalg.norm(fresh - np.asarray(prior.mean), axis=1))
          )
      )
      < 0.02
  )
  half = geo.renoise_baseline(ood, 30, key, 0.6).reshape(30, -1) - np.asarray(prior.mean)
  cos = np.sum(src * half, 1) / (np.linalg.norm(src, axis=1) * np.linalg.norm(half, axis=1))
  assert np.mean(cos) == pytest.approx(0.8, abs=0.03)  # sqrt(1 - 0.6^2)
  assert half.std() == pytest.approx(prior.sigma, rel=0.03)  # variance preserved
  with pytest.raises(ValueError, match="strength"):
    geo.renoise_baseline(ood, 2, key, 1.5)


@pytest.mark.slow
def test_max_per_path_keeps_the_last_accepted_points_of_each_path(runs):
  """The cap keeps, per path, the accepted candidates furthest along it, and nothing else changes."""
  full = runs["rejection"]
  common = dict(num_samples=5000, key=runs["key"], max_candidates=2000, targets=runs["targets"], compare=False)
  capped = geo.discover(runs["ood_bank"], runs["id_bank"], mode="rejection", max_per_path=1, **common)
  paths, counts = np.unique(full.path_index, return_counts=True)
  assert counts.max() > 1, "the setting must accept several points of some path for this test to mean anything"
  np.testing.assert_array_equal(np.unique(capped.path_index), paths)
  assert len(capped.path_index) == len(paths)
  for p, g in zip(capped.path_index, capped.candidate_index):
    assert g == full.candidate_index[full.path_index == p].max()
  np.testing.assert_array_equal(capped.latents, full.latents[np.isin(full.candidate_index, capped.candidate_index)])
  with pytest.raises(ValueError, match="max_per_path"):
    geo.discover(runs["ood_bank"], runs["id_bank"], num_samples=1, key=runs["key"], max_per_path=0)
