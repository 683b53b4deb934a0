"""The paper's "bandwidth" from the data: the largest t_0 at which the few-shot images
still come back from deterministic DDIM inversion and generation.

Below it, the model keeps what makes a few-shot image itself and discovery moves
through latents the model can still turn into the target domain; above it, the model
redraws the images toward its own domain (mode interference). The error is measured
on the images' structure, not their raw pixels, so the same tolerance means the same
thing for dark radio galaxies and busy textures: the squared reconstruction error over
the squared deviation of each image from its own mean (0: perfect, 1: as bad as a flat
image).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

DEFAULT_CANDIDATES = (100, 200, 300, 400, 500, 600, 700, 800, 900)


class BandwidthError(ValueError):
  """No t_0 reconstructs the few-shot images within the tolerance."""


@dataclasses.dataclass(frozen=True)
class BandwidthOptions:
  """tolerance: the largest structure error still called a reconstruction;
  candidates: the t_0 values tried, in increasing order; max_images: how many
  few-shot images the search reconstructs (the first ones, in folder order)."""

  tolerance: float = 0.1
  candidates: tuple[int, ...] = DEFAULT_CANDIDATES
  max_images: int = 16

  def __post_init__(self):
    if not 0.0 < self.tolerance < 1.0:
      raise ValueError(f"sampling.t_0_tolerance must lie in (0, 1), got {self.tolerance}")
    c = tuple(int(t) for t in self.candidates)
    if not c or any(b <= a for a, b in zip(c, c[1:])) or c[0] < 1:
      raise ValueError(f"t_0 candidates must be positive and strictly increasing, got {self.candidates}")
    if self.max_images < 1:
      raise ValueError(f"max_images must be >= 1, got {self.max_images}")


def structure_error(images: np.ndarray, reconstructions: np.ndarray) -> float:
  """Pooled squared error over the images' pooled squared deviation from their own means."""
  x = np.asarray(images, np.float64)
  r = np.asarray(reconstructions, np.float64)
  if x.shape != r.shape:
    raise ValueError(f"images {x.shape} and reconstructions {r.shape} differ in shape")
  axes = tuple(range(1, x.ndim))
  spread = float(((x - x.mean(axis=axes, keepdims=True)) ** 2).sum())
  if spread == 0.0:
    raise BandwidthError("t_0='auto' needs few-shot images with some structure: every image is constant")
  return float(((r - x) ** 2).sum()) / spread


@dataclasses.dataclass(frozen=True)
class BandwidthSearch:
  t_0: int
  errors: dict[int, float]  # structure error at every t_0 tried
  tolerance: float
  num_images: int

  def summary(self) -> dict:
    return {
        "t_0": self.t_0,
        "tolerance": self.tolerance,
        "num_images": self.num_images,
        "structure_error": {str(t): e for t, e in self.errors.items()},
    }

  def describe(self) -> str:
    above = [t for t in self.errors if t > self.t_0]
    nxt = f"; t_0 = {above[0]}: {self.errors[above[0]]:.3f}" if above else ""
    return (
        f"t_0='auto' chose t_0 = {self.t_0}: structure error {self.errors[self.t_0]:.3f} <= tolerance "
        f"{self.tolerance:g} on {self.num_images} few-shot images{nxt}"
    )


def find_t0(
    images: np.ndarray,
    reconstruct: Callable[[int, np.ndarray], np.ndarray],
    options: BandwidthOptions | None = None,
    valid: Callable[[int], bool] | None = None,
) -> BandwidthSearch:
  """Tries the candidates in increasing order and stops at the first whose structure
  error exceeds the tolerance: the answer is the last one before it.

  ``reconstruct(t_0, images)``: inversion to x_{t_0} and generation back;
  ``valid(t_0)``: whether the sampler can run at that t_0 (candidates it cannot run
  are skipped)."""
  options = options or BandwidthOptions()
  x = np.asarray(images)[: options.max_images]
  if len(x) == 0:
    raise BandwidthError("t_0='auto' needs few-shot images to reconstruct; the few-shot set is empty")
  candidates: Sequence[int] = [t for t in options.candidates if valid is None or valid(t)]
  if not candidates:
    raise BandwidthError(f"t_0='auto': none of the candidate t_0 values {options.candidates} fits this sampler")
  errors: dict[int, float] = {}
  chosen = None
  for t in candidates:
    errors[t] = structure_error(x, reconstruct(t, x))
    if errors[t] > options.tolerance:
      break
    chosen = t
  if chosen is None:
    t = candidates[0]
    raise BandwidthError(
        f"t_0='auto' found no t_0 within tolerance {options.tolerance:g}: even t_0 = {t} gives structure error "
        f"{errors[t]:.3f} on {len(x)} few-shot images; set sampling.t_0 to an integer, or raise "
        f"sampling.t_0_tolerance (in (0, 1))"
    )
  return BandwidthSearch(chosen, errors, options.tolerance, len(x))
