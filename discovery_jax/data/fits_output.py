"""Generated samples out: FITS and .npy in physical units, PNG previews.

FITS layout: a (H, W, 1) sample is written as a 2-D image, a (H, W, C) sample as
a cube with the C planes along NAXIS3 (numpy axis 0), which ``scientific``
reads back as one C-channel sample. Arrays are written as stored (row 0 is the
first FITS row, i.e. the bottom row in ds9); previews show row 0 at the top,
exactly like the model-space PNGs of ``images.py``.

Header: the descriptive cards of the source (BUNIT, OBJECT, ... as read into
``Field.info['header']``), then provenance in standard 8-character keywords:

    DJXTRANS  transform kind          DJXMODEL  model fingerprint
    DJXTJSON  the full transform as JSON (FITS long-string CONTINUE convention)
    DJXCONF   config name             DJXSEED   seed    DJXINDEX  sample index

plus HISTORY lines with a readable summary. Long strings use CONTINUE cards
(part of the FITS 4.0 standard), so headers stay valid FITS; ``read_provenance``
restores the transform. Every file is written to a temporary name in the same
folder and renamed into place, so a file either exists complete or not at all.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Sequence

import numpy as np
from PIL import Image

from discovery_jax import fileio
from discovery_jax.data.transforms import Transform

PROVENANCE_CARDS = {
    "DJXTRANS": "intensity transform kind (physical -> [-1, 1])",
    "DJXTJSON": "intensity transform parameters (JSON)",
    "DJXMODEL": "model fingerprint",
    "DJXCONF": "config name",
    "DJXSEED": "random seed",
    "DJXINDEX": "sample index",
}
SINGLE_CHANNEL_CMAP = "inferno"


def _atomic(path: str, suffix: str, write) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fileio.atomic_write_with(path, write, suffix)
  return path


def _fits_layout(data: np.ndarray) -> np.ndarray:
  data = np.asarray(data)
  if data.ndim == 2:
    return data
  if data.ndim != 3:
    raise ValueError(f"a sample must be (H, W) or (H, W, C), got shape {data.shape}")
  return data[..., 0] if data.shape[-1] == 1 else np.moveaxis(data, -1, 0)


def _card_value(value: Any) -> Any:
  """A JSON-ready value -> one FITS can hold (printable ASCII strings, numbers, bools, None)."""
  if value is None or isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
    return value
  if not isinstance(value, str):
    value = json.dumps(value, default=str)
  return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in value)


def fits_header(
    *,
    header_cards: dict | None = None,
    transform: Transform | None = None,
    model_fingerprint: str | None = None,
    config_name: str | None = None,
    seed: int | None = None,
    sample_index: int | None = None,
    history: Sequence[str] = (),
) -> Any:
  """An astropy Header with the kept source cards and the provenance cards."""
  from astropy.io import fits

  header = fits.Header()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # astropy warns when it turns a long key into HIERARCH; that is intended.
    for key, value in (header_cards or {}).items():
      key = str(key).upper()
      if key in PROVENANCE_CARDS or key in ("COMMENT", "HISTORY") or key.startswith("NAXIS"):
        continue
      if len(key) > 8 or not all(ch.isalnum() or ch in "-_" for ch in key):
        key = f"HIERARCH {key}"
      header[key] = _card_value(value)
    if transform is not None:
      header["DJXTRANS"] = (transform.kind, PROVENANCE_CARDS["DJXTRANS"])
      header["DJXTJSON"] = (transform.to_json(), PROVENANCE_CARDS["DJXTJSON"])
      header.add_history(f"discovery_jax intensity transform: {transform.describe()}"[: 72 * 4])
    if model_fingerprint is not None:
      header["DJXMODEL"] = (str(model_fingerprint), PROVENANCE_CARDS["DJXMODEL"])
    if config_name is not None:
      header["DJXCONF"] = (str(config_name), PROVENANCE_CARDS["DJXCONF"])
    if seed is not None:
      header["DJXSEED"] = (int(seed), PROVENANCE_CARDS["DJXSEED"])
    if sample_index is not None:
      header["DJXINDEX"] = (int(sample_index), PROVENANCE_CARDS["DJXINDEX"])
    for line in history:
      header.add_history(str(line))
  return header


def write_fits(
    path: str,
    data: np.ndarray,
    *,
    header_cards: dict | None = None,
    transform: Transform | None = None,
    model_fingerprint: str | None = None,
    config_name: str | None = None,
    seed: int | None = None,
    sample_index: int | None = None,
    history: Sequence[str] = (),
    nan_mask: np.ndarray | None = None,
    dtype: Any = np.float32,
) -> str:
  """Writes a physical (H, W[, C]) sample as FITS, atomically, with provenance cards.

  ``nan_mask`` (same shape, True = masked) puts NaN back where the source had
  masked pixels. ``dtype`` float32 (default, what the model computes in) or float64.
  """
  from astropy.io import fits

  data = np.array(data, dtype=dtype)
  if nan_mask is not None:
    nan_mask = np.broadcast_to(np.asarray(nan_mask, bool), data.shape)
    data[nan_mask] = np.nan
  header = fits_header(
      header_cards=header_cards,
      transform=transform,
      model_fingerprint=model_fingerprint,
      config_name=config_name,
      seed=seed,
      sample_index=sample_index,
      history=history,
  )
  hdu = fits.PrimaryHDU(_fits_layout(data), header=header)

  def write(tmp):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      hdu.writeto(tmp, output_verify="exception", checksum=True)

  return _atomic(path, ".fits", write)


def read_provenance(path: str) -> dict:
  """The provenance cards of a written sample; 'transform' is a Transform or None."""
  from astropy.io import fits

  header = fits.getheader(path)
  out = {"transform": Transform.from_json(header["DJXTJSON"]) if "DJXTJSON" in header else None}
  for key, name in (
      ("DJXMODEL", "model_fingerprint"),
      ("DJXCONF", "config_name"),
      ("DJXSEED", "seed"),
      ("DJXINDEX", "sample_index"),
  ):
    out[name] = header.get(key)
  return out


def write_npy(path: str, data: np.ndarray, *, metadata: dict | None = None) -> str:
  """Writes an array as .npy atomically; ``metadata`` goes to a JSON sidecar (path + '.json')."""
  arr = np.asarray(data)
  _atomic(path, ".npy", lambda tmp: np.save(tmp, arr, allow_pickle=False))
  if metadata is not None:
    text = json.dumps(metadata, indent=1, default=str)

    def write(tmp):
      with open(tmp, "w") as f:
        f.write(text)

    _atomic(path + ".json", ".json", write)
  return path


# ---------------------------------------------------------------------------
# Previews.


def display_stretch(
    data: np.ndarray,
    *,
    stretch: str = "asinh",
    percentiles: tuple[float, float] = (0.5, 99.5),
    limits: tuple[float, float] | None = None,
    asinh_a: float = 10.0,
) -> np.ndarray:
  """Values -> [0, 1] for display only: percentile (or given) limits, then a stretch.

  'asinh' (default): asinh(a t) / asinh(a), bright cores and faint outskirts both
  visible; 'log': log10(1 + 1000 t) / 3; 'linear': t.
  """
  data = np.asarray(data, np.float64)
  if limits is None:
    finite = data[np.isfinite(data)]
    limits = tuple(np.percentile(finite, percentiles)) if finite.size else (0.0, 1.0)
  lo, hi = float(limits[0]), float(limits[1])
  t = np.clip((np.nan_to_num(data, nan=lo) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
  if stretch == "asinh":
    return np.arcsinh(asinh_a * t) / np.arcsinh(asinh_a)
  if stretch == "log":
    return np.log10(1.0 + 1000.0 * t) / 3.0
  if stretch == "linear":
    return t
  raise ValueError(f"display stretch must be 'asinh', 'log' or 'linear', got {stretch!r}")


def preview_rgb(
    data: np.ndarray,
    *,
    cmap: str = SINGLE_CHANNEL_CMAP,
    stretch: str = "asinh",
    percentiles: tuple[float, float] = (0.5, 99.5),
    limits: tuple[float, float] | None = None,
) -> np.ndarray:
  """A physical (H, W[, C]) sample -> uint8 (H, W, 3) preview.

  One channel: display stretch then the colormap (perceptually uniform
  'inferno' by default). Three channels: shown as RGB with ONE stretch for all
  bands (keeps colours). NaN pixels are shown at the low end.
  """
  data = np.asarray(data, np.float64)
  if data.ndim == 3 and data.shape[-1] == 1:
    data = data[..., 0]
  t = display_stretch(data, stretch=stretch, percentiles=percentiles, limits=limits)
  if t.ndim == 2:
    import matplotlib

    rgb = matplotlib.colormaps[cmap](t)[..., :3]
  elif t.ndim == 3 and t.shape[-1] == 3:
    rgb = t
  else:
    raise ValueError(f"previews need (H, W), (H, W, 1) or (H, W, 3) data, got shape {data.shape}")
  return np.round(rgb * 255.0).astype(np.uint8)


def save_png_uint8(path: str, rgb: np.ndarray) -> str:
  """Writes a uint8 (H, W, 3) array as PNG, atomically."""
  return _atomic(path, ".png", lambda tmp: Image.fromarray(np.asarray(rgb, np.uint8)).save(tmp, format="PNG"))


def save_preview(path: str, data: np.ndarray, **kwargs) -> str:
  """``preview_rgb`` written as PNG."""
  return save_png_uint8(path, preview_rgb(data, **kwargs))


def preview_grid(
    samples: Sequence[np.ndarray] | np.ndarray,
    *,
    ncol: int | None = None,
    pad: int = 2,
    shared_limits: bool = True,
    percentiles: tuple[float, float] = (0.5, 99.5),
    **kwargs,
) -> np.ndarray:
  """Several same-size samples -> one uint8 grid image (white padding).

  ``shared_limits`` (default) uses one set of display limits for every tile, so
  tiles (e.g. generated next to real) are comparable in brightness.
  """
  samples = [np.asarray(s, np.float64) for s in samples]
  if not samples:
    raise ValueError("preview_grid needs at least one sample")
  limits = kwargs.pop("limits", None)
  if shared_limits and limits is None:
    pooled = np.concatenate([s[np.isfinite(s)] for s in samples])
    limits = tuple(np.percentile(pooled, percentiles)) if pooled.size else (0.0, 1.0)
  tiles = [preview_rgb(s, percentiles=percentiles, limits=limits, **kwargs) for s in samples]
  h, w = tiles[0].shape[:2]
  if any(t.shape[:2] != (h, w) for t in tiles):
    raise ValueError(f"preview_grid needs samples of one size, got {sorted({t.shape[:2] for t in tiles})}")
  ncol = ncol or int(math.ceil(math.sqrt(len(tiles))))
  nrow = int(math.ceil(len(tiles) / ncol))
  grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
  for i, tile in enumerate(tiles):
    r, c = divmod(i, ncol)
    grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = tile
  return grid


def save_preview_grid(path: str, samples: Sequence[np.ndarray] | np.ndarray, **kwargs) -> str:
  return save_png_uint8(path, preview_grid(samples, **kwargs))


def write_sample(
    out_dir: str,
    index: int,
    data: np.ndarray,
    *,
    formats: Sequence[str] = ("fits", "png"),
    prefix: str = "sample",
    **fits_kwargs,
) -> dict:
  """One generated physical sample -> ``{prefix}_{index:06d}.{fits,npy,png}``; returns the paths.

  ``fits_kwargs`` go to ``write_fits`` (header_cards, transform, model_fingerprint,
  config_name, seed); the sample index is recorded as DJXINDEX.
  """
  unknown = set(formats) - {"fits", "npy", "png"}
  if unknown:
    raise ValueError(f"output formats must be among fits, npy, png; got {sorted(unknown)}")
  base = os.path.join(out_dir, f"{prefix}_{int(index):06d}")
  paths = {}
  if "fits" in formats:
    paths["fits"] = write_fits(base + ".fits", data, sample_index=index, **fits_kwargs)
  if "npy" in formats:
    paths["npy"] = write_npy(base + ".npy", np.asarray(data, np.float32))
  if "png" in formats:
    paths["png"] = save_preview(base + ".png", data)
  return paths
