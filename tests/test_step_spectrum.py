"""The step's spectrum (discovery/step_spectrum.py): a filter fitted on the few-shot residuals
that shapes typical discovery's step noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from discovery_jax import configlib, discovery, settings
from discovery_jax.discovery import typical
from discovery_jax.discovery.prior import standard_normal
from discovery_jax.discovery.step_spectrum import auto_power, fit_step_spectrum, residual_slope, shape_step

H, W, C = 16, 16, 3
MIXING = np.array([[1.0, 0.8, 0.5], [0.0, 0.6, 0.3], [0.0, 0.0, 0.4]])


def _smooth_bank(n, seed=0):
  """Latents with smooth (low-frequency) structure and correlated channels, plus a little white noise."""
  rng = np.random.default_rng(seed)
  radius2 = np.fft.fftfreq(H)[:, None] ** 2 + np.fft.fftfreq(W)[None, :] ** 2
  lowpass = np.sqrt(np.exp(-radius2 / 0.01))[None, :, :, None]
  x = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, H, W, C)), axes=(1, 2)) * lowpass * 5, axes=(1, 2)))
  return (0.3 + x @ MIXING + 0.1 * rng.standard_normal((n, H, W, C))).astype(np.float32)


def _shaped(spectrum, n, seed=0):
  key = jax.random.key(seed)
  draw = lambda i: shape_step(spectrum, standard_normal(jax.random.fold_in(key, i), H * W * C))
  return np.asarray(jax.vmap(draw)(jnp.arange(n)), np.float64).reshape(n, H, W, C)


def _power_per_frequency(x):
  return np.mean(np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2, axis=(0, 3))


def _channel_correlation(x):
  c = np.einsum("nhwc,nhwd->cd", x, x)
  return c / np.sqrt(np.outer(np.diag(c), np.diag(c)))


def test_power_one_reproduces_the_banks_colour_and_spectrum_and_power_zero_is_white():
  bank = _smooth_bank(400)
  mean = bank.mean(0).reshape(-1)
  residuals = bank.astype(np.float64) - bank.mean(0)
  step = _shaped(fit_step_spectrum(bank, mean, 1.0), 2000)
  assert abs(step.var() - 1.0) < 0.03  # the white step's pooled variance
  np.testing.assert_allclose(_channel_correlation(step), _channel_correlation(residuals), atol=0.03)
  log_bank, log_step = np.log(_power_per_frequency(residuals)), np.log(_power_per_frequency(step))
  assert np.corrcoef(log_bank.ravel(), log_step.ravel())[0, 1] > 0.99
  # Power 0: a gain of 1 everywhere, the white draw itself.
  white = fit_step_spectrum(bank, mean, 0.0)
  eps = standard_normal(jax.random.key(3), H * W * C)
  np.testing.assert_allclose(np.asarray(shape_step(white, eps)), np.asarray(eps), atol=1e-5)


def test_a_negative_power_moves_the_step_to_the_frequencies_the_bank_varies_least_in():
  bank = _smooth_bank(64)
  mean = bank.mean(0).reshape(-1)
  white, inverse = (fit_step_spectrum(bank, mean, p) for p in (0.0, -1.0))
  assert white.summary()["share_lowest_eighth"] == pytest.approx(0.125, abs=0.01)
  assert inverse.summary()["share_lowest_eighth"] < 0.02 and inverse.summary()["share_highest_half"] > 0.6
  step = _shaped(inverse, 1000)
  assert abs(step.var() - 1.0) < 0.03
  power = _power_per_frequency(step)
  assert power[0, 0] < 0.05 * power.mean()  # the bank's dominant (lowest) frequency gets almost none


def test_candidates_with_a_shaped_step_keep_the_shell_and_depend_on_their_index_only():
  bank = _smooth_bank(32, seed=1)
  prior = discovery.fit_prior(bank)
  spectrum = fit_step_spectrum(bank, prior.mean, -1.0)
  key = jax.random.key(0)
  z, src, _ = typical.typical_candidates(bank, prior, key, np.arange(64), (0.5, 0.5), spectrum=spectrum)
  parts = [typical.typical_candidates(bank, prior, key, g, (0.5, 0.5), spectrum=spectrum)[0] for g in ([5, 1], [40])]
  np.testing.assert_allclose(parts[0], z[[5, 1]], atol=1e-6)
  np.testing.assert_allclose(parts[1], z[[40]], atol=1e-6)
  m = np.asarray(prior.mean, np.float64)
  shell = np.linalg.norm(bank.reshape(32, -1) - m, axis=1).mean()
  assert abs(np.linalg.norm(z.reshape(64, -1) - m, axis=1).mean() / shell - 1) < 0.05
  # What the step changed is fine detail: the change from the source has little low-frequency power.
  change = z.astype(np.float64) - np.sqrt(0.75) * (bank[src] - m.reshape(H, W, C)) - m.reshape(H, W, C)
  power = _power_per_frequency(change)
  assert power[0, 0] < 0.05 * power.mean()
  white_z = typical.typical_candidates(bank, prior, key, np.arange(64), (0.5, 0.5))[0]
  # The options' filter is the one fitted here, and none at all for white steps (power 0).
  assert typical.step_filter(bank, prior, typical.TypicalOptions(step_spectrum=0.0)) is None
  same = typical.step_filter(bank, prior, typical.TypicalOptions(step_spectrum=-1.0))
  np.testing.assert_allclose(np.asarray(same.gain), np.asarray(spectrum.gain), rtol=1e-6)
  white_change = white_z.astype(np.float64) - np.sqrt(0.75) * (bank[src] - m.reshape(H, W, C)) - m.reshape(H, W, C)
  assert _power_per_frequency(white_change)[0, 0] > 0.3 * _power_per_frequency(white_change).mean()


def _discover_on_images(bank, num_samples, **options):
  """Typical discovery with the identity as the denoiser and the pixels as features, first come."""
  flat = lambda x: np.asarray(x, np.float64).reshape(len(x), -1)
  return discovery.discover_typical(
      bank,
      num_samples=num_samples,
      key=jax.random.key(0),
      denoise=lambda z: z,
      features=flat,
      fewshot_images=bank,
      options=typical.TypicalOptions(distance_bins=1, balance="distance", fill_after=None, **options),
  )


def test_discovery_records_the_spectrum_and_bad_settings_are_refused_in_one_line():
  bank = _smooth_bank(32, seed=2)
  result = _discover_on_images(bank, 8, step_spectrum=-1.0)
  assert result.num_accepted == 8
  assert result.summary()["prior"]["step_spectrum"]["power"] == -1.0
  assert result.summary()["config"]["step_spectrum"] == -1.0
  with pytest.raises(ValueError, match=r"step_spectrum must be 'auto' or a number in \[-2.0, 2.0\], got 3.0"):
    typical.TypicalOptions(step_spectrum=3.0)
  with pytest.raises(ValueError, match=r"step_spectrum must be 'auto' or a number in \[-2.0, 2.0\], got 'fine'"):
    typical.TypicalOptions(step_spectrum="fine")
  with pytest.raises(ValueError, match=r"needs image latents of shape \(H, W, C\), got latents of shape \(12,\)"):
    fit_step_spectrum(np.zeros((4, 12), np.float32), np.zeros(12), -1.0)
  config = configlib.load_config_file("configs/demo.py")
  config.discovery.step_spectrum = -5.0
  with pytest.raises(ValueError, match=r"^config.discovery: step_spectrum must be 'auto' or a number in .*got -5.0$"):
    settings.typical_options(config)
  config.discovery.step_spectrum = "steep"
  with pytest.raises(
      ValueError, match=r"^config.discovery: step_spectrum must be 'auto' or a number in .*got 'steep'$"
  ):
    settings.typical_options(config)


def _power_law_bank(n, slope, seed=0):
  """Residual fields whose power falls off as frequency ** slope (0: white)."""
  rng = np.random.default_rng(seed)
  radius = np.sqrt(np.fft.fftfreq(H)[:, None] ** 2 + np.fft.fftfreq(W)[None, :] ** 2)
  amplitude = np.where(radius > 0, np.maximum(radius, 1e-9) ** (slope / 2), 0.0)[None, :, :, None]
  x = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, H, W, C)), axes=(1, 2)) * amplitude, axes=(1, 2)))
  return (0.3 + x / x.std()).astype(np.float32)


@pytest.mark.parametrize("slope", [0.0, -0.5, -1.5])
def test_the_residual_slope_is_read_off_the_bank_and_auto_keeps_it_between_minus_one_and_zero(slope):
  bank = _power_law_bank(200, slope)
  measured = residual_slope(bank, bank.mean(0).reshape(-1))
  assert measured == pytest.approx(slope, abs=0.12)
  assert auto_power(measured) == pytest.approx(min(max(slope, -1.0), 0.0), abs=0.12)
  assert -1.0 <= auto_power(measured) <= 0.0


def test_strengths_follow_the_power_and_auto_is_resolved_on_the_bank():
  assert typical.strengths_for_power(0.0) == typical.WHITE_STRENGTHS == (0.1, 0.7)
  assert typical.strengths_for_power(-1.0) == typical.FILTERED_STRENGTHS == (0.2, 0.9)
  assert typical.strengths_for_power(-2.0) == (0.2, 0.9) and typical.strengths_for_power(1.0) == (0.1, 0.7)
  assert typical.strengths_for_power(-0.5) == pytest.approx((0.15, 0.8))
  options = typical.TypicalOptions()  # the library's default: 'auto', strengths from the power
  assert options.step_spectrum == "auto" and options.strength_range is None
  smooth, white = _smooth_bank(64, seed=3), _power_law_bank(64, 0.0, seed=3)
  for bank, power in ((smooth, -1.0), (white, 0.0)):
    prior = discovery.fit_prior(bank)
    resolved, info = typical.resolve_step(options, bank, prior)
    assert info["requested"] == "auto" and info["residual_slope"] == pytest.approx(
        residual_slope(bank, prior.mean), abs=1e-4
    )
    assert resolved.step_spectrum == pytest.approx(power, abs=0.15)
    assert resolved.strength_range == typical.strengths_for_power(resolved.step_spectrum)
    assert (typical.step_filter(bank, prior, options) is None) == (resolved.step_spectrum == 0.0)
  # A range set by hand is kept; a number is taken as it is; flat latents have no spectrum: white.
  prior = discovery.fit_prior(smooth)
  kept, info = typical.resolve_step(typical.TypicalOptions(strength_range=(0.3, 0.4)), smooth, prior)
  assert kept.strength_range == (0.3, 0.4) and kept.step_spectrum == -1.0
  assert typical.resolve_step(typical.TypicalOptions(step_spectrum=-0.5), smooth, prior) == (
      typical.TypicalOptions(step_spectrum=-0.5, strength_range=(0.15, 0.8)),
      {},
  )
  flat = smooth.reshape(64, -1)
  resolved, info = typical.resolve_step(options, flat, discovery.fit_prior(flat))
  assert resolved.step_spectrum == 0.0 and resolved.strength_range == (0.1, 0.7) and info["residual_slope"] is None


def test_discovery_on_auto_records_what_it_read_off_the_bank():
  result = _discover_on_images(_smooth_bank(32, seed=4), 4)  # the library's default step: 'auto'
  step = result.summary()["prior"]["step_spectrum"]
  assert step["requested"] == "auto" and step["residual_slope"] < -1.0 and step["power"] == -1.0
  assert result.summary()["config"]["step_spectrum"] == -1.0
  assert tuple(result.summary()["config"]["strength_range"]) == (0.2, 0.9)
  assert np.all((result.strength >= 0.2) & (result.strength <= 0.9))
