"""Span draws: a pooled-prior draw sampled through its inner products with the banks.

The kernel's inner products and norm must be those of the draw that materialisation
makes later, and that draw must have the prior's law (checked against plain
``sample_prior`` draws of the same prior, in directions inside and outside the span)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from discovery_jax import discovery as geo
from discovery_jax.discovery import draws as dr
from discovery_jax.discovery.driver import bank_geometry

D = 3072


def banks(n_ood=40, n_id=30, seed=0, duplicate=False):
  rng = np.random.default_rng(seed)
  ood = (rng.standard_normal((n_ood, D)) * 1.3 + 0.2).astype(np.float32)
  idb = (rng.standard_normal((n_id, D)) - 0.2).astype(np.float32)
  if duplicate:  # an exact copy and an exact mix: the Gram matrix is singular
    ood[1] = ood[0]
    ood[2] = 0.5 * ood[3] + 0.5 * ood[4]
  return ood, idb


def basis_for(ood, idb, prior):
  geom = bank_geometry(ood, idb, w=np.asarray(ood.mean(0) - idb.mean(0)), full_id_gram=True)
  return geom, dr.fit_draw_basis(geom.g_all, geom.all_t, prior)


@pytest.mark.parametrize("duplicate", [False, True])
def test_kernel_dots_are_the_materialised_draws_dots(duplicate):
  ood, idb = banks(duplicate=duplicate)
  prior = geo.fit_prior(ood)
  geom, basis = basis_for(ood, idb, prior)
  # w, both bank means and the prior mean (= mean(ood)) lie in the banks' span; a copy and a
  # mix remove two more directions.
  assert basis.rank == len(ood) + len(idb) - (2 if duplicate else 0)
  key, paths = jax.random.key(3), jnp.arange(64, dtype=jnp.uint32)
  dots, sq = dr.path_dots(basis, key, paths)
  z = np.asarray(dr.draws_for_paths(basis, geom.all_t, prior.mean, key, np.arange(64)), np.float64)
  s = np.asarray(geom.all_t, np.float64)
  want = z @ s
  scale = np.sqrt(np.sum(z * z, 1))[:, None] * np.sqrt(np.sum(s * s, 0))[None, :]
  assert np.max(np.abs(np.asarray(dots) - want) / scale) < 2e-6  # cosines agree to float32 rounding
  np.testing.assert_allclose(np.asarray(sq), np.sum(z * z, 1), rtol=2e-6)


def test_span_draws_have_the_prior_law():
  ood, idb = banks(seed=1)
  prior = geo.fit_prior(ood)
  geom, basis = basis_for(ood, idb, prior)
  key, n = jax.random.key(5), 3000
  span = np.asarray(dr.draws_for_paths(basis, geom.all_t, prior.mean, key, np.arange(n)), np.float64)
  full = np.asarray(geo.sample_prior(prior, key, np.arange(n)), np.float64)
  rng = np.random.default_rng(2)
  inside = np.asarray(geom.all_t, np.float64)[:, [0, 45, 70]].T  # an OOD row, an ID row, w
  outside = rng.standard_normal((3, D))
  directions = np.concatenate([inside, outside, np.asarray(prior.mean, np.float64)[None]])
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  m = np.asarray(prior.mean, np.float64)
  for draws in (span, full):
    proj = (draws - m) @ directions.T / prior.sigma  # N(0, 1) in every direction
    np.testing.assert_allclose(proj.mean(0), 0.0, atol=4.5 / np.sqrt(n))
    np.testing.assert_allclose(proj.std(0), 1.0, atol=4.5 / np.sqrt(2 * n))
    r2 = np.sum((draws - m) ** 2, 1) / prior.sigma**2  # chi^2(d)
    assert abs(r2.mean() - D) < 4.5 * np.sqrt(2 * D / n)
    assert r2.std() == pytest.approx(np.sqrt(2 * D), rel=0.1)
  # Two draws of one path index are the same bits whatever else shares the call.
  np.testing.assert_array_equal(
      np.asarray(dr.draws_for_paths(basis, geom.all_t, prior.mean, key, [7, 3000, 11]))[[0, 2]],
      span[[7, 11]].astype(np.float32),
  )


def test_a_diagonal_prior_or_a_basis_near_d_keeps_full_draws():
  ood, idb = banks(seed=2)
  assert dr.use_span_draws(geo.fit_prior(ood), 73)
  assert not dr.use_span_draws(geo.fit_prior(ood, "diagonal"), 73)
  assert not dr.use_span_draws(geo.fit_prior(ood), D // 4)  # the basis must be far smaller than d
  diag = geo.fit_prior(ood, "diagonal")
  key = jax.random.key(1)
  np.testing.assert_array_equal(
      np.asarray(geo.path_draws(ood, idb, diag, key, [2, 5])), np.asarray(geo.sample_prior(diag, key, [2, 5]))
  )


@pytest.mark.slow
def test_discovery_with_span_draws_accepts_what_meets_the_criteria_and_does_not_depend_on_the_chunk():
  ood, idb = banks(60, 60, seed=3)
  key = jax.random.key(42)
  targets = geo.compute_targets(ood, idb, num_refs=10, tolerance_scale=3.0, key=jax.random.key(1))
  common = dict(num_samples=500, key=key, max_candidates=2000, targets=targets, compare=False)
  a = geo.discover(ood, idb, chunk_paths=32, **common)
  b = geo.discover(ood, idb, chunk_paths=64, **common)
  assert a.num_accepted > 40  # more than one MAT_BLOCK: blocks fill across chunks
  np.testing.assert_array_equal(a.latents, b.latents)
  np.testing.assert_array_equal(a.candidate_index, b.candidate_index)
  # Each latent is its slerp point between its source and its path's draw, and meets the criteria.
  prior = geo.fit_prior(ood)
  draws = np.asarray(geo.path_draws(ood, idb, prior, jax.random.fold_in(key, 0), a.path_index))
  latent = np.stack(
      [np.asarray(geo.slerp(ood[a.source_index[i]], draws[i], [a.t[i]]))[0] for i in range(a.num_accepted)]
  )
  np.testing.assert_allclose(a.latents.reshape(a.num_accepted, -1), latent, rtol=0, atol=2e-5)
  stats = geo.score_candidates(a.latents, idb[a.id_ref_index], ood[a.ood_ref_index], targets)["stats"]
  assert np.all(np.abs(stats - np.asarray(targets.values)) <= np.asarray(targets.tolerances) * 1.001)


def test_the_config_switches_span_draws_and_optimize_keeps_full_draws():
  from discovery_jax import configlib, settings
  from discovery_jax.discovery import driver
  from tests import helpers

  config = configlib.load_config_file(f"{helpers.REPO}/configs/demo.py")
  assert settings.discovery_options(config).span_draws is True
  config.discovery.span_draws = False
  assert settings.discovery_options(config).span_draws is False
  ood, idb = banks(20, 20, seed=4)
  opts = geo.DiscoveryOptions(num_refs=5)
  search = driver._setup(ood, idb, 1, jax.random.key(0), opts, None, None, None, None)
  assert search.draws is not None and search.draws.rank == 40
  for changed in (dict(span_draws=False), dict(mode="optimize"), dict(prior_kind="diagonal")):
    opts = geo.DiscoveryOptions(num_refs=5, **changed)
    assert driver._setup(ood, idb, 1, jax.random.key(0), opts, None, None, None, None).draws is None, changed
