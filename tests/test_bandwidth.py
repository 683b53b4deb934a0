"""t_0 from the data (`sampling.t_0='auto'`): the structure error and the search."""

import numpy as np
import pytest

from discovery_jax import configlib, settings
from discovery_jax.discovery import bandwidth
from tests import helpers


def _images(n=6, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (n, 8, 8, 3)).astype(np.float32)


def test_structure_error_is_relative_to_each_images_own_structure():
  x = _images()
  assert bandwidth.structure_error(x, x) == 0.0
  flat = np.broadcast_to(x.mean(axis=(1, 2, 3), keepdims=True), x.shape)
  assert bandwidth.structure_error(x, flat) == pytest.approx(1.0)
  noise = np.random.default_rng(1).normal(0, 0.1, x.shape)
  # The same relative error whatever the images' scale and offset (dark galaxies, bright textures).
  e = bandwidth.structure_error(x, x + noise)
  assert bandwidth.structure_error(0.1 * x - 0.8, 0.1 * (x + noise) - 0.8) == pytest.approx(e)
  with pytest.raises(bandwidth.BandwidthError, match="every image is constant"):
    bandwidth.structure_error(np.zeros((2, 4, 4, 1)), np.zeros((2, 4, 4, 1)))
  with pytest.raises(ValueError, match="differ in shape"):
    bandwidth.structure_error(x, x[:2])


def _growing_error(calls):
  """A reconstruction whose error grows with t_0 like a model's does: noise of scale t/1000."""
  noise = np.random.default_rng(2).normal(0, 1, (6, 8, 8, 3))

  def reconstruct(t, x):
    calls.append(t)
    return x + (t / 1000.0) * noise[: len(x)]

  return reconstruct


def test_search_picks_the_largest_t0_within_tolerance_and_stops_at_the_first_failure():
  x, calls = _images(), []
  spread = float(((x - x.mean(axis=(1, 2, 3), keepdims=True)) ** 2).sum())
  tolerance = 0.1
  search = bandwidth.find_t0(x, _growing_error(calls), bandwidth.BandwidthOptions(tolerance=tolerance))
  noise = np.random.default_rng(2).normal(0, 1, x.shape)
  expected = [t for t in bandwidth.DEFAULT_CANDIDATES if ((t / 1000.0) ** 2 * (noise**2).sum()) / spread <= tolerance]
  assert search.t_0 == max(expected)
  assert calls == list(bandwidth.DEFAULT_CANDIDATES[: len(expected) + 1])  # one past the answer, no more
  assert search.errors[search.t_0] <= tolerance < search.errors[calls[-1]]
  assert "chose t_0 = " in search.describe() and search.summary()["t_0"] == search.t_0


def test_search_uses_at_most_max_images_and_skips_candidates_the_sampler_cannot_run():
  seen = []

  def reconstruct(t, x):
    seen.append((t, len(x)))
    return x

  options = bandwidth.BandwidthOptions(tolerance=0.5, candidates=(10, 100, 200), max_images=4)
  search = bandwidth.find_t0(_images(6), reconstruct, options, valid=lambda t: t >= 50)
  assert seen == [(100, 4), (200, 4)] and search.t_0 == 200 and search.num_images == 4


def test_a_search_that_finds_nothing_is_one_line():
  with pytest.raises(bandwidth.BandwidthError) as e:
    bandwidth.find_t0(_images(), _growing_error([]), bandwidth.BandwidthOptions(tolerance=1e-6))
  message = str(e.value)
  assert "\n" not in message and "no t_0 within tolerance 1e-06" in message and "t_0 = 100" in message
  assert "set sampling.t_0 to an integer" in message
  with pytest.raises(bandwidth.BandwidthError, match="fits this sampler"):
    bandwidth.find_t0(_images(), _growing_error([]), valid=lambda t: False)
  with pytest.raises(bandwidth.BandwidthError, match="few-shot set is empty"):
    bandwidth.find_t0(_images()[:0], _growing_error([]))


@pytest.mark.parametrize("tolerance", [0.0, 1.0, -0.1])
def test_bad_tolerance_is_refused(tolerance):
  with pytest.raises(ValueError, match=r"t_0_tolerance must lie in \(0, 1\)"):
    bandwidth.BandwidthOptions(tolerance=tolerance)


def test_config_takes_auto_or_an_integer():
  import os

  config = configlib.load_config_file(os.path.join(helpers.REPO, "configs", "base.py"))
  assert settings.sampling_options(config).t_0 == 900
  for value, expected in (("auto", None), ("AUTO", None), ("500", 500), (300, 300)):
    config.sampling.t_0 = value
    assert settings.sampling_options(config).t_0 == expected
  config.sampling.t_0 = "auto"
  config.sampling.t_0_tolerance = 0.2
  assert settings.sampling_options(config).bandwidth.tolerance == 0.2
  config.sampling.t_0 = "soon"
  with pytest.raises(ValueError, match="sampling.t_0 must be an integer in 1..999 or 'auto', got 'soon'"):
    settings.sampling_options(config)


def test_t0_max_bounds_what_auto_may_choose():
  import os

  config = configlib.load_config_file(os.path.join(helpers.REPO, "configs", "base.py"))
  config.sampling.t_0 = "auto"
  config.sampling.t_0_max = 450
  assert settings.sampling_options(config).bandwidth.candidates == (100, 200, 300, 400)
  images = np.random.default_rng(0).standard_normal((2, 4, 4, 1))
  search = bandwidth.find_t0(images, lambda t, x: x, settings.sampling_options(config).bandwidth)
  assert search.t_0 == 400 and max(search.errors) == 400
  config.sampling.t_0_max = 50
  with pytest.raises(ValueError, match="t_0_max=50 leaves t_0='auto' nothing to try: the smallest candidate is 100"):
    settings.sampling_options(config)
