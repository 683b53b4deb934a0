"""The spectral guard (discovery/spectral_envelope.py): the few-shot images' log power per octave
band of spatial frequency, and the candidates whose spectra leave it."""

import numpy as np
import pytest

from discovery_jax.discovery import spectral_envelope
from discovery_jax.discovery.spectral_envelope import SpectralEnvelope, band_log_power, octave_bands


def _fields(n, slope, seed, size=32, amplitude=1.0):
  """Gaussian random fields whose power falls as k**slope (smooth for slope -3), (n, size, size, 1)."""
  rng = np.random.default_rng(seed)
  k = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2) * size
  gain = np.where(k > 0, np.maximum(k, 1.0) ** (slope / 2.0), 0.0)
  white = rng.standard_normal((n, size, size))
  x = np.fft.ifft2(np.fft.fft2(white) * gain).real
  x = amplitude * x / x.std(axis=(1, 2), keepdims=True).mean()
  return x[..., None].astype(np.float32)


def test_octave_bands_cover_every_frequency_once():
  assert octave_bands(32) == [(1, 1), (2, 2), (3, 4), (5, 8), (9, 16)]
  bands = octave_bands(256)
  assert bands[-1] == (65, 128) and len(bands) == 8
  covered = [k for lo, hi in bands for k in range(lo, hi + 1)]
  assert covered == list(range(1, 129))


def test_band_power_sees_where_the_power_is():
  smooth, rough = _fields(8, -3.0, 0), _fields(8, 0.0, 1)
  ps, pr = band_log_power(smooth), band_log_power(rough)
  assert ps.shape == (8, 5)
  assert (np.diff(ps.mean(0)) < 0).all()  # smooth: power falls with frequency
  assert abs(pr.mean(0)[-1] - pr.mean(0)[1]) < 1.0  # white: flat
  # the mean of an image is not structure; channels are averaged
  np.testing.assert_allclose(band_log_power(smooth + 5.0), ps, atol=1e-6)
  np.testing.assert_allclose(band_log_power(np.repeat(smooth, 3, axis=3)), ps, atol=1e-6)


def test_fresh_images_of_the_domain_pass_and_other_spectra_do_not():
  few = _fields(32, -3.0, 0)
  env = SpectralEnvelope.fit(few, 0.1)
  assert np.mean(env.loo_scores > env.threshold) <= 0.1 + 1 / 32  # all but the quantile (interpolated), left out
  fresh = _fields(200, -3.0, 1)
  assert np.mean(env.scores(fresh) <= env.threshold) >= 0.8
  squiggles = fresh + 0.3 * _fields(200, 0.0, 2)  # fine detail smooth fields do not have
  blobs = fresh + 3.0 * _fields(200, -5.0, 3)  # too much large-scale structure
  blank = np.zeros_like(fresh)
  for off in (squiggles, blobs, blank):
    assert np.mean(env.scores(off) > env.threshold) >= 0.95
    assert (env.miss(off)[env.scores(off) > env.threshold] > 0).all()
  assert (env.miss(fresh)[env.scores(fresh) <= env.threshold] == 0).all()


def _lowpass(x, top):
  """``x`` (n, H, W, 1) with every frequency above ``top`` cycles per image removed."""
  size = x.shape[1]
  k = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2) * size
  return np.fft.ifft2(np.fft.fft2(x[..., 0]) * (k <= top)).real[..., None]


def test_bands_the_fewshot_images_hold_no_power_in_are_left_out():
  """Images upsampled from 8x8 have nothing above 4 cycles per image: what the model puts there
  is not held against a candidate, while the bands the images do fill still are."""
  few = _lowpass(_fields(32, -2.0, 0), 4)
  env = SpectralEnvelope.fit(few, 0.1)
  assert env.summary()["bands"] == [[1, 1], [2, 2], [3, 4]]
  fresh = _lowpass(_fields(64, -2.0, 1), 4)
  noisy = fresh + 0.01 * np.random.default_rng(3).standard_normal(fresh.shape)
  assert np.mean(env.scores(noisy) <= env.threshold) >= 0.8
  assert np.mean(env.scores(noisy + 3.0 * _fields(64, -5.0, 4)) > env.threshold) >= 0.95  # kept bands still judge
  assert spectral_envelope.EMPTY_BAND <= 1e-3  # only bands with (next to) nothing are dropped


def test_bad_input_is_refused_in_one_line():
  few = _fields(8, -3.0, 0)
  with pytest.raises(ValueError, match=r"spectral_guard must be a quantile in \[0, 1\), got 1.0"):
    SpectralEnvelope.fit(few, 1.0)
  with pytest.raises(ValueError, match="at least 3 few-shot images, got 2"):
    SpectralEnvelope.fit(few[:2], 0.1)
  with pytest.raises(ValueError, match="fitted on 32-pixel images"):
    SpectralEnvelope.fit(few, 0.1).scores(_fields(2, -3.0, 1, size=16))
  with pytest.raises(ValueError, match=r"shape \(n, H, W, C\)"):
    band_log_power(few[..., 0])
