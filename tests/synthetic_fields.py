"""Synthetic astrophysical data for tests and demos (deterministic from a seed).

- Sersic galaxies: I(r) = I_e exp(-b_n ((r / r_e)^(1/n) - 1)) on an elliptical
  radius, with b_n from the exact condition gammainc(2n, b_n) = 1/2 (half the
  light inside r_e), random index, size, axis ratio, angle and centre, plus
  Gaussian noise around a subtracted sky (so values can be negative, as in real
  sky-subtracted cutouts). With 3 bands each band has its own profile: bluer
  bands flatter and more extended (disk-like), redder ones more concentrated.
- Gaussian random fields with P(k) ∝ k^-beta (white noise shaped in Fourier
  space, periodic), and log-normal fields exp(sigma g - sigma^2 / 2) of them:
  positive quantities like the radiation field of a molecular cloud.
- Writers that put such sets into a folder as FITS, with descriptive headers,
  some files with NaN pixels, and a 3-D cube.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from scipy import special

from discovery_jax.data.fits_output import write_fits

# Band-to-band profile changes for 3-band galaxies (g, r, i-like).
BAND_N_SCALE = (0.8, 1.0, 1.2)
BAND_R_SCALE = (1.2, 1.0, 0.85)
BAND_FLUX = (0.6, 1.0, 1.3)


def sersic_b(n: float | np.ndarray) -> np.ndarray:
  """b_n such that r_e encloses half the light: gammainc(2n, b_n) = 1/2."""
  return special.gammaincinv(2.0 * np.asarray(n, np.float64), 0.5)


def sersic_image(
    size: int,
    *,
    n: float,
    r_eff: float,
    q: float = 1.0,
    theta: float = 0.0,
    center: tuple[float, float] | None = None,
    amplitude: float = 1.0,
    oversample: int = 2,
) -> np.ndarray:
  """(size, size) Sersic profile; I = amplitude at r_eff; ``center`` is (x, y) in pixels.

  Each pixel is the mean over ``oversample``^2 sub-pixel samples (a sharp core
  is not a single bright pixel).
  """
  cx, cy = ((size - 1) / 2.0, (size - 1) / 2.0) if center is None else center
  sub = (np.arange(size * oversample) + 0.5) / oversample - 0.5
  x, y = np.meshgrid(sub, sub)
  dx, dy = x - cx, y - cy
  xr = dx * np.cos(theta) + dy * np.sin(theta)
  yr = -dx * np.sin(theta) + dy * np.cos(theta)
  r = np.sqrt(xr**2 + (yr / q) ** 2)
  img = amplitude * np.exp(-sersic_b(n) * ((r / r_eff) ** (1.0 / n) - 1.0))
  return img.reshape(size, oversample, size, oversample).mean(axis=(1, 3))


def sersic_galaxies(
    count: int,
    size: int = 64,
    *,
    seed: int = 0,
    bands: int = 1,
    noise: float = 0.02,
    n_range: tuple[float, float] = (0.5, 4.0),
    r_eff_range: tuple[float, float] = (0.06, 0.18),
) -> tuple[np.ndarray, list[dict]]:
  """``count`` random galaxies -> (count, size, size, bands) float64 and their parameters.

  r_eff_range is a fraction of ``size``; ``noise`` the sky noise sigma relative
  to the surface brightness at r_eff (which is log-uniform in [0.5, 2]).
  """
  if bands not in (1, 3):
    raise ValueError(f"bands must be 1 or 3, got {bands}")
  rng = np.random.default_rng(seed)
  out = np.zeros((count, size, size, bands))
  params = []
  for i in range(count):
    p = {
        "n": float(rng.uniform(*n_range)),
        "r_eff": float(rng.uniform(*r_eff_range) * size),
        "q": float(rng.uniform(0.3, 1.0)),
        "theta": float(rng.uniform(0.0, np.pi)),
        "center": [float(v) for v in (size - 1) / 2.0 + rng.normal(0.0, 0.04 * size, 2)],
        "amplitude": float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))),
    }
    for b in range(bands):
      scale = (BAND_N_SCALE[b], BAND_R_SCALE[b], BAND_FLUX[b]) if bands == 3 else (1.0, 1.0, 1.0)
      out[i, :, :, b] = sersic_image(
          size,
          n=p["n"] * scale[0],
          r_eff=p["r_eff"] * scale[1],
          q=p["q"],
          theta=p["theta"],
          center=tuple(p["center"]),
          amplitude=p["amplitude"] * scale[2],
      )
    out[i] += rng.normal(0.0, noise, (size, size, bands))
    params.append(p)
  return out, params


def gaussian_random_field(size: int, beta: float, *, seed: int = 0, count: int = 1) -> np.ndarray:
  """(count, size, size) zero-mean, unit-variance periodic fields with P(k) ∝ k^-beta."""
  rng = np.random.default_rng(seed)
  white = rng.standard_normal((count, size, size))
  freq = np.fft.fftfreq(size) * size
  k = np.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
  amp = np.zeros_like(k)
  amp[k > 0] = k[k > 0] ** (-beta / 2.0)
  field = np.fft.ifft2(np.fft.fft2(white) * amp).real
  field -= field.mean(axis=(1, 2), keepdims=True)
  return field / field.std(axis=(1, 2), keepdims=True)


def lognormal_fields(
    count: int, size: int = 64, *, beta: float = 3.0, sigma: float = 1.0, level: float = 1.0, seed: int = 0
) -> np.ndarray:
  """(count, size, size, 1) positive fields level * exp(sigma g - sigma^2/2), g a GRF (mean ~ level)."""
  g = gaussian_random_field(size, beta, seed=seed, count=count)
  return (level * np.exp(sigma * g - 0.5 * sigma**2))[..., None]


# ---------------------------------------------------------------------------
# Folders of FITS files.


def _mask_some(data: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """NaN in one bad column and a small square, as in real cutouts."""
  data = data.copy()
  h, w = data.shape[:2]
  data[:, rng.integers(0, w)] = np.nan
  y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
  data[y : y + 3, x : x + 3] = np.nan
  return data


def write_fits_set(
    folder: str,
    fields: Sequence[np.ndarray],
    *,
    prefix: str,
    header: dict,
    nan_every: int = 3,
    seed: int = 0,
    per_file_header: Sequence[dict] | None = None,
) -> list[str]:
  """Each (H, W, C) field -> ``{prefix}_{i:03d}.fits``; every ``nan_every``-th gets NaN pixels."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed + 7919)
  paths = []
  for i, data in enumerate(fields):
    if nan_every > 0 and i % nan_every == nan_every - 1:
      data = _mask_some(data, rng)
    cards = {
        **header,
        "OBJECT": f"{header.get('OBJECT', prefix)} {i}",
        **(per_file_header[i] if per_file_header else {}),
    }
    paths.append(write_fits(os.path.join(folder, f"{prefix}_{i:03d}.fits"), data, header_cards=cards, dtype=np.float32))
  return paths


def write_galaxy_set(
    folder: str, count: int = 6, size: int = 64, *, seed: int = 0, bands: int = 1, nan_every: int = 3
) -> list[str]:
  """Sersic galaxies as FITS (2-D, or a 3-plane cube per galaxy for bands=3)."""
  gals, params = sersic_galaxies(count, size, seed=seed, bands=bands)
  per_file = [
      {
          "SERSIC_N": round(p["n"], 4),
          "R_EFF": round(p["r_eff"], 4),
          "AXRATIO": round(p["q"], 4),
          "POSANG": round(float(np.degrees(p["theta"])), 3),
      }
      for p in params
  ]
  header = {
      "BUNIT": "nanomaggy",
      "OBJECT": "synthetic galaxy",
      "TELESCOP": "synthetic",
      "FILTER": "gri" if bands == 3 else "r",
  }
  return write_fits_set(
      folder, list(gals), prefix="galaxy", header=header, nan_every=nan_every, seed=seed, per_file_header=per_file
  )


def write_radiation_set(
    folder: str,
    count: int = 6,
    size: int = 64,
    *,
    beta: float = 3.0,
    sigma: float = 1.0,
    seed: int = 0,
    nan_every: int = 3,
    cube_planes: int = 4,
) -> dict:
  """Log-normal radiation fields as 2-D FITS, plus one ``cube.fits`` of ``cube_planes`` more.

  Returns {'fields': [paths], 'cube': path or None}. Read the folder with
  cube_slices='all' to get every field (2-D files are single samples either way).
  """
  fields = lognormal_fields(count + cube_planes, size, beta=beta, sigma=sigma, seed=seed)
  header = {"BUNIT": "G0", "BTYPE": "radiation field", "OBJECT": "synthetic cloud", "TELESCOP": "synthetic"}
  paths = write_fits_set(
      folder,
      list(fields[:count]),
      prefix="field",
      header={**header, "BETA": float(beta)},
      nan_every=nan_every,
      seed=seed,
  )
  cube = None
  if cube_planes > 0:
    cube = write_fits(
        os.path.join(folder, "cube.fits"),
        np.moveaxis(fields[count:, ..., 0], 0, -1),
        header_cards={**header, "OBJECT": "synthetic cloud cube", "BETA": float(beta)},
    )
  return {"fields": paths, "cube": cube}
