"""Scientific inputs: FITS images/cubes and NumPy arrays of physical quantities.

Unlike ordinary images (``images.py``), these files hold physical values (counts,
surface brightness, a radiation field in Habing units, ...) with any range, sign
and NaN/Inf for masked pixels. They are read as float64 ``Field``s of shape
(H, W, C) in physical units; an intensity transform (``transforms.py``), fitted
on the few-shot set, then maps them to the model's [-1, 1].

Pipeline (``load_field_set`` + ``to_model_input``)::

    file -> select HDU / npz key -> select cube planes -> (H, W, C) float64
         -> fill NaN/Inf (counted, masked) -> resize in physical units
         -> transform.forward -> channel mapping -> float32 (size, size, channels)

Decisions:
- Cubes. FITS stores planes along NAXIS3, i.e. numpy axis 0; .npy/.npz arrays
  are taken channel-last (H, W, C) like the rest of this project. ``cube_axis``
  overrides either. ``cube_slices`` ('all' or indices) turns a cube into several
  2-D samples; ``cube_channels`` (<= 3 indices) into one multi-channel sample.
  With neither, a cube of 1 or 3 planes is one sample with 1 or 3 channels and
  any other cube is an error asking for a choice. Axes of length 1 are dropped
  first from arrays with more than 3 dimensions (e.g. a degenerate Stokes axis).
- HDU. Default: the first HDU holding image data; or an index or EXTNAME.
- NaN/Inf. Filled per channel with the median of the finite pixels ('median',
  default), 0 ('zero'), the finite minimum ('min') or a given number; the count
  goes to ``info`` and the positions to ``Field.mask``. Filled data never hold
  NaN, and ``to_model_input`` refuses any non-finite value, so none reaches the
  model. An all-NaN plane is an error.
- Resizing happens in PHYSICAL units, before the transform, separably per axis:
  'auto' (default) area-averages an axis that shrinks (every output pixel is the
  exact overlap-weighted mean of the input pixels it covers: the mean of the
  quantity is conserved, no aliasing, no overshoot) and interpolates bilinearly
  an axis that grows (no overshoot, so positive quantities stay positive).
  'area', 'bilinear' force one rule; 'bicubic'/'nearest' use
  scipy.ndimage.zoom (order 3/0, grid_mode=True; bicubic can overshoot).
  ``resize='stretch'`` (default, as for images) or 'center_crop' (the largest
  central square first).
- Channels. A single field (C = 1) becomes the model's 3 channels by replication
  (R = G = B): the paper renders radiation fields as RGB for illustration, and
  replication keeps the quantity recoverable (``from_model_output`` takes the
  channel mean, in model space, before the inverse transform). C = 3 (e.g.
  three bands or ``cube_channels``) maps directly; other counts are errors.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Sequence

import numpy as np

from discovery_jax.data.images import InputError, list_files
from discovery_jax.data.transforms import Transform

FITS_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fz")
NUMPY_EXTENSIONS = (".npy", ".npz")
SCIENTIFIC_EXTENSIONS = FITS_EXTENSIONS + NUMPY_EXTENSIONS
# Descriptive header cards carried from input files to outputs. WCS cards are not
# kept by default: after resizing, and for generated samples, they are wrong.
KEEP_CARDS = (
    "BUNIT",
    "BTYPE",
    "OBJECT",
    "TELESCOP",
    "INSTRUME",
    "FILTER",
    "BAND",
    "ORIGIN",
    "DATE-OBS",
    "EXPTIME",
    "OBSERVER",
)
# Structural cards never copied (astropy writes them from the data).
STRUCTURAL_CARDS = (
    "SIMPLE",
    "BITPIX",
    "EXTEND",
    "XTENSION",
    "PCOUNT",
    "GCOUNT",
    "BSCALE",
    "BZERO",
    "BLANK",
    "CHECKSUM",
    "DATASUM",
    "END",
    "COMMENT",
    "HISTORY",
    "",
    "ZIMAGE",
    "ZBITPIX",
    "ZCMPTYPE",
)
FILLS = ("median", "zero", "min")
RESAMPLE_METHODS = ("auto", "area", "bilinear", "bicubic", "nearest")


class ScientificInputError(InputError):
  """A scientific file that cannot be used as input; the message names it."""


@dataclasses.dataclass(frozen=True)
class ScientificOptions:
  """How scientific files become fields (``config.data`` fields of the same names)."""

  image_size: int | None = None  # model resolution; None keeps the native size.
  channels: int = 3  # model input channels (1 or 3).
  resize: str = "stretch"  # 'stretch' or 'center_crop'.
  resample: str = "auto"  # see RESAMPLE_METHODS and the module docstring.
  hdu: int | str | None = None  # HDU index or EXTNAME; None: first HDU with image data.
  cube_axis: int | None = None  # plane axis of a 3-D array; None: 0 for FITS, -1 for numpy.
  cube_slices: str | tuple[int, ...] | None = None  # 'all' or plane indices -> one sample each.
  cube_channels: tuple[int, ...] | None = None  # <= 3 plane indices -> one multi-channel sample.
  npz_key: str | None = None  # array of a .npz; None: its only array.
  fill: str | float = "median"  # NaN/Inf fill: 'median', 'zero', 'min' or a number.
  keep_cards: str | tuple[str, ...] = KEEP_CARDS  # header cards kept in info, or 'all'.
  same_size: bool = True  # a set must share one native shape (pixel scale).

  def __post_init__(self):
    if self.channels not in (1, 3):
      raise ScientificInputError(f"models with {self.channels} input channels are not supported (1 or 3)")
    if self.image_size is not None and int(self.image_size) < 2:
      raise ScientificInputError(f"data.image_size must be >= 2, got {self.image_size}")
    if self.resize not in ("stretch", "center_crop"):
      raise ScientificInputError(f"data.resize must be 'stretch' or 'center_crop', got {self.resize!r}")
    if self.resample not in RESAMPLE_METHODS:
      raise ScientificInputError(f"data.resample must be one of {', '.join(RESAMPLE_METHODS)}, got {self.resample!r}")
    if isinstance(self.fill, str) and self.fill not in FILLS:
      try:  # a number given as text (command-line flags).
        object.__setattr__(self, "fill", float(self.fill))
      except ValueError:
        raise ScientificInputError(
            f"data.fill must be one of {', '.join(FILLS)} or a number, " f"got {self.fill!r}"
        ) from None
    if not isinstance(self.fill, str) and not np.isfinite(float(self.fill)):
      raise ScientificInputError(f"data.fill must be finite, got {self.fill!r}")
    if self.cube_slices is not None and self.cube_channels is not None:
      raise ScientificInputError("set data.cube_slices or data.cube_channels, not both")
    if self.cube_slices is not None and not isinstance(self.cube_slices, str):
      object.__setattr__(self, "cube_slices", tuple(int(i) for i in np.atleast_1d(self.cube_slices)))
    if isinstance(self.cube_slices, str) and self.cube_slices != "all":
      raise ScientificInputError(f"data.cube_slices must be 'all' or plane indices, got {self.cube_slices!r}")
    if self.cube_channels is not None:
      chans = tuple(int(i) for i in np.atleast_1d(self.cube_channels))
      if not 1 <= len(chans) <= 3:
        raise ScientificInputError(f"data.cube_channels takes 1 to 3 plane indices, got {list(chans)}")
      object.__setattr__(self, "cube_channels", chans)
    if not isinstance(self.keep_cards, str):
      object.__setattr__(self, "keep_cards", tuple(str(k).upper() for k in self.keep_cards))
    elif self.keep_cards != "all":
      raise ScientificInputError(f"data.keep_cards must be 'all' or card names, got {self.keep_cards!r}")


@dataclasses.dataclass
class Field:
  """One sample: float64 (H, W, C) physical values, finite, plus provenance."""

  data: np.ndarray
  info: dict
  mask: np.ndarray | None = None  # bool (H, W, C) at the native size: True where the file had NaN/Inf.

  @property
  def name(self) -> str:
    return self.info["name"]


def list_scientific_files(folder: str) -> list[str]:
  """Sorted FITS/.npy/.npz paths in ``folder`` (recursively)."""
  return list_files(folder, SCIENTIFIC_EXTENSIONS)


def is_scientific_file(path: str) -> bool:
  return path.lower().endswith(SCIENTIFIC_EXTENSIONS)


# ---------------------------------------------------------------------------
# Reading.


def _json_value(value: Any) -> Any:
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if np.isfinite(value) else str(value)
  if value is None or type(value).__name__ == "Undefined":
    return None
  return str(value)


def _kept_cards(header: Any, keep: str | tuple[str, ...]) -> dict:
  cards = {}
  for card in header.cards:
    key = card.keyword.upper()
    if key in STRUCTURAL_CARDS or key.startswith("NAXIS") or key.startswith("CONTINUE"):
      continue
    if keep == "all" or key in keep:
      cards[key] = _json_value(card.value)
  return cards


def _hdu_label(i: int, hdu: Any) -> str:
  """'1:SCI (ImageHDU)' / '0:PRIMARY (PrimaryHDU, empty)' for error messages."""
  empty = hdu.is_image and (hdu.data is None or hdu.data.size == 0)
  return f"{i}:{hdu.name or '-'} ({type(hdu).__name__}{', empty' if empty else ''})"


def _read_fits(path: str, options: ScientificOptions) -> tuple[np.ndarray, dict]:
  from astropy.io import fits  # noqa: WPS433 (heavy import, only when FITS is used)

  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # non-standard cards in real archives; the data is what matters.
      with fits.open(path, memmap=False) as hdul:
        hdul.verify("silentfix+ignore")
        labels = ", ".join(_hdu_label(i, h) for i, h in enumerate(hdul))
        if options.hdu is None:
          index = next((i for i, h in enumerate(hdul) if h.is_image and h.data is not None and h.data.size > 0), None)
          if index is None:
            raise ScientificInputError(f"{path}: no HDU with image data (HDUs: {labels})")
        elif isinstance(options.hdu, str) and not options.hdu.lstrip("-").isdigit():
          names = [h.name.upper() for h in hdul]
          if options.hdu.upper() not in names:
            raise ScientificInputError(f"{path}: no HDU with EXTNAME {options.hdu!r} (HDUs: {labels})")
          index = names.index(options.hdu.upper())
        else:
          index = int(options.hdu)
          if not -len(hdul) <= index < len(hdul):
            raise ScientificInputError(f"{path}: HDU {index} does not exist (file has {len(hdul)}: {labels})")
          index %= len(hdul)
        hdu = hdul[index]
        if not hdu.is_image:
          raise ScientificInputError(
              f"{path}: HDU {index} ({hdu.name}) is a {type(hdu).__name__}, not an image " f"(HDUs: {labels})"
          )
        raw = hdu.data
        if raw is None or raw.size == 0:
          raise ScientificInputError(f"{path}: HDU {index} ({hdu.name}) is empty (NAXIS=0, no data; HDUs: {labels})")
        header = hdu.header
        bad = None
        if np.issubdtype(raw.dtype, np.integer) and "BLANK" in header:
          bad = np.asarray(raw == header["BLANK"])
        if not np.issubdtype(raw.dtype, np.number) or np.issubdtype(raw.dtype, np.complexfloating):
          raise ScientificInputError(f"{path}: HDU {index} holds {raw.dtype} data, not real numbers")
        arr = np.array(raw, dtype=np.float64)
        if bad is not None and bad.any():
          arr[bad] = np.nan
        info = {
            "format": "fits",
            "hdu": int(index),
            "extname": hdu.name or None,
            "header": _kept_cards(header, options.keep_cards),
        }
        if index != 0 and options.keep_cards != "all":
          # Descriptive cards often live in the primary header of a multi-extension file.
          for k, v in _kept_cards(hdul[0].header, options.keep_cards).items():
            info["header"].setdefault(k, v)
  except ScientificInputError:
    raise
  except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as e:
    raise ScientificInputError(f"{path} is not a readable FITS file ({type(e).__name__}: {e})") from None
  return arr, info


def _read_numpy(path: str, options: ScientificOptions) -> tuple[np.ndarray, dict]:
  try:
    if path.lower().endswith(".npz"):
      with np.load(path, allow_pickle=False) as z:
        keys = list(z.files)
        if options.npz_key is not None:
          if options.npz_key not in keys:
            raise ScientificInputError(
                f"{path}: npz has no array {options.npz_key!r} " f"(keys: {', '.join(keys) or 'none'})"
            )
          key = options.npz_key
        elif len(keys) == 1:
          key = keys[0]
        else:
          raise ScientificInputError(
              f"{path}: npz holds {len(keys)} arrays ({', '.join(keys) or 'none'}); " "set data.npz_key to pick one"
          )
        raw = z[key]
      info = {"format": "npz", "npz_key": key, "header": {}}
    else:
      raw = np.load(path, allow_pickle=False)
      info = {"format": "npy", "header": {}}
  except ScientificInputError:
    raise
  except (OSError, ValueError, EOFError) as e:
    raise ScientificInputError(f"{path} is not a readable NumPy file ({type(e).__name__}: {e})") from None
  if not np.issubdtype(raw.dtype, np.number) or np.issubdtype(raw.dtype, np.complexfloating):
    raise ScientificInputError(f"{path}: array has dtype {raw.dtype}, not real numbers")
  if raw.size == 0:
    raise ScientificInputError(f"{path}: array is empty (shape {raw.shape})")
  return np.asarray(raw, np.float64), info


def _select_planes(
    path: str, arr: np.ndarray, options: ScientificOptions, default_axis: int
) -> list[tuple[np.ndarray, list[int] | None]]:
  """An N-D array -> [(H, W, C) array, plane indices or None], one per sample."""
  if arr.ndim > 3:
    arr = arr.reshape([s for s in arr.shape if s != 1] or [1])
  if arr.ndim == 2:  # cube options do not apply to a 2-D image: it is one sample.
    return [(arr[..., None], None)]
  if arr.ndim != 3:
    raise ScientificInputError(
        f"{path}: data has {arr.ndim} dimensions (shape {arr.shape}); expected a 2-D image " "or a 3-D cube"
    )
  axis = default_axis if options.cube_axis is None else int(options.cube_axis)
  if not -3 <= axis < 3:
    raise ScientificInputError(f"{path}: cube_axis {axis} is out of range for a 3-D array")
  planes = np.moveaxis(arr, axis, -1)  # (H, W, P)
  n = planes.shape[-1]

  def check(indices):
    for i in indices:
      if not -n <= i < n:
        raise ScientificInputError(
            f"{path}: plane {i} does not exist (cube has {n} planes along axis {axis}, " f"shape {arr.shape})"
        )
    return [i % n for i in indices]

  if options.cube_slices is not None:
    idx = list(range(n)) if options.cube_slices == "all" else check(options.cube_slices)
    return [(planes[..., i : i + 1], [i]) for i in idx]
  if options.cube_channels is not None:
    idx = check(options.cube_channels)
    return [(planes[..., idx], idx)]
  if n in (1, 3):
    return [(planes, list(range(n)) if n == 3 else None)]
  raise ScientificInputError(
      f"{path}: 3-D cube with {n} planes along axis {axis} (shape {arr.shape}); set "
      "data.cube_slices ('all' or indices: one 2-D sample per plane) or data.cube_channels "
      "(up to 3 indices: one multi-channel sample), or data.cube_axis"
  )


def fill_nonfinite(
    data: np.ndarray, fill: str | float = "median", path: str = "array"
) -> tuple[np.ndarray, np.ndarray | None, dict]:
  """(H, W, C) with NaN/Inf -> (filled copy, mask or None, counts). All-NaN planes are errors."""
  data = np.array(data, np.float64)
  finite = np.isfinite(data)
  info = {"n_nan": int(np.isnan(data).sum()), "n_inf": int(np.isinf(data).sum())}
  info["n_nonfinite"] = info["n_nan"] + info["n_inf"]
  info["nonfinite_fraction"] = info["n_nonfinite"] / data.size
  info["fill"] = fill if isinstance(fill, str) else float(fill)
  if info["n_nonfinite"] == 0:
    info["fill_value"] = None
    return data, None, info
  values = []
  for c in range(data.shape[-1]):
    ok = finite[..., c]
    if not ok.any():
      raise ScientificInputError(f"{path}: all {ok.size} pixels of channel {c} are NaN/Inf; nothing to fill from")
    if fill == "median":
      value = float(np.median(data[..., c][ok]))
    elif fill == "min":
      value = float(data[..., c][ok].min())
    elif fill == "zero":
      value = 0.0
    else:
      value = float(fill)
    data[..., c][~ok] = value
    values.append(value)
  info["fill_value"] = values
  return data, ~finite, info


def read_fields(path: str, options: ScientificOptions = ScientificOptions()) -> list[Field]:
  """One FITS/.npy/.npz file -> its samples at the NATIVE size (several for cube_slices)."""
  if not os.path.isfile(path):
    raise ScientificInputError(f"{path} does not exist")
  lower = path.lower()
  if lower.endswith(FITS_EXTENSIONS):
    arr, info = _read_fits(path, options)
    default_axis = 0
  elif lower.endswith(NUMPY_EXTENSIONS):
    arr, info = _read_numpy(path, options)
    default_axis = -1
  else:
    raise ScientificInputError(f"{path}: not a scientific file (extensions: {', '.join(SCIENTIFIC_EXTENSIONS)})")
  info = {"source": path, "shape_file": list(arr.shape), **info}
  fields = []
  for data, planes in _select_planes(path, arr, options, default_axis):
    sliced = options.cube_slices is not None and planes is not None
    label = f"{path}[plane {planes[0]}]" if sliced else path
    if data.shape[0] < 2 or data.shape[1] < 2:
      raise ScientificInputError(f"{label}: image is {data.shape[1]}x{data.shape[0]} pixels, too small")
    filled, mask, counts = fill_nonfinite(data, options.fill, label)
    name = f"{os.path.basename(path)}[{planes[0]}]" if sliced else os.path.basename(path)
    field_info = {**info, "name": name, "label": label, "planes": planes, "shape": list(filled.shape), **counts}
    fields.append(Field(filled, field_info, mask))
  return fields


def read_field(path: str, options: ScientificOptions = ScientificOptions()) -> Field:
  """Exactly one sample from ``path`` (an error if the options make several)."""
  fields = read_fields(path, options)
  if len(fields) != 1:
    raise ScientificInputError(f"{path}: options give {len(fields)} samples; use read_fields")
  return fields[0]


def check_same_shape(arrays: Sequence[np.ndarray], names: Sequence[str]) -> None:
  """Raises naming the first array whose shape differs from the first one's."""
  if len(arrays) != len(names):
    raise ValueError(f"{len(arrays)} arrays but {len(names)} names")
  if not arrays:
    return
  ref = tuple(np.shape(arrays[0]))
  for arr, name in zip(arrays[1:], names[1:]):
    if tuple(np.shape(arr)) != ref:
      raise ScientificInputError(
          f"{name}: shape {tuple(np.shape(arr))} differs from {ref} of {names[0]} (all files of a set must have "
          "the same size and channel count; set data.same_size=False to resize differing sizes)"
      )


def load_field_set(paths: Sequence[str], options: ScientificOptions) -> list[Field]:
  """Reads a set, checks that shapes agree, resizes to ``options.image_size``."""
  fields = [f for p in paths for f in read_fields(p, options)]
  if not fields:
    raise ScientificInputError("no input files given")
  labels = [f.info["label"] for f in fields]
  if options.same_size:
    check_same_shape([f.data for f in fields], labels)
  else:
    check_same_shape([f.data[:1, :1] for f in fields], labels)  # the channel count must still agree.
  if options.image_size is not None:
    for f in fields:
      f.data = resize_field(f.data, int(options.image_size), resample=options.resample, resize=options.resize)
      f.info["shape"] = list(f.data.shape)
      f.info["resized"] = {"size": int(options.image_size), "resample": options.resample, "resize": options.resize}
  return fields


# ---------------------------------------------------------------------------
# Resizing.


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights: output pixel i is the overlap-weighted mean of input pixels."""
  edges = np.arange(n_out + 1) * (n_in / n_out)
  lo, hi = edges[:-1, None], edges[1:, None]
  j = np.arange(n_in)[None, :]
  overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
  return overlap / overlap.sum(axis=1, keepdims=True)


def _linear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) bilinear weights, pixel centres aligned (PIL/grid_mode), edges clamped."""
  pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
  left = np.minimum(np.floor(pos).astype(int), n_in - 1)
  right = np.minimum(left + 1, n_in - 1)
  frac = pos - left
  w = np.zeros((n_out, n_in))
  np.add.at(w, (np.arange(n_out), left), 1 - frac)
  np.add.at(w, (np.arange(n_out), right), frac)
  return w


def _axis_matrix(n_in: int, n_out: int, method: str) -> np.ndarray | None:
  if n_in == n_out:
    return None
  if method == "area" or (method == "auto" and n_out < n_in):
    return _area_matrix(n_in, n_out)
  return _linear_matrix(n_in, n_out)


def center_crop(data: np.ndarray) -> np.ndarray:
  """The largest central square of an (H, W, ...) array."""
  h, w = data.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  return data[top : top + side, left : left + side]


def resize_field(
    data: np.ndarray, size: int | tuple[int, int], *, resample: str = "auto", resize: str = "stretch"
) -> np.ndarray:
  """(H, W, C) physical values -> (size, size, C) float64; see the module docstring."""
  data = np.asarray(data, np.float64)
  squeeze = data.ndim == 2
  if squeeze:
    data = data[..., None]
  if resample not in RESAMPLE_METHODS:
    raise ValueError(f"resample must be one of {', '.join(RESAMPLE_METHODS)}, got {resample!r}")
  if resize == "center_crop":
    data = center_crop(data)
  elif resize != "stretch":
    raise ValueError(f"resize must be 'stretch' or 'center_crop', got {resize!r}")
  out_h, out_w = (size, size) if np.isscalar(size) else size
  h, w = data.shape[:2]
  if resample in ("bicubic", "nearest"):
    from scipy import ndimage

    if (h, w) != (out_h, out_w):
      data = ndimage.zoom(
          data, (out_h / h, out_w / w, 1), order=3 if resample == "bicubic" else 0, mode="nearest", grid_mode=True
      )
  else:
    wy, wx = _axis_matrix(h, out_h, resample), _axis_matrix(w, out_w, resample)
    c = data.shape[-1]
    if wy is not None:  # (out_h, H) @ (H, W*C): a BLAS matmul, fast for large inputs too.
      data = (wy @ data.reshape(h, -1)).reshape(out_h, w, c)
    if wx is not None:
      data = np.moveaxis((wx @ np.moveaxis(data, 1, 0).reshape(w, -1)).reshape(out_w, out_h, c), 0, 1)
  return data[..., 0] if squeeze else np.ascontiguousarray(data)


# ---------------------------------------------------------------------------
# Model space.


def to_model_channels(x: np.ndarray, channels: int) -> np.ndarray:
  """(..., C) -> (..., channels): 1 -> 3 by replication (R = G = B); equal counts unchanged."""
  c = x.shape[-1]
  if c == channels:
    return x
  if c == 1 and channels == 3:
    return np.repeat(x, 3, axis=-1)
  raise ScientificInputError(
      f"data with {c} channels cannot feed a {channels}-channel model "
      "(1 -> 3 is replicated; use data.cube_channels to pick 1 or 3 planes)"
  )


def from_model_channels(x: np.ndarray, channels: int) -> np.ndarray:
  """(..., Cm) model-space samples -> (..., channels): 3 -> 1 by the channel mean."""
  cm = x.shape[-1]
  if cm == channels:
    return x
  if channels == 1:
    return x.mean(axis=-1, keepdims=True)
  raise ValueError(f"cannot map {cm} model channels to {channels} physical channels")


def to_model_input(data: np.ndarray, transform: Transform, channels: int = 3, *, name: str = "array") -> np.ndarray:
  """Physical (H, W, C) (or (N, H, W, C)) -> float32 model input (..., channels)."""
  data = np.asarray(data, np.float64)
  if not np.isfinite(data).all():
    raise ScientificInputError(f"{name}: {int((~np.isfinite(data)).sum())} NaN/Inf values (fill them when reading)")
  y = to_model_channels(transform.forward(data), channels)
  if not np.isfinite(y).all():
    raise ScientificInputError(f"{name}: the intensity transform produced NaN/Inf ({transform.describe()})")
  return y.astype(np.float32)


def from_model_output(x: np.ndarray, transform: Transform, channels: int = 1, *, clip: bool = False) -> np.ndarray:
  """Model-space samples (..., Cm) -> physical float64 (..., channels).

  ``channels`` is the physical channel count (1 for a replicated field: the mean
  of the model's channels is taken before the inverse transform). ``clip``
  limits model values to [-1, 1] first (the fitted range).
  """
  y = from_model_channels(np.asarray(x, np.float64), channels)
  return transform.inverse(y, clip=clip)
