"""Typical discovery: candidates around the prior mean, judged in image space by
criteria computed from the few-shot set (pure parts, with identity 'denoising')."""

import jax
import numpy as np
import pytest

from discovery_jax import discovery
from discovery_jax.discovery import typical


def _bank(n=32, d=192, seed=0, offset=0.5):
  rng = np.random.default_rng(seed)
  return (offset + rng.standard_normal((n, 8, 8, 3))).astype(np.float32)


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


@pytest.mark.slow
def test_candidates_depend_on_their_index_only():
  bank = _bank()
  prior = discovery.fit_prior(bank)
  key = jax.random.key(3)
  whole, _, _ = typical.typical_candidates(bank, prior, key, np.arange(40))
  part, _, _ = typical.typical_candidates(bank, prior, key, np.arange(17, 40))
  np.testing.assert_array_equal(whole[17:], part)


def test_band_and_separation_come_from_the_fewshot_set():
  rng = np.random.default_rng(1)
  few = rng.standard_normal((32, 16))
  options = typical.TypicalOptions()
  crit = typical.ImageCriteria.fit(few, None, options)
  d = np.sqrt(((few[:, None] - few[None]) ** 2).sum(-1))
  np.fill_diagonal(d, np.inf)
  loo = d.min(1)
  assert crit.band == (
      pytest.approx(np.quantile(loo, options.band[0])),
      pytest.approx(np.quantile(loo, options.band[1])),
  )
  copies = few[:5] + 1e-6
  far = few[:5] * 50
  v = crit.judge(np.concatenate([copies, far]))
  assert v["too_close"][:5].all() and v["too_far"][5:].all()


def test_select_never_keeps_two_from_the_same_place():
  feats = np.array([[0.0, 0.0], [0.01, 0.0], [5.0, 0.0], [5.0, 0.02], [10.0, 0.0]])
  verdict = {k: np.zeros(5, bool) for k in ("too_close", "too_far", "own_side")}
  kept = typical.select(feats, verdict, np.zeros((0, 2)), separation=1.0, needed=10)
  assert kept.tolist() == [0, 2, 4]
  assert typical.select(feats, verdict, feats[:1], separation=1.0, needed=10).tolist() == [2, 4]
  verdict["own_side"][2] = True
  assert typical.select(feats, verdict, np.zeros((0, 2)), separation=1.0, needed=2).tolist() == [0, 3]


def test_discover_typical_accepts_only_what_meets_its_criteria():
  bank = _bank()
  images = bank  # identity "denoising": the images are the latents
  flat = lambda x: np.asarray(x, np.float64).reshape(len(x), -1)
  own = _bank(16, seed=5, offset=-3.0)
  # Gaussian latents as images: only near-fresh prior draws are as far from the few-shot set as its members.
  options = discovery.TypicalOptions(strength_range=(0.95, 1.0))
  res = discovery.discover_typical(
      bank,
      num_samples=24,
      key=jax.random.key(0),
      denoise=lambda z: z,
      features=flat,
      fewshot_images=images,
      own_images=own,
      options=options,
  )
  assert res.num_accepted == 24 and res.latents.shape == (24, 8, 8, 3)
  np.testing.assert_array_equal(res.latents, res.images)
  crit = res.criteria
  assert (res.nn_fewshot >= crit["band"][0]).all() and (res.nn_fewshot <= crit["band"][1]).all()
  f = flat(res.images)
  d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
  np.fill_diagonal(d, np.inf)
  assert d.min() >= crit["separation"]
  again = discovery.discover_typical(
      bank,
      num_samples=24,
      key=jax.random.key(0),
      denoise=lambda z: z,
      features=flat,
      fewshot_images=images,
      own_images=own,
      options=options,
  )
  np.testing.assert_array_equal(res.latents, again.latents)


def test_a_pool_that_runs_out_returns_fewer_and_says_why():
  bank = _bank()
  flat = lambda x: np.asarray(x, np.float64).reshape(len(x), -1)
  res = discovery.discover_typical(
      bank,
      num_samples=10,
      key=jax.random.key(0),
      denoise=lambda z: z * 100.0,
      features=flat,
      fewshot_images=bank,
      options=discovery.TypicalOptions(pool_factor=2),
  )
  assert res.num_accepted == 0 and res.num_candidates == 20 and res.rejections["too_far"] == 20


def test_bad_options_and_tiny_fewshot_sets_are_refused():
  with pytest.raises(ValueError, match="band"):
    discovery.TypicalOptions(band=(0.9, 0.2))
  with pytest.raises(ValueError, match="strength_range"):
    discovery.TypicalOptions(strength_range=(0.5, 1.5))
  with pytest.raises(ValueError, match="at least 4 few-shot"):
    typical.ImageCriteria.fit(np.zeros((3, 4)), None, typical.TypicalOptions())


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
