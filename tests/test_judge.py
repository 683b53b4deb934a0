"""The domain judge and the copy / duplicate / coverage checks, on feature clouds with
known answers, including the inputs that fooled the old two-class hit rate."""

import numpy as np
import pytest

from discovery_jax.metrics import judge


def _clouds(seed=0, dim=16):
  rng = np.random.default_rng(seed)
  target = rng.normal(0.0, 1.0, (400, dim))
  in_domain = rng.normal(6.0, 1.0, (200, dim))
  return rng, target, in_domain


def test_judge_calls_fresh_target_images_hits_and_nothing_else():
  rng, target, in_domain = _clouds()
  j = judge.DomainJudge.fit(target[:200], target[200:300], in_domain[:100])
  fresh = j.rates(target[300:])
  assert fresh["ood_hit_rate"] >= 0.9, fresh
  own = j.rates(in_domain[100:])
  assert own["ood_hit_rate"] <= 0.1 and own["id_fallback_rate"] >= 0.9, own
  blank = np.full((64, 16), 25.0)  # a constant input: far from every real image
  noise = rng.normal(0.0, 8.0, (64, 16))
  for name, x in (("blank", blank), ("noise", noise)):
    r = j.rates(x)
    assert r["ood_hit_rate"] <= 0.1 and r["neither_rate"] >= 0.9, (name, r)


def test_a_two_class_rule_would_have_called_the_blank_images_hits():
  """The failure this judge replaces: nearest class mean puts a far input on one side."""
  _, target, in_domain = _clouds()
  blank = np.full((64, 16), -25.0)
  nearer_target = np.linalg.norm(blank - target.mean(0), axis=1) < np.linalg.norm(blank - in_domain.mean(0), axis=1)
  assert nearer_target.mean() == 1.0
  j = judge.DomainJudge.fit(target[:200], target[200:300], in_domain[:100])
  assert j.rates(blank)["ood_hit_rate"] == 0.0


def test_calibration_keeps_the_promised_coverage_of_fresh_images():
  _, target, _ = _clouds(1, dim=32)
  m = judge.Manifold.fit(target[:100], target[100:200], k=3, coverage=0.95)
  assert m.scale >= 1.0
  inside = np.mean(m.score(target[200:]) <= 1.0)
  assert 0.85 <= inside <= 1.0, inside


def test_copies_are_flagged_and_fresh_images_are_not():
  rng, target, _ = _clouds(2)
  fewshot, heldout = target[:32], target[32:288]
  copies = fewshot[rng.integers(0, 32, 64)] + rng.normal(0, 1e-3, (64, 16))
  assert judge.copy_flags(copies, fewshot, heldout)["copy_rate"] >= 0.9
  assert judge.copy_flags(target[288:], fewshot, heldout)["copy_rate"] <= 0.15


def test_near_duplicates_counted_among_samples():
  _, target, _ = _clouds(3)
  heldout = target[:256]
  fresh = target[256:384]
  twice = np.concatenate([fresh[:64], fresh[:64] + 1e-4])
  assert judge.near_duplicate_rate(twice, heldout)["near_duplicate_rate"] == 1.0
  assert judge.near_duplicate_rate(fresh, heldout)["near_duplicate_rate"] <= 0.15


@pytest.mark.parametrize("num_heldout, num_samples", [(100, 400), (400, 50)])
def test_near_duplicates_judged_at_the_samples_count(num_heldout, num_samples):
  """Real images must score about the quantile whether there are more or fewer samples than
  held-out images: nearest-neighbour distances shrink as a set grows, and a threshold taken
  from all held-out images flags real sets larger than it and spares smaller ones."""
  fair, unmatched = [], []
  for seed in range(5):
    x = np.random.default_rng(seed).normal(size=(num_heldout + num_samples, 4))
    out = judge.near_duplicate_rate(x[num_heldout:], x[:num_heldout])
    fair.append(out["near_duplicate_rate"])
    unmatched.append(out["all_heldout_rate"])
  assert 0.01 <= np.mean(fair) <= 0.1, fair
  assert abs(np.mean(unmatched) - 0.05) > abs(np.mean(fair) - 0.05), (fair, unmatched)


def test_twins_stay_near_duplicates_however_many_samples():
  _, target, _ = _clouds(5)
  heldout, fresh = target[:32], target[32:232]
  twins = np.concatenate([fresh, fresh + 1e-3])
  out = judge.near_duplicate_rate(twins, heldout)
  assert out["near_duplicate_rate"] == 1.0 and out["threshold"] > 1e-2, out


def test_heldout_quantile_at_a_smaller_size_is_the_subsets_quantile():
  """The exact subset threshold agrees with drawing the subsets."""
  rng = np.random.default_rng(6)
  heldout = rng.normal(size=(60, 3))
  exact = judge.nn_distance_quantile(heldout, 0.2, size=15)
  drawn = [
      np.quantile(np.sort(judge.pairwise_distances(s, s) + np.diag(np.full(15, np.inf)), axis=1)[:, 0], 0.2)
      for s in (heldout[rng.permutation(60)[:15]] for _ in range(400))
  ]
  assert abs(exact / np.mean(drawn) - 1) < 0.15, (exact, np.mean(drawn))
  assert judge.nn_distance_quantile(heldout, 0.2, size=60) == judge.nn_distance_quantile(heldout, 0.2)


def test_coverage_and_density_see_collapse():
  rng, target, _ = _clouds(4)
  real, fake = target[:200], target[200:400]
  good = judge.coverage_density(real, fake)
  assert 0.7 <= good["density"] <= 1.3 and good["coverage"] >= 0.8, good
  collapsed = np.repeat(fake[:1], 200, axis=0)
  bad = judge.coverage_density(real, collapsed)
  assert bad["coverage"] <= 0.05, bad


def test_too_few_references_is_one_clear_error():
  with pytest.raises(ValueError, match="needs more than 3"):
    judge.Manifold.fit(np.zeros((3, 4)), k=3)


def test_a_contrast_floor_keeps_empty_images_out_when_the_domain_has_faint_members():
  """Features of a faint real image can sit next to those of an empty frame."""
  rng, target, _ = _clouds(5)
  contrast = rng.uniform(0.05, 0.5, 300)
  contrast[:3] = 0.001  # a few nearly empty real images
  j = judge.DomainJudge.fit(target[:200], target[200:300], target_contrast=contrast)
  blank_feats = target[:64] + 1e-3  # embedded where real images are
  assert j.rates(blank_feats, np.zeros(64))["ood_hit_rate"] == 0.0
  assert j.rates(blank_feats, np.full(64, 0.2))["ood_hit_rate"] >= 0.9
  with pytest.raises(ValueError, match="contrast"):
    j.rates(blank_feats)
