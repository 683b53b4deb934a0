"""Reconstruction quality of image pairs: MSE, PSNR and SSIM on [0, 1] pixels.

SSIM is the standard Gaussian-window SSIM of Wang et al. (2004): window sigma 1.5
truncated to 11x11, K1 = 0.01, K2 = 0.03, data range 1, computed per channel and
averaged (the defaults of skimage's ``structural_similarity(gaussian_weights=True)``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def to_unit(x: np.ndarray) -> np.ndarray:
  """[-1, 1] model space -> [0, 1], clipped."""
  return np.clip((np.asarray(x, np.float64) + 1.0) / 2.0, 0.0, 1.0)


def mse(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
  err = mse(a, b)
  return float("inf") if err == 0 else float(10 * np.log10(data_range**2 / err))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5) -> float:
  """Mean SSIM of two (H, W, C) images."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"ssim of images with different shapes {a.shape} and {b.shape}")
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  # truncate=3.5 gives the 11x11 window (radius 5) at sigma 1.5.
  blur = lambda z: ndimage.gaussian_filter(z, sigma=sigma, truncate=3.5, mode="reflect")
  values = []
  for c in range(a.shape[-1]):
    x, y = a[..., c], b[..., c]
    mx, my = blur(x), blur(y)
    # Unbiased (co)variances over the window, as skimage does (use_sample_covariance).
    n = 11 * 11
    cov = n / (n - 1)
    vx = cov * (blur(x * x) - mx * mx)
    vy = cov * (blur(y * y) - my * my)
    vxy = cov * (blur(x * y) - mx * my)
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    pad = 5  # skimage crops the border where the window is incomplete.
    values.append(s[pad:-pad, pad:-pad].mean() if min(x.shape) > 2 * pad else s.mean())
  return float(np.mean(values))


def compare(reference: np.ndarray, reconstruction: np.ndarray) -> dict:
  """MSE, PSNR, SSIM of two [-1, 1] images, measured on [0, 1] pixels."""
  a, b = to_unit(reference), to_unit(reconstruction)
  return {"mse": mse(a, b), "psnr": psnr(a, b), "ssim": ssim(a, b)}
