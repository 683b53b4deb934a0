"""Invertible intensity transforms: physical quantities <-> the model's [-1, 1].

A pixel-space diffusion model only knows values in [-1, 1]; a galaxy image in
counts or a radiation field in units of the Habing field spans decades. A
``Transform`` is FITTED on the few-shot set, applied forward to make model
inputs and in reverse to turn generated samples back into physical units, and
is stored as a JSON dict beside the latent bank (``to_dict`` / ``from_dict``)
so that the reverse uses exactly the numbers the forward used.

Forward, per pixel (each step is elementwise, so any shape with channels last
works, e.g. (H, W, C) or (N, H, W, C))::

    1. clip     x -> clip(x, clip_lo, clip_hi)        only with clip_percentiles
    2. stretch  'linear': s = x
                'log':    s = log10(max(x + offset, floor))
                'asinh':  s = asinh(x / softening)
    3. min-max  y = 2 (s - s_min) / (s_max - s_min) - 1

s_min/s_max are the extremes of the stretched (clipped) few-shot set, so the
fitted set maps exactly onto [-1, 1]; held-out or generated data may fall a
little outside, which is not clipped (the inverse extrapolates monotonically).

Invertibility: the stretch and the min-max are exact bijections (round trip to
float64 rounding). Percentile clipping is the ONE non-invertible step: values
beyond [clip_lo, clip_hi] come back as clip_lo/clip_hi. The clipped fraction of
the fitted set is recorded (``fit_info['clipped_fraction']``) and
``clipped_fraction(x)`` reports it for any array. The 'log' floor behaves the
same way for values with x + offset below the smallest fitted one (never the
case for the fitted set itself; counted by ``clipped_fraction`` too).

Channels: by default ONE set of parameters for all channels (``per_channel=False``):
the ratios between bands (a galaxy's colour) survive, and a single-channel field
is unaffected. ``per_channel=True`` fits every channel on its own.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import numpy as np

FORMAT = "discovery_jax.intensity_transform"
VERSION = 1
KINDS = ("linear", "log", "asinh")
# The automatic 'log' offset puts the smallest value this fraction of the data
# range above zero (3 decades below the range when the data touch zero).
LOG_FLOOR_FRACTION = 1e-3
# Normal-consistent scale of the median absolute deviation.
MAD_TO_SIGMA = 1.482602218505602


class TransformError(ValueError):
  """A transform that cannot be fitted, applied or restored; says why."""


def _channel_params(value: Any, name: str) -> np.ndarray:
  arr = np.atleast_1d(np.asarray(value, np.float64))
  if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
    raise TransformError(f"transform parameter {name} must be a finite number or list, got {value!r}")
  return arr


@dataclasses.dataclass
class Transform:
  """A fitted transform. Parameters are float64 arrays of length 1 (global) or C."""

  kind: str
  s_min: np.ndarray
  s_max: np.ndarray
  per_channel: bool = False
  clip_lo: np.ndarray | None = None
  clip_hi: np.ndarray | None = None
  clip_percentiles: tuple[float, float] | None = None
  offset: np.ndarray | None = None  # 'log' only.
  floor: np.ndarray | None = None  # 'log' only: smallest fitted x + offset.
  softening: np.ndarray | None = None  # 'asinh' only.
  fit_info: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise TransformError(f"transform kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
    self.s_min = _channel_params(self.s_min, "s_min")
    self.s_max = _channel_params(self.s_max, "s_max")
    if np.any(self.s_max <= self.s_min):
      raise TransformError(
          f"transform range is empty (s_min={self.s_min.tolist()}, s_max={self.s_max.tolist()}): "
          "the data are constant"
      )
    for name in ("clip_lo", "clip_hi", "offset", "floor", "softening"):
      value = getattr(self, name)
      if value is not None:
        setattr(self, name, _channel_params(value, name))
    if (self.clip_lo is None) != (self.clip_hi is None):
      raise TransformError("clip_lo and clip_hi must be given together")
    if self.kind == "log" and (self.offset is None or self.floor is None or np.any(self.floor <= 0)):
      raise TransformError("a 'log' transform needs an offset and a positive floor")
    if self.kind == "asinh" and (self.softening is None or np.any(self.softening <= 0)):
      raise TransformError("an 'asinh' transform needs a positive softening")
    if self.clip_percentiles is not None:
      self.clip_percentiles = (float(self.clip_percentiles[0]), float(self.clip_percentiles[1]))

  @property
  def num_channels(self) -> int:
    """Channels the parameters are for (1 = any number, shared)."""
    return int(self.s_min.size)

  def _check(self, x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 0:
      raise TransformError(f"{what}: expected an array with channels last, got a scalar")
    if self.num_channels > 1 and x.shape[-1] != self.num_channels:
      raise TransformError(
          f"{what}: the transform was fitted per channel on {self.num_channels} channels, "
          f"the array has {x.shape[-1]} (shape {x.shape})"
      )
    return x

  def _stretch(self, x: np.ndarray) -> np.ndarray:
    return _stretch(self.kind, x, self.offset, self.floor, self.softening)

  def _unstretch(self, s: np.ndarray) -> np.ndarray:
    if self.kind == "log":
      return np.power(10.0, s) - self.offset
    if self.kind == "asinh":
      return np.sinh(s) * self.softening
    return s

  def forward(self, x: np.ndarray) -> np.ndarray:
    """Physical values (..., C) -> model space (float64; [-1, 1] on the fitted set)."""
    x = self._check(x, "forward")
    if self.clip_lo is not None:
      x = np.clip(x, self.clip_lo, self.clip_hi)
    s = self._stretch(x)
    return 2.0 * (s - self.s_min) / (self.s_max - self.s_min) - 1.0

  def inverse(self, y: np.ndarray, *, clip: bool = False) -> np.ndarray:
    """Model space (..., C) -> physical values (float64). ``clip`` first limits y to [-1, 1]."""
    y = self._check(y, "inverse")
    if clip:
      y = np.clip(y, -1.0, 1.0)
    s = (y + 1.0) * 0.5 * (self.s_max - self.s_min) + self.s_min
    return self._unstretch(s)

  def clipped_fraction(self, x: np.ndarray) -> float:
    """Fraction of the values of ``x`` the forward transform cannot give back exactly."""
    x = self._check(x, "clipped_fraction")
    if x.size == 0:
      return 0.0
    lost = np.zeros(x.shape, bool)
    if self.clip_lo is not None:
      lost |= (x < self.clip_lo) | (x > self.clip_hi)
      x = np.clip(x, self.clip_lo, self.clip_hi)
    if self.kind == "log":
      lost |= (x + self.offset) < self.floor
    return float(lost.mean())

  # ------------------------------------------------------------------ storage

  def to_dict(self) -> dict:
    """JSON-ready dict (floats kept exactly: JSON writes Python floats by repr)."""
    as_list = lambda a: None if a is None else [float(v) for v in a]
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": self.kind,
        "per_channel": bool(self.per_channel),
        "s_min": as_list(self.s_min),
        "s_max": as_list(self.s_max),
        "clip_percentiles": None if self.clip_percentiles is None else list(self.clip_percentiles),
        "clip_lo": as_list(self.clip_lo),
        "clip_hi": as_list(self.clip_hi),
        "offset": as_list(self.offset),
        "floor": as_list(self.floor),
        "softening": as_list(self.softening),
        "fit_info": json.loads(json.dumps(self.fit_info)),
    }

  @classmethod
  def from_dict(cls, d: dict) -> "Transform":
    if not isinstance(d, dict) or d.get("format") != FORMAT:
      found = d.get("format") if isinstance(d, dict) else type(d).__name__
      raise TransformError(f"not a stored intensity transform (format {found!r}, expected {FORMAT!r})")
    if int(d.get("version", -1)) > VERSION:
      raise TransformError(f"intensity transform version {d['version']} is newer than this code ({VERSION})")
    cp = d.get("clip_percentiles")
    return cls(
        kind=d["kind"],
        s_min=d["s_min"],
        s_max=d["s_max"],
        per_channel=bool(d.get("per_channel", False)),
        clip_lo=d.get("clip_lo"),
        clip_hi=d.get("clip_hi"),
        clip_percentiles=None if cp is None else tuple(cp),
        offset=d.get("offset"),
        floor=d.get("floor"),
        softening=d.get("softening"),
        fit_info=dict(d.get("fit_info") or {}),
    )

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), separators=(",", ":"))

  @classmethod
  def from_json(cls, text: str) -> "Transform":
    try:
      return cls.from_dict(json.loads(text))
    except json.JSONDecodeError as e:
      raise TransformError(f"stored intensity transform is not valid JSON ({e})") from None

  def describe(self) -> str:
    """One line for logs and FITS HISTORY cards."""
    parts = [self.kind, "per-channel" if self.per_channel else "global"]
    if self.clip_percentiles is not None:
      parts.append(f"clip to percentiles {self.clip_percentiles[0]:g}-{self.clip_percentiles[1]:g}")
    fmt = lambda a: ",".join(f"{v:.6g}" for v in a)
    if self.kind == "log":
      parts.append(f"offset={fmt(self.offset)}")
    if self.kind == "asinh":
      parts.append(f"softening={fmt(self.softening)}")
    parts.append(f"stretched range [{fmt(self.s_min)}]..[{fmt(self.s_max)}] -> [-1, 1]")
    return "; ".join(parts)


# ---------------------------------------------------------------------------
# Fitting.


def _stretch(kind: str, x: np.ndarray, offset, floor, softening) -> np.ndarray:
  if kind == "log":
    return np.log10(np.maximum(x + offset, floor))
  if kind == "asinh":
    return np.arcsinh(x / softening)
  return x


def _pooled(arrays: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
  """The few-shot set as one (pixels, C) float64 matrix; all arrays need the same C."""
  if isinstance(arrays, np.ndarray):
    arrays = [arrays]
  arrays = [np.asarray(a, np.float64) for a in arrays]
  if not arrays:
    raise TransformError("cannot fit a transform on an empty set")
  arrays = [a[..., None] if a.ndim == 2 else a for a in arrays]
  channels = {a.shape[-1] for a in arrays}
  if any(a.ndim not in (3, 4) for a in arrays) or len(channels) != 1:
    raise TransformError(
        "transforms are fitted on (H, W, C) or (N, H, W, C) arrays with one channel count; got "
        f"shapes {sorted({a.shape for a in arrays})}"
    )
  pooled = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays], axis=0)
  if not np.isfinite(pooled).all():
    raise TransformError("cannot fit a transform on data with NaN/Inf (fill them when reading)")
  return pooled


def fit_transform(
    kind: str,
    arrays: Sequence[np.ndarray] | np.ndarray,
    *,
    per_channel: bool = False,
    clip_percentiles: Sequence[float] | None = None,
    offset: float | Sequence[float] | None = None,
    softening: float | Sequence[float] | None = None,
) -> Transform:
  """Fits ``kind`` ('linear', 'log', 'asinh') on the few-shot set.

  ``arrays``: (H, W, C) or (N, H, W, C) arrays (or a list of them), physical, finite.
  ``clip_percentiles=(p_lo, p_hi)``: clip first (e.g. (0.5, 99.5) against hot
  pixels/cosmic rays); the only lossy step, its fraction goes to fit_info.
  ``offset`` ('log'): added before log10. Default: 0 when all values are > 0,
  else ``-min + 1e-3 * (max - min)``.
  ``softening`` ('asinh'): values << softening stay ~linear, >> become ~log.
  Default: the robust noise level 1.4826 * MAD (median absolute deviation);
  if that is 0, 1e-3 of the value range.
  """
  if kind not in KINDS:
    raise TransformError(f"transform kind must be one of {', '.join(KINDS)}, got {kind!r}")
  data = _pooled(arrays)
  cols = [data[:, c] for c in range(data.shape[1])] if per_channel else [data.ravel()]
  n_ch = len(cols)

  def per(value, name):
    if value is None:
      return None
    v = _channel_params(value, name)
    if v.size not in (1, n_ch):
      raise TransformError(f"{name} has {v.size} values for {n_ch} fitted channel(s)")
    return np.broadcast_to(v, (n_ch,)).copy()

  clip_lo = clip_hi = None
  if clip_percentiles is not None:
    p_lo, p_hi = (float(p) for p in clip_percentiles)
    if not 0.0 <= p_lo < p_hi <= 100.0:
      raise TransformError(f"clip_percentiles must satisfy 0 <= lo < hi <= 100, got {tuple(clip_percentiles)}")
    clip_lo = np.array([np.percentile(c, p_lo) for c in cols])
    clip_hi = np.array([np.percentile(c, p_hi) for c in cols])
    clipped = sum(int(((c < lo) | (c > hi)).sum()) for c, lo, hi in zip(cols, clip_lo, clip_hi))
    cols = [np.clip(c, lo, hi) for c, lo, hi in zip(cols, clip_lo, clip_hi)]
    clip_percentiles = (p_lo, p_hi)
  else:
    clipped = 0

  off = flo = soft = None
  if kind == "log":
    off = per(offset, "offset")
    if off is None:
      off = np.array(
          [
              0.0 if c.min() > 0 else -c.min() + LOG_FLOOR_FRACTION * max(np.ptp(c), np.abs(c).max(), 1e-300)
              for c in cols
          ]
      )
    shifted = [c + o for c, o in zip(cols, off)]
    if any(s.min() <= 0 for s in shifted):
      raise TransformError(
          f"'log' transform: offset {off.tolist()} leaves values <= 0 (minimum "
          f"{min(c.min() for c in cols):.6g}); use a larger offset or leave it automatic"
      )
    flo = np.array([s.min() for s in shifted])
  elif kind == "asinh":
    soft = per(softening, "softening")
    if soft is None:
      soft = np.array([MAD_TO_SIGMA * np.median(np.abs(c - np.median(c))) for c in cols])
      soft = np.where(soft > 0, soft, [LOG_FLOOR_FRACTION * max(np.ptp(c), np.abs(c).max(), 1e-300) for c in cols])
    if np.any(soft <= 0):
      raise TransformError(f"'asinh' softening must be > 0, got {soft.tolist()}")

  pick = lambda a, i: None if a is None else a[i]
  stretched = [_stretch(kind, c, pick(off, i), pick(flo, i), pick(soft, i)) for i, c in enumerate(cols)]
  s_min = np.array([s.min() for s in stretched])
  s_max = np.array([s.max() for s in stretched])
  if np.any(s_max <= s_min):
    raise TransformError(
        f"cannot fit a '{kind}' transform: the (clipped) data are constant "
        f"(value {cols[int(np.argmin(s_max - s_min))][0]:.6g})"
    )
  fit_info = {
      "n_values": int(data.size),
      "channels": int(data.shape[1]),
      "clipped_fraction": clipped / data.size if clip_percentiles is not None else 0.0,
      "data_min": [float(v) for v in data.min(axis=0)],
      "data_max": [float(v) for v in data.max(axis=0)],
  }
  return Transform(
      kind=kind,
      s_min=s_min,
      s_max=s_max,
      per_channel=per_channel,
      clip_lo=clip_lo,
      clip_hi=clip_hi,
      clip_percentiles=clip_percentiles,
      offset=off,
      floor=flo,
      softening=soft,
      fit_info=fit_info,
  )
