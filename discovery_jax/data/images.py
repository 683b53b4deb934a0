"""Ordinary image files in, model-space arrays out, and PNG grids back.

Any PNG/JPEG/TIFF/BMP (RGB, grayscale, palette, with alpha, 8 or 16 bit) is read
to float in [0, 1], composited over a background if it has alpha, resized to the
model resolution and mapped to [-1, 1] (``x / 127.5 - 1`` for 8-bit files).

Resizing follows the official DiscoveryDiff/DiffusionCLIP loaders:
``Image.resize((size, size), Image.LANCZOS)`` (``Image.ANTIALIAS`` there), i.e.
the whole image is stretched to a square without cropping. ``resize='center_crop'``
crops the largest central square first and keeps the aspect ratio.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from discovery_jax import fileio

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
}


class InputError(ValueError):
  """A file or folder that cannot be used as input; the message names it."""


@dataclasses.dataclass(frozen=True)
class ImageOptions:
  """How files become model inputs (``config.data`` fields of the same names)."""

  image_size: int
  channels: int = 3
  resize: str = "stretch"  # 'stretch' (official) or 'center_crop'.
  resample: str = "lanczos"  # PIL filter; the official code uses LANCZOS.
  alpha: str = "black"  # composite transparent pixels over 'black' or 'white', or 'drop' alpha.

  def __post_init__(self):
    if self.resize not in ("stretch", "center_crop"):
      raise InputError(f"data.resize must be 'stretch' or 'center_crop', got {self.resize!r}")
    if self.resample not in RESAMPLE:
      raise InputError(f"data.resample must be one of {sorted(RESAMPLE)}, got {self.resample!r}")
    if self.alpha not in ("black", "white", "drop"):
      raise InputError(f"data.alpha must be 'black', 'white' or 'drop', got {self.alpha!r}")
    if self.channels not in (1, 3):
      raise InputError(f"models with {self.channels} input channels are not image models (1 or 3)")


def list_files(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
  """Sorted paths of the files in ``folder`` (recursively) with one of ``extensions``."""
  if not folder:
    raise InputError("no input folder given (set config.data.ood_dir / --config.data.ood_dir=DIR)")
  if not os.path.isdir(folder):
    raise InputError(f"input folder {folder} does not exist")
  found = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for f in sorted(files):
      if f.lower().endswith(tuple(extensions)) and not f.startswith("."):
        found.append(os.path.join(root, f))
  if not found:
    raise InputError(f"input folder {folder} contains no files with extension {', '.join(extensions)}")
  return found


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_8bit(img: Image.Image, alpha: str, channels: int) -> Image.Image:
  """8-bit PIL modes -> 'RGB' or 'L', compositing alpha over the background."""
  if img.mode in ("P", "PA"):
    img = img.convert("RGBA")
  if img.mode in ("RGBA", "LA", "RGBa", "La") and alpha != "drop":
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if alpha == "white" else (0, 0, 0, 255))
    img = Image.alpha_composite(background, rgba)
  return img.convert("RGB" if channels == 3 else "L")


def _high_depth_to_unit(img: Image.Image) -> np.ndarray:
  """16/32-bit integer or float images -> float32 (H, W) in [0, 1]."""
  arr = np.asarray(img, dtype=np.float64)
  if img.mode == "F":
    if not np.isfinite(arr).all():
      raise InputError("float image contains NaN/Inf (read physical data as FITS/npy with a transform)")
    if arr.min() < 0 or arr.max() > 1:
      raise InputError(
          f"float image values span [{arr.min():.3g}, {arr.max():.3g}], not [0, 1] "
          "(read physical data as FITS/npy with an intensity transform)"
      )
    return arr.astype(np.float32)
  top = 65535.0 if img.mode != "I" or arr.max() <= 65535 else float(2**31 - 1)
  return (np.clip(arr, 0, None) / top).astype(np.float32)


def _crop_box(width: int, height: int, resize: str) -> tuple[int, int, int, int] | None:
  if resize != "center_crop" or width == height:
    return None
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  return (left, top, left + side, top + side)


def load_image(path: str, options: ImageOptions) -> np.ndarray:
  """One file -> float32 (size, size, channels) in [-1, 1]. Raises InputError.

  8-bit files are cropped/resized as 8-bit PIL images, then scaled by 1/255:
  bit-identical to the official ``Image.open(p).convert('RGB').resize(...)``
  followed by ``ToTensor`` and ``(x - 0.5) * 2``.
  """
  size = options.image_size
  try:
    with Image.open(path) as img:
      img.load()
      if img.width < 2 or img.height < 2:
        raise InputError(f"image is {img.width}x{img.height} pixels, too small")
      box = _crop_box(img.width, img.height, options.resize)
      if img.mode in HIGH_DEPTH_MODES:
        plane = Image.fromarray(_high_depth_to_unit(img), mode="F")
        if box:
          plane = plane.crop(box)
        if plane.size != (size, size):
          plane = plane.resize((size, size), RESAMPLE[options.resample])
        arr = np.clip(np.asarray(plane, np.float32), 0.0, 1.0)[..., None]
        if options.channels == 3:
          arr = np.repeat(arr, 3, axis=-1)
      else:
        img8 = _to_8bit(img, options.alpha, options.channels)
        if box:
          img8 = img8.crop(box)
        if img8.size != (size, size):
          img8 = img8.resize((size, size), RESAMPLE[options.resample])
        arr = np.asarray(img8, np.float32) / np.float32(255.0)
        if arr.ndim == 2:
          arr = arr[..., None]
  except InputError as e:
    raise InputError(f"{path}: {e}") from None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise InputError(f"{path} is not a readable image ({type(e).__name__}: {e})") from None
  # ToTensor's float32 x/255 followed by the official (x - 0.5) * 2, in float32.
  return ((arr.astype(np.float32) - np.float32(0.5)) * np.float32(2.0)).astype(np.float32)


# ---------------------------------------------------------------------------
# Output.


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 (values outside are clipped)."""
  return np.round((np.clip(np.asarray(x, np.float32), -1, 1) + 1) * 127.5).astype(np.uint8)


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a [-1, 1] float or uint8 (H, W, C) image atomically."""
  arr = image if image.dtype == np.uint8 else to_uint8(image)
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  fileio.atomic_write_with(path, lambda tmp: Image.fromarray(arr).save(tmp, format="png"), ".png")


def make_grid(images: np.ndarray, ncol: int | None = None, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
  """(N, H, W, C) in [-1, 1] -> one (rows*H, ncol*W, C) image with padding."""
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  ncol = ncol or int(math.ceil(math.sqrt(n)))
  nrow = int(math.ceil(n / ncol))
  grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, np.float32)
  for i in range(n):
    r, col = divmod(i, ncol)
    grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = images[i]
  return grid
