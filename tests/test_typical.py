"""Typical discovery: candidates around the prior mean, judged in image space by
criteria computed from the few-shot set (pure parts, with identity 'denoising')."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from discovery_jax import configlib, discovery, settings
from discovery_jax.discovery import image_criteria, spectral_envelope, typical
from tests import helpers


def _bank(n=32, d=192, seed=0, offset=0.5):
  rng = np.random.default_rng(seed)
  return (offset + rng.standard_normal((n, 8, 8, 3))).astype(np.float32)


def _candidates_as_discovered(bank, options, key, index):
  """Candidates ``index`` drawn as ``discover_typical`` draws them (its prior, resolved step, strengths and filter)."""
  prior = discovery.fit_prior(bank)
  options, _ = typical.resolve_step(options, bank, prior)  # 'auto' and the strengths, read off the bank
  spectrum = typical.step_filter(bank, prior, options)
  z, _, _ = typical.typical_candidates(
      bank, prior, key, index, options.strength_range, options.partner_weight, spectrum=spectrum
  )
  return z


def _flat(x):
  return np.asarray(x, np.float64).reshape(len(x), -1)


def _discover_on_bank(bank, num_samples, options, *, seed=0, denoise=lambda z: z, **kwargs):
  """Discovery where the bank's latents are their own images ("denoising" is the identity
  unless given) and the features are the flattened images."""
  return discovery.discover_typical(
      bank,
      num_samples=num_samples,
      key=jax.random.key(seed),
      denoise=denoise,
      features=_flat,
      fewshot_images=bank,
      options=options,
      **kwargs,
  )


def test_candidates_keep_the_bank_statistics_at_any_strength():
  bank = _bank()
  prior = discovery.fit_prior(bank)
  key = jax.random.key(0)
  for s in (0.0, 0.5, 1.0):
    z, src, strength = typical.typical_candidates(bank, prior, key, np.arange(256), (s, s))
    np.testing.assert_allclose(strength, s, atol=1e-6)
    resid = z.reshape(256, -1) - np.asarray(prior.mean)
    # Variance-preserving about the mean: residual norms stay on the bank's shell.
    bank_resid = np.linalg.norm(bank.reshape(32, -1) - np.asarray(prior.mean), axis=1).mean()
    assert abs(np.linalg.norm(resid, axis=1).mean() / bank_resid - 1) < 0.05, s
    if s == 0.0:
      np.testing.assert_allclose(z, bank[src], atol=1e-5)
  # Every few-shot latent seeds as many candidates.
  assert np.bincount(src, minlength=32).tolist() == [8] * 32


def _plane_partner(rows, source, resid):
  """Which latent's residual, with the source's, spans ``resid``: (index, relative misfit)."""
  errs = []
  for j in range(len(rows)):
    basis = np.stack([rows[source], rows[j]], 1)
    coef = np.linalg.lstsq(basis, resid, rcond=None)[0]
    errs.append(np.linalg.norm(basis @ coef - resid) / np.linalg.norm(resid))
  j = int(np.argmin(errs))
  return j, errs[j]


def test_partner_steps_mix_two_fewshot_latents_on_the_banks_shell():
  """partner_weight = 1: the step goes toward ANOTHER few-shot latent (no prior draw), the
  residual stays in the plane of the two residuals and on the norm an orthogonal step
  would give, even when the two are correlated; partner_weight = 0 is the prior step."""
  rng = np.random.default_rng(1)
  shared = rng.standard_normal((1, 192))
  bank = (0.3 + 0.6 * shared + 0.8 * rng.standard_normal((16, 192))).reshape(16, 8, 8, 3).astype(np.float32)
  prior = discovery.fit_prior(bank)
  key = jax.random.key(2)
  m = np.asarray(prior.mean, np.float64)
  rows = bank.reshape(16, -1).astype(np.float64) - m
  z, src, s = typical.typical_candidates(bank, prior, key, np.arange(64), (0.3, 0.7), partner_weight=1.0)
  resid = z.reshape(64, -1).astype(np.float64) - m
  partners = []
  for i in range(64):
    a = rows[src[i]]
    j, err = _plane_partner(rows, src[i], resid[i])
    assert err < 1e-4 and j != src[i], (i, err, j, src[i])
    partners.append(j)
    want = np.sqrt((1 - s[i] ** 2) * a @ a + s[i] ** 2 * rows[j] @ rows[j])
    np.testing.assert_allclose(np.linalg.norm(resid[i]), want, rtol=1e-4)
  assert len(set(partners)) > 8  # partners are spread over the set, not one fixed neighbour
  # partner_neighbours=k: the partner is one of the source's k nearest latents.
  z, src, _ = typical.typical_candidates(
      bank, prior, key, np.arange(32), (0.5, 0.5), partner_weight=1.0, partner_neighbours=2
  )
  d2 = ((rows[:, None] - rows[None]) ** 2).sum(-1)
  np.fill_diagonal(d2, np.inf)
  near = np.argsort(d2, 1)[:, :2]
  for i in range(32):
    j, _ = _plane_partner(rows, src[i], z.reshape(32, -1)[i].astype(np.float64) - m)
    assert j in near[src[i]]
  # partner_weight = 0 is the prior step: the residual leaves the source's direction by a
  # component orthogonal to every few-shot residual (a prior draw), of norm s sigma sqrt(d).
  z, src, s = typical.typical_candidates(bank, prior, key, np.arange(8), (0.2, 0.6), partner_weight=0.0)
  resid = z.reshape(8, -1).astype(np.float64) - m
  for i in range(8):
    step = resid[i] - np.sqrt(1 - s[i] ** 2) * rows[src[i]]
    cos = rows @ step / (np.linalg.norm(rows, axis=1) * np.linalg.norm(step))
    assert np.abs(cos).max() < 0.35, cos
    np.testing.assert_allclose(np.linalg.norm(step), s[i] * prior.sigma * np.sqrt(192), rtol=0.2)


@pytest.mark.slow
def test_candidates_depend_on_their_index_only():
  bank = _bank()
  prior = discovery.fit_prior(bank)
  key = jax.random.key(3)
  whole, _, _ = typical.typical_candidates(bank, prior, key, np.arange(40))
  part, _, _ = typical.typical_candidates(bank, prior, key, np.arange(17, 40))
  np.testing.assert_array_equal(whole[17:], part)


def test_a_strength_sweep_tries_the_smallest_steps_first():
  """strength_sweep: candidate g of a pool of P gets a strength in the g-th of P equal slices of
  the range, so a search that stops early has only tried the gentlest steps."""
  bank = _bank()
  prior, key = discovery.fit_prior(bank), jax.random.key(3)
  _, _, s = typical.typical_candidates(bank, prior, key, np.arange(40), (0.1, 0.7), sweep=40)
  edges = 0.1 + 0.6 * np.arange(41) / 40
  assert np.all((s >= edges[:-1] - 1e-6) & (s <= edges[1:] + 1e-6))
  _, _, part = typical.typical_candidates(bank, prior, key, np.arange(17, 40), (0.1, 0.7), sweep=40)
  np.testing.assert_array_equal(s[17:], part)  # still a function of the index alone
  _, _, drawn = typical.typical_candidates(bank, prior, key, np.arange(40), (0.1, 0.7))
  assert not np.all(np.diff(drawn) > 0)  # without it, strengths are drawn in no order
  res = _discover_on_bank(bank, 8, discovery.TypicalOptions(strength_sweep=True, pool_factor=4))
  order = np.argsort(res.candidate_index)
  assert res.num_accepted >= 2 and np.all(np.diff(res.strength[order]) > 0)  # the search walked up the range


def _criteria_options(**kwargs):
  """Options for the feature-space criteria alone (the spectral guard judges images, which these tests have none of)."""
  return typical.TypicalOptions(spectral_guard=None, **kwargs)


def _loo(f):
  d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
  np.fill_diagonal(d, np.inf)
  return d.min(1)


@pytest.mark.parametrize("shrinkage", [None, 0.0, 1.0])
def test_band_and_separation_come_from_the_fewshot_set(shrinkage):
  rng = np.random.default_rng(1)
  few = rng.standard_normal((32, 16)) * np.linspace(0.1, 5.0, 16)
  options = _criteria_options(selection_shrinkage=shrinkage)
  crit = image_criteria.ImageCriteria.fit(few, None, options)
  if shrinkage is None:
    z = few
  else:  # z-scores by the few-shot variance plus shrinkage x its mean (every channel here varies)
    z = (few - few.mean(0)) / np.sqrt(few.var(0) + shrinkage * few.var(0).mean())
  np.testing.assert_allclose(crit.embed(few), z, atol=1e-12)
  loo = _loo(z)
  assert crit.band == (
      pytest.approx(np.quantile(loo, options.band[0])),
      pytest.approx(np.quantile(loo, options.band[1])),
  )
  assert crit.separation == pytest.approx(np.quantile(loo, options.separation_quantile))
  copies = few[:5] + 1e-6
  far = few[:5] * 50
  v = crit.judge(np.concatenate([copies, far]))
  assert v["too_close"][:5].all() and v["too_far"][5:].all()


def test_standardized_distances_see_a_departure_in_a_quiet_channel():
  """Raw features let the few loud channels decide: a candidate that copies a few-shot
  image's loud channels but moves every quiet channel by a few of its own spreads looks
  like a copy. Standardized, those channels count, and the candidate is too far. A channel
  the few-shot set never varies in has no scale and is left out."""
  rng = np.random.default_rng(4)
  few = np.concatenate([20.0 * rng.standard_normal((32, 4)), rng.standard_normal((32, 60)), np.zeros((32, 1))], 1)
  broken = few[:6].copy()
  broken[:, 4:64] += 3.0  # three standard deviations of every quiet channel, a sixth of a loud one's
  raw = image_criteria.ImageCriteria.fit(few, None, _criteria_options(selection_shrinkage=None))
  std = image_criteria.ImageCriteria.fit(few, None, _criteria_options(selection_shrinkage=1.0))
  assert not raw.judge(broken)["too_far"].any()
  assert std.judge(broken)["too_far"].all()
  # Channel 64 never varies among the few-shot images: it has no scale, so it is dropped.
  dead = few[:6].copy()
  dead[:, 64] = 5.0
  assert std.summary()["live_channels"] == 64
  np.testing.assert_allclose(std.judge(dead)["nn_fewshot"], 0.0, atol=1e-9)
  assert raw.judge(dead)["nn_fewshot"].min() == pytest.approx(5.0)
  # Plain z-scores (shrinkage 0) weigh the quiet channels more still.
  plain = image_criteria.ImageCriteria.fit(few, None, _criteria_options(selection_shrinkage=0.0))
  np.testing.assert_allclose(plain.embed(few).std(0), 1.0, atol=1e-9)
  assert plain.judge(broken)["too_far"].all()
  with pytest.raises(ValueError, match="selection_shrinkage"):
    typical.TypicalOptions(selection_shrinkage=-0.5)
  with pytest.raises(ValueError, match="none of the 3 channels varies"):
    image_criteria._zscore_params(np.ones((8, 3)), 0.0)
  with pytest.raises(ValueError, match=r"got 8 \(1 distinct\)"):  # eight copies of one image are one image
    image_criteria.ImageCriteria.fit(np.ones((8, 3)), None, _criteria_options(selection_shrinkage=0.0))


def test_the_standardized_check_rejects_what_either_view_calls_far_and_copies_only_in_both():
  """Raw distances follow the loud channels, z-scores the quiet ones. With the check on,
  a candidate that keeps the loud channels but leaves the quiet ones is too far, and a
  candidate that copies the loud channels but not the quiet ones is no longer a copy."""
  rng = np.random.default_rng(4)
  few = np.concatenate([20.0 * rng.standard_normal((32, 4)), rng.standard_normal((32, 60))], 1)
  off = image_criteria.ImageCriteria.fit(few, None, _criteria_options())
  on = image_criteria.ImageCriteria.fit(few, None, _criteria_options(standardized_check=0.0))
  # The primary (raw) view is untouched by the check.
  assert on.band == off.band and on.separation == off.separation
  z = (few - few.mean(0)) / few.std(0)
  loo = _loo(z)
  assert on.check.band == (pytest.approx(np.quantile(loo, 0.1)), pytest.approx(np.quantile(loo, 0.7)))
  assert on.summary()["check_band"] == list(on.check.band) and on.summary()["check_live_channels"] == 64
  assert off.summary()["check_band"] is None
  quiet_moved = few[:6].copy()
  quiet_moved[:, 4:] += 3.0  # three spreads of every quiet channel
  assert not off.judge(quiet_moved)["too_far"].any()
  assert on.judge(quiet_moved)["too_far"].all()
  np.testing.assert_allclose(on.judge(quiet_moved)["nn_check"], np.sqrt(60 * 9.0), rtol=0.3)
  # Loud channels copied, quiet ones redrawn like a new member of the domain: a raw copy only.
  loud_copy = few[:6].copy()
  loud_copy[:, 4:] = rng.standard_normal((6, 60))
  assert off.judge(loud_copy)["too_close"].all()
  assert not on.judge(loud_copy)["too_close"].any()
  # Exact copies are copies in both views.
  assert on.judge(few[:6] + 1e-9)["too_close"].all()
  with pytest.raises(ValueError, match="standardized_check must be >= 0 or None, got -1"):
    typical.TypicalOptions(standardized_check=-1.0)


def test_select_never_keeps_two_from_the_same_place():
  feats = np.array([[0.0, 0.0], [0.01, 0.0], [5.0, 0.0], [5.0, 0.02], [10.0, 0.0]])
  verdict = {k: np.zeros(5, bool) for k in ("too_close", "too_far", "own_side")}
  kept, _ = image_criteria.select(feats, verdict, np.zeros((0, 2)), separation=1.0, needed=10)
  assert kept.tolist() == [0, 2, 4]
  assert image_criteria.select(feats, verdict, feats[:1], separation=1.0, needed=10)[0].tolist() == [2, 4]
  verdict["own_side"][2] = True
  assert image_criteria.select(feats, verdict, np.zeros((0, 2)), separation=1.0, needed=2)[0].tolist() == [0, 3]


def test_two_from_one_source_must_lie_further_apart():
  feats = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0], [4.0, 1.5]])
  verdict = {k: np.zeros(4, bool) for k in ("too_close", "too_far", "own_side")}
  siblings = image_criteria.Siblings(separation=3.0, sources=np.array([0, 0, 1, 1]), accepted=np.zeros(0, np.int64))
  kept, _ = image_criteria.select(feats, verdict, np.zeros((0, 2)), 1.0, 10, siblings=siblings)
  assert kept.tolist() == [0, 2]  # 1 and 3 lie within 3.0 of a sibling; 2 is 2.0 from another source's image
  accepted = image_criteria.Siblings(3.0, np.array([0, 0, 1, 1]), accepted=np.array([1]))
  assert image_criteria.select(feats, verdict, np.array([[4.0, 3.5]]), 1.0, 10, siblings=accepted)[0].tolist() == [0, 2]


def test_the_sibling_separation_holds_among_the_accepted_and_the_near_misses():
  bank = _bank(8)  # 24 samples from 8 sources: each source seeds several

  def closest_siblings(options):
    res = _discover_on_bank(bank, 24, options)
    fitted = image_criteria.ImageCriteria.fit(_flat(bank), None, options, fewshot_images=bank)
    f = fitted.embed(_flat(res.images))
    d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
    same = res.source_index[:, None] == res.source_index[None, :]
    np.fill_diagonal(same, False)
    return res, d[same].min(), float(np.quantile(fitted.loo_distances, 0.5))

  for pool_factor in (8, 2):  # a full pool, and one that runs out and fills in with near misses
    kwargs = dict(pool_factor=pool_factor, batch=8, strength_range=(0.6, 1.0))
    res, closest, median = closest_siblings(discovery.TypicalOptions(sibling_separation_quantile=0.5, **kwargs))
    crit = res.criteria
    assert res.num_accepted == 24 and crit["sibling_separation"] == pytest.approx(median)
    halved = 1.0 if crit["near_miss_separation"] is None else crit["near_miss_separation"] / crit["separation"]
    assert closest >= crit["sibling_separation"] * halved, (pool_factor, closest)
  _, closest, median = closest_siblings(discovery.TypicalOptions(strength_range=(0.6, 1.0), batch=8))
  assert closest < median  # without the rule, two siblings lie nearer than that
  with pytest.raises(ValueError, match="sibling_separation_quantile must lie in"):
    discovery.TypicalOptions(sibling_separation_quantile=1.5)


@pytest.mark.parametrize("shrinkage,check", [(None, None), (1.0, None), (None, 0.0)])
def test_discover_typical_accepts_only_what_meets_its_criteria(shrinkage, check):
  bank = _bank()
  own = _bank(16, seed=5, offset=-3.0)
  # Gaussian latents as images: only near-fresh prior draws (no partner share) are as far from the
  # few-shot set as its members.
  options = discovery.TypicalOptions(
      strength_range=(0.95, 1.0), partner_weight=0.0, selection_shrinkage=shrinkage, standardized_check=check
  )
  res = _discover_on_bank(bank, 24, options, own_images=own)
  assert res.num_accepted == 24 and res.latents.shape == (24, 8, 8, 3)
  np.testing.assert_array_equal(res.latents, res.images)
  crit = res.criteria
  assert crit["standardized"] == (shrinkage is not None)
  fitted = image_criteria.ImageCriteria.fit(_flat(bank), None, options, fewshot_images=bank)
  assert (res.nn_fewshot <= crit["band"][1]).all()
  not_a_copy = res.nn_fewshot >= crit["band"][0]
  if check is not None:  # inside the check's band's far edge too; a copy only if a copy in both views
    nn = fitted.check.nearest(_flat(res.images))
    assert (nn <= fitted.check.band[1]).all()
    not_a_copy |= nn >= fitted.check.band[0]
  assert not_a_copy.all()
  f = fitted.embed(_flat(res.images))  # the space they are judged in
  d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
  np.fill_diagonal(d, np.inf)
  assert d.min() >= crit["separation"]
  again = _discover_on_bank(bank, 24, options, own_images=own)
  np.testing.assert_array_equal(res.latents, again.latents)


def test_a_pool_that_runs_out_returns_fewer_and_says_why():
  bank = _bank()
  options = discovery.TypicalOptions(pool_factor=2, fill_near_misses=False)
  res = _discover_on_bank(bank, 10, options, denoise=lambda z: z * 100.0)
  assert res.num_accepted == 0 and res.num_candidates == 20 and res.rejections["too_far"] == 20


def test_a_pool_that_runs_out_fills_in_with_the_nearest_misses_flagged():
  """Few-shot sets of near-duplicate crops make a band too narrow for any candidate: the run
  still ends with N samples, the ones that missed the band by the least, each flagged."""
  bank = _bank()
  options = discovery.TypicalOptions(pool_factor=2, batch=8)
  res = _discover_on_bank(bank, 10, options, denoise=lambda z: z * 100.0)
  assert res.num_accepted == 10 and res.near_miss.all() and res.summary()["num_near_misses"] == 10
  assert res.rejections["too_far"] == 20
  # every candidate examined, judged by hand: the ten nearest the band's far edge were taken
  z = _candidates_as_discovered(bank, options, jax.random.key(0), np.arange(20))
  nn = image_criteria._distances(_flat(z * 100.0), _flat(bank)).min(axis=1)
  assert set(res.candidate_index.tolist()) == set(np.argsort(nn)[:10].tolist())
  np.testing.assert_allclose(np.sort(res.nn_fewshot), np.sort(nn)[:10])
  np.testing.assert_array_equal(res.images, res.latents * 100.0)  # rebuilt from their index
  # candidates on the model's side never fill in, however near the band they come
  own = _bank(16, seed=5) * 100.0
  guarded = _discover_on_bank(bank, 10, options, denoise=lambda z: z * 100.0, own_images=own)
  assert guarded.num_accepted == 0 and guarded.rejections["too_far"] == 20
  # a run that finds enough within the band has no near misses
  fine = _discover_on_bank(bank, 6, discovery.TypicalOptions(strength_range=(0.95, 1.0)))
  assert fine.num_accepted == 6 and not fine.near_miss.any()


@pytest.mark.parametrize("spread, halvings", [(0.3, 2), (0.01, None)])
def test_near_misses_too_near_each_other_fill_at_a_halved_separation_at_most_three_times(spread, halvings):
  """A few mutually distant few-shot images set a separation that N samples never keep: every candidate
  below lands next to one few-shot image (a copy by the band) and next to the others. The fill halves
  the separation until they fit, never more than three times, and says how far apart they are."""
  bank = _bank()
  options = discovery.TypicalOptions(pool_factor=4, batch=16)
  mean = bank.mean(axis=0)
  res = _discover_on_bank(bank, 10, options, denoise=lambda z: bank[0] + spread * (z - mean))
  crit = res.summary()["criteria"]
  assert res.rejections["too_close"] == 40 and res.near_miss.all()
  f = _flat(res.images)
  d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
  np.fill_diagonal(d, np.inf)
  if halvings is None:  # closer than an eighth of the separation: the search gives up short
    assert res.num_accepted < 10 and d.min() >= crit["separation"] / 8
    return
  assert res.num_accepted == 10
  assert crit["near_miss_separation"] == pytest.approx(crit["separation"] / 2**halvings)
  assert crit["separation"] / 2 > d.min() >= crit["near_miss_separation"]
  # a run whose near misses keep the separation reports none halved
  fine = _discover_on_bank(bank, 10, options, denoise=lambda z: z * 100.0)
  assert fine.summary()["criteria"]["near_miss_separation"] == pytest.approx(fine.summary()["criteria"]["separation"])


def test_a_fewshot_image_given_twice_counts_once():
  """A file repeated in the few-shot folder has a leave-one-out distance of zero: counted, it would
  pull the copy edge and the separation down to nothing. The criteria are those of the distinct set."""
  few = _flat(_bank(16, seed=2))
  repeated = np.concatenate([few, few[[3, 7]], few[[3]] + 1e-9])
  base = image_criteria.ImageCriteria.fit(few, None, _criteria_options())
  crit = image_criteria.ImageCriteria.fit(repeated, None, _criteria_options())
  assert crit.band == base.band and crit.separation == base.separation and crit.separation > 0
  np.testing.assert_array_equal(crit.fewshot, few)
  assert crit.summary()["fewshot_duplicates"] == 3 and base.summary()["fewshot_duplicates"] == 0
  # counted as they come, the repeats would have made the separation zero and a copy no copy
  assert np.quantile(_loo(repeated), 0.05) == 0.0 and np.quantile(_loo(repeated), 0.1) < base.band[0] / 2
  assert crit.judge(few[:4] + 1e-3)["too_close"].all()
  with pytest.raises(ValueError, match=r"at least 4 few-shot images .*got 6 \(3 distinct\)"):
    image_criteria.ImageCriteria.fit(np.concatenate([few[:3], few[:3]]), None, _criteria_options())


def test_bad_options_and_tiny_fewshot_sets_are_refused():
  with pytest.raises(ValueError, match="band"):
    discovery.TypicalOptions(band=(0.9, 0.2))
  with pytest.raises(ValueError, match="strength_range"):
    discovery.TypicalOptions(strength_range=(0.5, 1.5))
  with pytest.raises(ValueError, match="partner_weight"):
    discovery.TypicalOptions(partner_weight=1.5)
  with pytest.raises(ValueError, match="partner_neighbours"):
    discovery.TypicalOptions(partner_neighbours=0)
  with pytest.raises(ValueError, match="at least 4 few-shot"):
    image_criteria.ImageCriteria.fit(np.zeros((3, 4)), None, _criteria_options())


def test_the_published_head_prior_is_available_and_differs_as_documented():
  """Fitted on the ID bank, np.var over all entries about one scalar mean: it also counts
  the spread of the per-dimension means, so it exceeds the pooled per-dimension variance."""
  rng = np.random.default_rng(0)
  idb = (rng.standard_normal((64, 8, 8, 3)) + rng.normal(0, 0.2, (1, 8, 8, 3))).astype(np.float32)
  head = discovery.fit_prior_published_head(idb)
  pooled = discovery.fit_prior(idb)
  np.testing.assert_allclose(float(head.var), np.var(idb), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(head.mean), idb.reshape(64, -1).mean(0), atol=1e-6)
  assert float(head.var) > float(pooled.var)
  with pytest.raises(ValueError, match="published_head"):
    discovery.discover(idb, idb, num_samples=1, key=jax.random.key(0), prior_kind="published_head", num_refs=5)


def test_the_discriminant_guard_passes_fresh_target_images_and_stops_the_models_own():
  """Calibrated on the few-shot images left out one at a time: fresh target images pass
  at about 1 - guard_quantile, the model's own images almost never, whatever the scale."""
  rng = np.random.default_rng(2)
  d, shift = 60, np.r_[np.full(6, 1.5), np.zeros(54)]
  few, own = rng.standard_normal((32, d)) + shift, rng.standard_normal((64, d))
  fresh, fresh_own = rng.standard_normal((2000, d)) + shift, rng.standard_normal((2000, d))
  guard = image_criteria.DiscriminantGuard.fit(few * 1e3, own * 1e3, quantile=0.1)
  assert 0.8 <= np.mean(~guard.own_side(fresh * 1e3)) <= 0.97
  assert np.mean(~guard.own_side(fresh_own * 1e3)) < 0.05 and guard.own_pass_rate < 0.05
  # Without a difference between the sets it cannot tell them apart, and says so by passing both alike.
  same = image_criteria.DiscriminantGuard.fit(few - shift, own, quantile=0.1)
  assert abs(np.mean(~same.own_side(fresh - shift)) - np.mean(~same.own_side(fresh_own))) < 0.1


def test_the_guard_runs_in_its_own_feature_space():
  rng = np.random.default_rng(3)
  few_sel, few_guard = rng.standard_normal((32, 8)), rng.standard_normal((32, 20)) + 2.0
  own_guard = rng.standard_normal((40, 20))
  crit = image_criteria.ImageCriteria.fit(
      few_sel, rng.standard_normal((40, 8)), _criteria_options(), few_guard, own_guard
  )
  cand_sel = rng.standard_normal((10, 8))
  verdict = crit.judge(cand_sel, np.concatenate([rng.standard_normal((5, 20)) + 2.0, rng.standard_normal((5, 20))]))
  assert verdict["own_side"][5:].all() and verdict["own_side"][:5].sum() <= 1
  assert crit.summary()["guard"] == "discriminant"
  nearest = image_criteria.ImageCriteria.fit(few_sel, few_sel[:4] + 1e-3, _criteria_options(guard_kind="nearest"))
  assert nearest.discriminant is None and nearest.judge(few_sel[:4] + 2e-3)["own_side"].all()
  with pytest.raises(ValueError, match="guard_kind"):
    typical.TypicalOptions(guard_kind="svm")
  with pytest.raises(ValueError, match=r"own images \(discovery.num_id_latents\), got 1"):
    image_criteria.DiscriminantGuard.fit(few_guard, own_guard[:1])


def test_full_distance_bins_spill_and_the_accepted_distances_follow_the_fewshot_ones():
  feats = np.array([[0.0], [10.0], [20.0], [30.0], [40.0]])
  verdict = {k: np.zeros(5, bool) for k in ("too_close", "too_far", "own_side")}
  kept, spilled = image_criteria.select(
      feats, verdict, np.zeros((0, 1)), 1.0, 10, np.array([0, 0, 1, 0, 1]), np.array([1, 2])
  )
  assert kept.tolist() == [0, 2, 4] and spilled.tolist() == [1, 3]
  loo = np.arange(1.0, 101.0)
  assert np.allclose(image_criteria.distance_bins(loo, (0.0, 1.0), 4), np.quantile(loo, [0.25, 0.5, 0.75]))
  # Identity "denoising" of Gaussian latents: most candidates land near the band's low end; binning
  # moves the accepted median up to the few-shot images' own median.
  bank = _bank()
  run = lambda bins: _discover_on_bank(
      bank,
      16,
      discovery.TypicalOptions(
          strength_range=(0.8, 1.0),
          band=(0.05, 0.95),
          distance_bins=bins,
          pool_factor=16,
          partner_weight=0.0,
          balance="distance",
          fill_after=None,
      ),
      seed=1,
  )
  binned, first_come = run(4), run(1)
  assert binned.num_accepted == first_come.num_accepted == 16
  loo_median = binned.criteria["loo_nn_median"]
  assert abs(np.median(binned.nn_fewshot) - loo_median) < abs(np.median(first_come.nn_fewshot) - loo_median)


def test_fewshot_balance_gives_every_fewshot_image_an_equal_share():
  bank = _bank()
  options = lambda balance, pool: discovery.TypicalOptions(
      strength_range=(0.8, 1.0),
      band=(0.05, 0.95),
      pool_factor=pool,
      partner_weight=0.0,
      balance=balance,
      fill_after=None,
  )
  fair, by_distance = (_discover_on_bank(bank, 16, options(b, 16), seed=1) for b in ("fewshot", "distance"))
  assert fair.num_accepted == by_distance.num_accepted == 16
  # the recorded cell is the nearest few-shot image in the space the band is measured in
  d = ((_flat(fair.images)[:, None] - _flat(bank)[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(fair.nearest_fewshot, d.argmin(1))
  assert fair.summary()["fewshot_cells"] == {"used": 16, "of": 32, "max_per_cell": 1}  # ceil(16 / 32) each
  assert by_distance.summary()["fewshot_cells"]["max_per_cell"] > 1  # first come crowds some neighbourhoods
  # a pool too small to fill every cell: the set-aside candidates fill in, so balancing loses none of
  # what first come would have kept
  short = _discover_on_bank(bank, 24, options("fewshot", 2), seed=1)
  first_come = _discover_on_bank(bank, 24, dataclasses.replace(options("distance", 2), distance_bins=1), seed=1)
  assert short.summary()["fewshot_cells"]["max_per_cell"] > 1
  assert sorted(short.candidate_index) == sorted(first_come.candidate_index)
  with pytest.raises(ValueError, match=r"balance must be one of \('distance', 'fewshot', 'both'\), got 'source'"):
    discovery.TypicalOptions(balance="source")


def test_both_balances_at_once_respect_the_cells_and_the_distance_bins():
  feats = np.array([[0.0], [10.0], [20.0], [30.0], [40.0], [50.0]])
  verdict = {k: np.zeros(6, bool) for k in ("too_close", "too_far", "own_side")}
  # cells 0-1 (room 2 each), bins numbered 2-3 (room 2 each): candidate 2 finds its cell full, 3 its bin
  quotas = np.array([[0, 2], [0, 2], [0, 3], [1, 2], [1, 3], [1, 3]])
  room = np.array([2, 2, 2, 2])
  kept, spilled = image_criteria.select(feats, verdict, np.zeros((0, 1)), 1.0, 10, quotas, room)
  assert kept.tolist() == [0, 1, 4, 5] and spilled.tolist() == [2, 3] and room.tolist() == [0, 0, 0, 0]
  bank = _bank()
  options = lambda balance: discovery.TypicalOptions(
      strength_range=(0.8, 1.0),
      band=(0.05, 0.95),
      pool_factor=64,  # both quotas take more candidates to fill
      partner_weight=0.0,
      step_spectrum=0.0,  # the quotas' mechanics, on the white steps these white banks call for
      balance=balance,
      fill_after=None,
  )
  both, cells = (_discover_on_bank(bank, 16, options(b), seed=1) for b in ("both", "fewshot"))
  assert both.num_accepted == cells.num_accepted == 16
  assert both.summary()["fewshot_cells"]["max_per_cell"] == 1  # ceil(16 / 32) per few-shot image
  # the distance bins move the accepted median toward the few-shot images' own, as balance='distance' does
  loo_median = both.criteria["loo_nn_median"]
  assert abs(np.median(both.nn_fewshot) - loo_median) < abs(np.median(cells.nn_fewshot) - loo_median)


def test_fill_after_ends_a_balanced_search_once_enough_is_held_whatever_the_batch():
  bank = _bank()
  options = lambda **kw: discovery.TypicalOptions(
      strength_range=(0.8, 1.0), band=(0.05, 0.95), pool_factor=16, partner_weight=0.0, balance="fewshot", **kw
  )
  whole = _discover_on_bank(bank, 16, options(fill_after=None), seed=1)
  runs = [_discover_on_bank(bank, 16, options(fill_after=2, batch=b), seed=1) for b in (8, 64)]
  for r in runs:
    np.testing.assert_array_equal(r.candidate_index, runs[0].candidate_index)
    assert r.num_candidates == runs[0].num_candidates
  quick = runs[0]
  # it stops earlier than the whole-pool search, past 2 x 16 candidates, with all 16: set-aside ones filled in
  assert 2 * 16 <= quick.num_candidates < whole.num_candidates
  assert quick.num_accepted == whole.num_accepted == 16
  assert quick.summary()["fewshot_cells"]["max_per_cell"] > whole.summary()["fewshot_cells"]["max_per_cell"] == 1
  assert quick.candidate_index.max() < quick.num_candidates
  # fill_after at or past pool_factor is the whole search
  for at in (16, 17):
    np.testing.assert_array_equal(
        _discover_on_bank(bank, 16, options(fill_after=at), seed=1).candidate_index, whole.candidate_index
    )
  with pytest.raises(ValueError, match=r"^fill_after must be >= 1 or None, got 0$"):
    options(fill_after=0)


def test_fill_keeps_bins_gives_up_the_cells_before_the_distance_bins():
  """A sweep meets the near bins first, so a fill-in in order crowds them (accepted images then
  sit closer to the few-shot set than new real ones); fill_keeps_bins searches on until the set-aside
  candidates can fill every distance bin to its share, whatever the batch."""
  bank = _bank()
  edges = image_criteria.distance_bins(_loo(_flat(bank)), (0.05, 0.95), 4)
  options = lambda **kw: discovery.TypicalOptions(
      strength_range=(0.9, 1.0),
      band=(0.05, 0.95),
      pool_factor=16,
      partner_weight=0.0,
      balance="both",
      fill_after=2,
      strength_sweep=True,
      step_spectrum=0.0,  # the sweep's mechanics, on the white steps these white banks call for
      **kw,
  )
  per_bin = lambda r: np.bincount(np.searchsorted(edges, r.nn_fewshot, side="right"), minlength=4).tolist()
  in_order = _discover_on_bank(bank, 16, options(), seed=1)
  kept = [_discover_on_bank(bank, 16, options(fill_keeps_bins=True, batch=b), seed=1) for b in (8, 64)]
  np.testing.assert_array_equal(kept[0].candidate_index, kept[1].candidate_index)
  assert in_order.num_accepted == kept[0].num_accepted == 16
  assert per_bin(in_order)[0] > 8  # the nearest bin holds most
  assert per_bin(kept[0]) == [4, 4, 4, 4]
  assert kept[0].num_candidates > in_order.num_candidates  # it searched further up the sweep for them
  assert kept[0].summary()["fewshot_cells"]["max_per_cell"] <= 2


def test_the_fill_in_goes_to_the_emptiest_fewshot_cells_first():
  """In order, a tight pool's fill-in piles variations of the few sources that pass most easily
  together (the evaluation calls them near-duplicates); spread, each round lets every cell hold one
  more, counting what is accepted, and a candidate too near a taken one is never taken."""
  feats, cells = np.arange(7.0)[:, None] * 10, np.array([0, 0, 1, 2, 2, 1, 0])
  accepted_cells = np.array([0, 0, 2])  # cell 0 holds two, cell 2 one, cell 1 none
  spread = lambda accepted, needed: typical._spread_fill(feats, cells, accepted, accepted_cells, 3, 1.0, needed)
  assert spread(np.zeros((0, 1)), 3).tolist() == [2, 3, 5]  # cells 1, 2, 1: two each now
  assert spread(np.zeros((0, 1)), 7).tolist() == [2, 3, 5, 0, 4, 1, 6]
  assert spread(np.array([[30.5]]), 7).tolist() == [2, 4, 5, 0, 1, 6]  # candidate 3 lies within the separation
  bank = _bank()
  options = lambda spreads: discovery.TypicalOptions(
      strength_range=(0.2, 1.0),
      band=(0.05, 0.95),
      pool_factor=8,
      partner_weight=0.0,
      fill_after=1,
      step_spectrum=0.0,
      fill_spreads=spreads,
  )
  spread_out, in_order = (_discover_on_bank(bank, 48, options(s), seed=1) for s in (True, False))
  assert spread_out.num_accepted == in_order.num_accepted == 48
  assert spread_out.summary()["fewshot_cells"] == {"used": 32, "of": 32, "max_per_cell": 2}  # ceil(48 / 32)
  assert in_order.summary()["fewshot_cells"]["max_per_cell"] > 2
  assert sorted(spread_out.candidate_index) != sorted(in_order.candidate_index)


def test_when_the_pool_runs_out_the_set_aside_candidates_fill_in_rebuilt_from_their_index():
  bank = _bank()
  options = discovery.TypicalOptions(
      strength_range=(0.95, 1.0),
      band=(0.05, 0.95),
      pool_factor=2,
      batch=8,
      partner_weight=0.0,
      fill_near_misses=False,
  )
  res = _discover_on_bank(bank, 16, options, seed=1)
  assert 0 < res.num_accepted < 16 and res.rejections["bin_full"] == 0
  assert np.any(np.diff(res.candidate_index) < 0)  # set-aside candidates came last
  rebuilt = _candidates_as_discovered(bank, options, jax.random.key(1), res.candidate_index)
  np.testing.assert_array_equal(res.latents, rebuilt)
  np.testing.assert_array_equal(res.images, res.latents)


def test_the_config_sets_the_partner_share_and_refuses_a_bad_one_in_one_line():
  from discovery_jax import configlib, settings
  from tests import helpers

  config = configlib.load_config_file(f"{helpers.REPO}/configs/demo.py")
  options = settings.typical_options(config)
  assert options.partner_weight == 0.0 and options.partner_neighbours is None
  config.discovery.partner_neighbours = 3
  assert settings.typical_options(config).partner_neighbours == 3
  config.discovery.partner_weight = 2.0
  with pytest.raises(ValueError, match=r"^config.discovery: partner_weight must lie in \[0, 1\], got 2.0$"):
    settings.typical_options(config)


def test_the_config_sets_the_sibling_separation_and_refuses_a_bad_one_in_one_line():
  config = configlib.load_config_file(f"{helpers.REPO}/configs/demo.py")
  default = settings.typical_options(config).sibling_separation_quantile
  assert default == discovery.TypicalOptions().sibling_separation_quantile
  config.discovery.sibling_separation_quantile = None
  assert settings.typical_options(config).sibling_separation_quantile is None
  config.discovery.sibling_separation_quantile = 0.3
  assert settings.typical_options(config).sibling_separation_quantile == 0.3
  config.discovery.sibling_separation_quantile = "wide"
  with pytest.raises(ValueError, match=r"sibling_separation_quantile must be a quantile in \[0, 1\) or None, got 'wide'$"):
    settings.typical_options(config)


def test_the_config_chooses_how_selection_distances_are_scaled():
  config = configlib.load_config_file(os.path.join(helpers.REPO, "configs", "base.py"))
  assert settings.typical_options(config).selection_shrinkage is None  # raw features by default
  config.discovery.selection_shrinkage = 0.5
  assert settings.typical_options(config).selection_shrinkage == 0.5
  config.discovery.selection_shrinkage = -1.0
  with pytest.raises(ValueError, match=r"config.discovery: selection_shrinkage must be >= 0 or None, got -1.0"):
    settings.typical_options(config)
  config.discovery.selection_shrinkage = None
  assert settings.typical_options(config).standardized_check is None  # off by default
  config.discovery.standardized_check = 0.0
  assert settings.typical_options(config).standardized_check == 0.0
  config.discovery.standardized_check = -2.0
  with pytest.raises(ValueError, match=r"^config.discovery: standardized_check must be >= 0 or None, got -2.0$"):
    settings.typical_options(config)
  config.discovery.standardized_check = None
  assert settings.typical_options(config).spectral_guard == 0.1  # on by default
  config.discovery.spectral_guard = None
  assert settings.typical_options(config).spectral_guard is None
  config.discovery.spectral_guard = 0.05
  assert settings.typical_options(config).spectral_guard == 0.05
  for bad in (1.0, "abc", True):
    config.discovery.spectral_guard = bad
    with pytest.raises(
        ValueError, match=rf"^config.discovery: spectral_guard must be a quantile in \[0, 1\) or None, got {bad!r}$"
    ):
      settings.typical_options(config)


def test_the_config_sets_the_balance_and_when_to_fill_in():
  config = configlib.load_config_file(os.path.join(helpers.REPO, "configs", "base.py"))
  options = settings.typical_options(config)
  assert options.balance == "both" and options.fill_after == 4  # the default search
  assert options == discovery.TypicalOptions()  # the library's defaults are the config's
  config.discovery.balance, config.discovery.fill_after = "distance", None
  options = settings.typical_options(config)
  assert options.balance == "distance" and options.fill_after is None  # None is a setting: search the whole pool
  config.discovery.fill_after = "4"
  with pytest.raises(ValueError, match=r"^config.discovery.fill_after must be an integer >= 1 or None, got '4'$"):
    settings.typical_options(config)  # e.g. a command-line typo
  del config.discovery["fill_after"]
  assert settings.typical_options(config).fill_after == 4  # an older config without the key gets the default
  config.discovery.fill_after = 0
  with pytest.raises(ValueError, match=r"^config.discovery: fill_after must be >= 1 or None, got 0$"):
    settings.typical_options(config)
  config.discovery.fill_after = 9  # past pool_factor: the pool's end, where the search fills in anyway
  assert settings.typical_options(config).fill_after == 9
  assert settings.typical_options(config).fill_near_misses  # a short pool fills in with its near misses
  config.discovery.fill_near_misses = False
  assert not settings.typical_options(config).fill_near_misses
  assert not settings.typical_options(config).strength_sweep  # off by default
  config.discovery.strength_sweep = True
  assert settings.typical_options(config).strength_sweep
  assert not settings.typical_options(config).fill_spreads  # the fill-in in order, by default
  config.discovery.fill_spreads = True
  assert settings.typical_options(config).fill_spreads
  config.discovery.rescue_factor = 4
  assert settings.typical_options(config).rescue_factor == 4
  config.discovery.rescue_factor = None  # a setting: no rescue
  assert settings.typical_options(config).rescue_factor is None
  config.discovery.rescue_factor = -1
  with pytest.raises(ValueError, match=r"^config.discovery: rescue_factor must be an integer >= 0 or None, got -1$"):
    settings.typical_options(config)
  config.discovery.rescue_factor = None
  config.discovery.fill_after, config.discovery.balance = None, "sources"
  with pytest.raises(
      ValueError, match=r"^config.discovery: balance must be one of \('distance', 'fewshot', 'both'\), got 'sources'$"
  ):
    settings.typical_options(config)


def test_the_spectral_guard_turns_away_images_whose_spectra_leave_the_fewshot_ones():
  bank = _bank()

  def denoise(z):  # about half the candidates come back with a bright half-frame: large-scale structure the bank lacks
    z = np.asarray(z, np.float32)
    blob = np.zeros_like(z)
    blob[:, :4] = 4.0
    return z + blob * (z[..., 0].sum(axis=(1, 2)) > 4.0)[:, None, None, None]

  options = discovery.TypicalOptions(strength_range=(0.95, 1.0), spectral_guard=0.1)
  res = _discover_on_bank(bank, 12, options, denoise=denoise)
  envelope = spectral_envelope.SpectralEnvelope.fit(bank, 0.1)
  assert res.rejections["off_spectrum"] > 0 and res.rejections["too_far"] >= res.rejections["off_spectrum"]
  inside = envelope.scores(res.images) <= envelope.threshold
  assert inside[~res.near_miss].all() and res.num_accepted == 12
  assert res.criteria["spectral_guard"]["bands"] == [[1, 1], [2, 2], [3, 4]]
  unguarded = _discover_on_bank(bank, 12, dataclasses.replace(options, spectral_guard=None), denoise=denoise)
  assert (envelope.scores(unguarded.images) > envelope.threshold).any()  # the guard is what kept them out
  assert unguarded.rejections["off_spectrum"] == 0 and unguarded.criteria["spectral_guard"] is None
  with pytest.raises(ValueError, match="spectral_guard must be a quantile"):
    discovery.TypicalOptions(spectral_guard=1.5)


def test_the_rescue_law_weights_each_strength_slice_by_its_pass_rate():
  strengths = np.array([0.05, 0.1, 0.3, 0.35, 0.6, 0.65, 0.9, 0.95])
  passed = np.array([0, 0, 1, 0, 1, 1, 0, 0], bool)
  cdf, edges = typical.rescue_law(strengths, passed, (0.0, 1.0), slices=4)
  np.testing.assert_allclose(edges, [0.0, 0.25, 0.5, 0.75, 1.0])
  rate = np.array([0.0, 0.5, 1.0, 0.0])
  weight = rate + typical.RESCUE_FLOOR * rate.mean()
  np.testing.assert_allclose(np.diff(cdf), weight / weight.sum())
  assert cdf[0] == 0.0 and cdf[-1] == pytest.approx(1.0)
  assert typical.rescue_law(strengths, np.zeros(8, bool), (0.0, 1.0)) is None  # nothing to go on


def test_a_short_pool_is_rescued_at_the_strengths_where_its_candidates_passed():
  """Identity 'denoising': gentle steps are copies of their source, so only the strongest pass. A pool
  that runs out short searches again, drawing strengths where the first pool passed, and finds more;
  its candidates still depend on their index (and the law read off the first pool) alone."""
  bank = _bank()
  options = discovery.TypicalOptions(
      strength_range=(0.0, 1.0), step_spectrum=0.0, pool_factor=2, batch=8, fill_near_misses=False, spectral_guard=None
  )
  plain = _discover_on_bank(bank, 16, options)
  assert plain.num_accepted < 16 and plain.num_candidates == 32 and plain.rescue is None
  assert plain.strength.min() > 0.75  # what passes is strong
  res = _discover_on_bank(bank, 16, dataclasses.replace(options, rescue_factor=4))
  rescue = res.summary()["rescue"]
  assert rescue["from"] == plain.num_accepted and rescue["candidates"] == res.num_candidates - 32 <= 64
  assert res.num_accepted == plain.num_accepted + rescue["accepted"] > plain.num_accepted
  np.testing.assert_array_equal(res.latents[: plain.num_accepted], plain.latents)  # the first pool's, unchanged
  law = (np.asarray(rescue["strength_cdf"]), np.asarray(rescue["edges"]))
  prior = discovery.fit_prior(bank)
  g = np.arange(32, 96)
  z, _, s = typical.typical_candidates(bank, prior, jax.random.key(0), g, (0.0, 1.0), strength_law=law)
  assert np.mean(s >= law[1][-2]) > 0.85  # drawn where the first pool passed, not uniformly
  later = res.candidate_index >= 32
  assert later.sum() == rescue["accepted"]
  np.testing.assert_array_equal(res.latents[later], z[res.candidate_index[later] - 32])
  # a pool that fills needs no rescue
  fine = _discover_on_bank(bank, 6, dataclasses.replace(options, strength_range=(0.95, 1.0), rescue_factor=4))
  assert fine.num_accepted == 6 and fine.rescue is None
