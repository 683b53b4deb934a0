"""The shape of typical discovery's step: white noise, or noise whose power per spatial
frequency and channel follows the few-shot residuals' own, raised to a power.

Why: the base model reads the step's coarse structure as ITS domain's layout (low
frequencies are what its early denoising steps decide), and the drift toward the model's
own images grows with the step's low-frequency power. With a negative power most of the
step goes to the frequencies the few-shot images vary least in (fine detail), so a
candidate keeps its source's layout and the model re-draws the rest in the target's
style; a positive power is a stationary Gaussian fit of the bank (the most drift).
'auto' reads the power off the residuals' spectral slope: where it is flat there is no
dominant layout to leave alone, and white steps do better.
Measured in docs/method.md (the `discovery.step_spectrum` bullet).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from discovery_jax.discovery.linalg import as_rows, latent_shape

POWER_LIMIT = 2.0  # |power| beyond this puts nearly all of the step into one frequency
AUTO = "auto"  # the power read off the few-shot residuals' own spectrum (``auto_power``)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["gain", "rotation"], meta_fields=["power"])
@dataclasses.dataclass(frozen=True)
class StepSpectrum:
  """A stationary filter over (H, W, C) latents: white noise is rotated into the residuals'
  channel eigenbasis, each frequency of each component scaled by ``gain``, and rotated back.
  ``gain`` squared has mean 1 over all frequencies and components, so the step's pooled
  variance is the white step's."""

  gain: jax.Array  # (H, W, C)
  rotation: jax.Array  # (C, C): columns are the residuals' channel eigenvectors
  power: float

  def summary(self) -> dict:
    """How the filter shares the step out: the fraction of its power in the lowest eighth of the
    frequencies and in the highest half (white noise: 1/8 and 1/2)."""
    g2 = np.asarray(self.gain, np.float64) ** 2
    h, w = g2.shape[:2]
    by_frequency = g2.reshape(h * w, -1).sum(1)[np.argsort(_frequency_radius(h, w).ravel(), kind="stable")]
    return {
        "power": self.power,
        "share_lowest_eighth": float(by_frequency[: h * w // 8].sum() / g2.sum()),
        "share_highest_half": float(by_frequency[h * w - h * w // 2 :].sum() / g2.sum()),
    }


def power_error(power: Any) -> ValueError:
  """The one message for a ``step_spectrum`` that is neither 'auto' nor a number in range."""
  return ValueError(f"step_spectrum must be {AUTO!r} or a number in [-{POWER_LIMIT}, {POWER_LIMIT}], got {power!r}")


def check_power(power: float | str) -> None:
  """The one range check of ``step_spectrum`` (the options and the fit both call it)."""
  if isinstance(power, str) and power == AUTO:
    return
  if isinstance(power, (str, bool)) or not -POWER_LIMIT <= power <= POWER_LIMIT:
    raise power_error(power)


def _frequency_radius(h: int, w: int) -> np.ndarray:
  return np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2)


def _residuals(latents: Any, mean: Any) -> np.ndarray:
  """(n, H, W, C) residuals latents - mean, refusing what has no spatial spectrum."""
  shape = latent_shape(latents)
  if len(shape) != 3:
    raise ValueError(f"step_spectrum needs image latents of shape (H, W, C), got latents of shape {shape}")
  rows = np.asarray(as_rows(latents), np.float64)
  n = rows.shape[0]
  if n < 2:
    raise ValueError(f"fitting the step's spectrum needs at least 2 latents, got {n}")
  return (rows - np.asarray(mean, np.float64).reshape(1, -1)).reshape(n, *shape)


def residual_slope(latents: Any, mean: Any) -> float:
  """The slope of log power against log spatial frequency of the residuals (summed over channels,
  least squares over every nonzero frequency): about 0 for white residuals (point sources in noise),
  -1 and steeper where a smooth layout dominates the images' variation."""
  res = _residuals(latents, mean)
  h, w = res.shape[1:3]
  power = np.mean(np.abs(np.fft.fft2(res, axes=(1, 2))) ** 2, axis=(0, 3)).ravel()
  radius = _frequency_radius(h, w).ravel()
  live = (radius > 0) & (power > 0)
  if live.sum() < 2:
    return 0.0
  return float(np.polyfit(np.log(radius[live]), np.log(power[live]), 1)[0])


def auto_power(slope: float) -> float:
  """The filter's power for residuals of this spectral ``slope``: the slope itself, between -1 and 0.
  The filter exists to leave the layout alone; residuals with no dominant layout (a flat spectrum)
  get white steps, residuals whose layout dominates (slope -1 or steeper) the full inverse filter.
  Rounded to two decimals, so that the slope's estimation noise does not change the candidates."""
  return round(float(np.clip(slope, -1.0, 0.0)), 2) + 0.0  # + 0.0: never -0.0


def fit_step_spectrum(latents: Any, mean: Any, power: float) -> StepSpectrum:
  """The residuals' (latents - mean) power per frequency and channel component, raised to
  ``power`` and normalized to mean 1. ``power`` 0 would be white noise (callers skip the
  filter then); the residuals' own power is floored at 1e-6 of its mean, so a negative
  power never divides by zero."""
  check_power(power)
  if isinstance(power, str):
    raise ValueError(f"fit_step_spectrum needs a number, got {power!r}: resolve {AUTO!r} with auto_power first")
  res = _residuals(latents, mean)
  n, h, w, c = res.shape
  _, rotation = np.linalg.eigh(np.einsum("nhwc,nhwd->cd", res, res) / (n * h * w))
  spectrum = np.mean(np.abs(np.fft.fft2(res @ rotation, axes=(1, 2))) ** 2, axis=0) / (h * w)
  spectrum = np.maximum(spectrum, 1e-6 * spectrum.mean())
  gain2 = spectrum**power
  gain2 /= gain2.mean()
  return StepSpectrum(jnp.asarray(np.sqrt(gain2), jnp.float32), jnp.asarray(rotation, jnp.float32), float(power))


def shape_step(spectrum: StepSpectrum, eps: jax.Array) -> jax.Array:
  """White noise ``eps`` (d,) through the filter, (d,): unit variance per entry on average
  (a gain of 1 everywhere gives ``eps`` back). Real up to rounding: the gain is symmetric in
  frequency because it comes from power spectra of real residuals."""
  h, w, c = spectrum.gain.shape
  components = eps.reshape(h, w, c) @ spectrum.rotation
  x = jnp.fft.ifft2(jnp.fft.fft2(components, axes=(0, 1)) * spectrum.gain, axes=(0, 1)).real
  return (x @ spectrum.rotation.T).reshape(-1)
