"""The few-shot images' power spectrum as a check on denoised candidates.

Why: where the base model cannot re-draw what a step changed in the target's style it draws
its own, and that shows first in how the image's power is spread over spatial scales: fine
squiggles on smooth terrain, large blobs in a star field. Neither feature space of the band
sees it reliably, and a few numbers per image (log power in octave bands) fitted on the
few-shot images themselves need no trained network. Measured in docs/method.md (the
`discovery.spectral_guard` bullet).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

EMPTY_BAND = 1e-4  # a band with less than this share of the strongest band's power holds no structure
MIN_SCALE = 1e-3  # floor on a band's log-power spread among the few-shot images (nats)


def octave_bands(size: int) -> list[tuple[int, int]]:
  """Radial frequency bands (in cycles per image, inclusive) 1, 2, 3-4, 5-8, ... up to size // 2."""
  top, bands, lo = size // 2, [], 1
  while lo <= top:
    hi = min(max(lo, 2 * lo - 2) if lo > 2 else lo, top)
    bands.append((lo, hi))
    lo = hi + 1
  return bands


def band_log_power(images: Any) -> np.ndarray:
  """(n, B) natural log of each image's mean power per octave band (``octave_bands``), averaged
  over channels, of (n, H, W, C) images with each image's mean removed."""
  x = np.asarray(images, np.float64)
  if x.ndim != 4:
    raise ValueError(f"band_log_power needs images of shape (n, H, W, C), got {x.shape}")
  n, h, w, _ = x.shape
  x = x - x.mean(axis=(1, 2), keepdims=True)
  power = (np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2).mean(axis=3) / (h * w)  # (n, H, W)
  radius = np.rint(np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2) * min(h, w))
  out = np.stack([power[:, (radius >= lo) & (radius <= hi)].mean(axis=1) for lo, hi in octave_bands(min(h, w))], 1)
  return np.log(out + 1e-30)


@dataclasses.dataclass(frozen=True)
class SpectralEnvelope:
  """Per-band mean and spread of the few-shot images' log power; a candidate's score is its
  largest |z| over the bands, and it passes when that is at most what all but ``quantile`` of
  the few-shot images score when each is left out of the fit. Bands the few-shot images hold
  (next to) no power in are left out: an image upsampled from a lower resolution has nothing
  there, and what the model puts there is below anything the images can show."""

  mean: np.ndarray  # (B,) over the bands kept
  scale: np.ndarray  # (B,)
  bands: np.ndarray  # (B_all,) bool: the octave bands kept
  size: int  # min(H, W) of the images the bands are of
  threshold: float
  loo_scores: np.ndarray  # (N,)

  @classmethod
  def fit(cls, fewshot_images: Any, quantile: float) -> "SpectralEnvelope":
    if not 0.0 <= quantile < 1.0:
      raise ValueError(f"spectral_guard must be a quantile in [0, 1), got {quantile!r}")
    p = band_log_power(fewshot_images)
    if len(p) < 3:
      raise ValueError(f"the spectral guard needs at least 3 few-shot images, got {len(p)}")
    mean = p.mean(axis=0)
    bands = mean >= mean.max() + np.log(EMPTY_BAND)
    p = p[:, bands]
    loo = np.empty(len(p))
    for i in range(len(p)):
      rest = np.delete(p, i, axis=0)
      loo[i] = _score(p[i : i + 1], rest.mean(axis=0), _scale(rest))[0]
    size = min(np.shape(fewshot_images)[1:3])
    return cls(p.mean(axis=0), _scale(p), bands, size, float(np.quantile(loo, 1.0 - quantile)), loo)

  def scores(self, images: Any) -> np.ndarray:
    if min(np.shape(images)[1:3]) != self.size:
      raise ValueError(
          f"the spectral guard was fitted on {self.size}-pixel images, got images of shape {np.shape(images)}"
      )
    return _score(band_log_power(images)[:, self.bands], self.mean, self.scale)

  def miss(self, images: Any) -> np.ndarray:
    """log(score / threshold) where a candidate is outside the envelope, else 0."""
    s = self.scores(images)
    with np.errstate(divide="ignore"):
      return np.where(s > self.threshold, np.log(s / max(self.threshold, 1e-300)), 0.0)

  def summary(self) -> dict:
    return {
        "bands": [list(b) for b, keep in zip(octave_bands(self.size), self.bands) if keep],
        "threshold": self.threshold,
    }


def _scale(p: np.ndarray) -> np.ndarray:
  return np.maximum(p.std(axis=0, ddof=1), MIN_SCALE)


def _score(p: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
  return np.max(np.abs((p - mean) / scale), axis=1)
