"""The criteria typical discovery judges a denoised candidate by, all computed from the
few-shot images themselves (and the model's own images, for the guard): the band of
nearest few-shot distances, the separation between accepted images, the standardized
second view, the mode-interference discriminant, and the greedy selection under quotas.
Pure numpy; docs/method.md says why each exists."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from discovery_jax.discovery.spectral_envelope import SpectralEnvelope

if TYPE_CHECKING:
  from discovery_jax.discovery.typical_options import TypicalOptions

MIN_FEWSHOT = 4  # leave-one-out quantiles of fewer images say nothing
LIVE_CHANNEL = 1e-6  # a selection channel whose few-shot spread is below this x the median one's is dead


def _standardize(f: np.ndarray, center: np.ndarray | None, scale: np.ndarray, live: np.ndarray) -> np.ndarray:
  return f if center is None else (f[:, live] - center) / scale


def _zscore_params(f: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(center, scale, live) of per-channel z-scores of the few-shot features ``f``."""
  # A channel that barely varies among the few-shot images is a trait of the domain, and
  # leaving the domain shows there first. A channel none of them varies in has no scale to
  # measure by (new real images do switch such channels on), so it is dropped; the
  # shrinkage adds a share of the mean variance to every channel's.
  sd = f.std(axis=0)
  live = sd > LIVE_CHANNEL * max(float(np.median(sd)), 1e-30)
  if not live.any():
    raise ValueError(f"selection features: none of the {f.shape[1]} channels varies among the few-shot images")
  var = sd[live] ** 2
  return f[:, live].mean(axis=0), np.sqrt(var + shrinkage * var.mean()), live


def _leave_one_out(f: np.ndarray) -> np.ndarray:
  d = _distances(f, f)
  np.fill_diagonal(d, np.inf)
  return d.min(axis=1)


DUPLICATE = 1e-4  # two few-shot images nearer than this x the median distance among them are one image


def distinct_rows(f: np.ndarray) -> np.ndarray:
  """True for each row unless an earlier row is the same image (within ``DUPLICATE``): a file given
  twice is not a second example, and its zero leave-one-out distance would set the copy edge and the
  separation to nothing."""
  d = _distances(f, f)
  off = d[~np.eye(len(f), dtype=bool)]
  tol = DUPLICATE * (float(np.median(off)) if off.size else 0.0)
  return ~np.any(np.tril(d <= tol, k=-1), axis=1)


def _log_excess(a: Any, b: Any) -> np.ndarray:
  """log(a / b) where a > b, else 0 (an edge at 0 is never missed from above)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(a > b, np.log(a / np.maximum(b, 1e-300)), 0.0)


def _quantile_band(loo: np.ndarray, quantiles: tuple[float, float]) -> tuple[float, float]:
  return float(np.quantile(loo, quantiles[0])), float(np.quantile(loo, quantiles[1]))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
  return np.sqrt(np.maximum(sq, 0.0))


def _shrinkage_discriminant(pos: np.ndarray, neg: np.ndarray, shrinkage: float) -> tuple[np.ndarray, float]:
  """Fisher's discriminant with the pooled within-class covariance shrunk toward
  ``shrinkage`` x its mean eigenvalue (32 images in hundreds of dimensions need it):
  (w, b) with w . x + b > 0 on the ``pos`` side, 0 at the midpoint of the means."""
  mp, mn = pos.mean(axis=0), neg.mean(axis=0)
  c = np.concatenate([pos - mp, neg - mn])
  cov = c.T @ c / len(c)
  cov[np.diag_indices_from(cov)] += shrinkage * np.trace(cov) / len(cov)
  w = np.linalg.solve(cov, mp - mn)
  return w, float(-w @ (mp + mn) / 2.0)


@dataclasses.dataclass(frozen=True)
class DiscriminantGuard:
  """Few-shot vs the model's own images, linear in standardized guard features; a
  candidate passes when it scores at least as target-like as all but
  ``quantile`` of the few-shot images do when each is left out of the fit."""

  center: np.ndarray
  scale: np.ndarray
  w: np.ndarray
  b: float
  threshold: float
  loo_scores: np.ndarray
  own_pass_rate: float

  @classmethod
  def fit(cls, fewshot: Any, own: Any, *, quantile: float = 0.1, shrinkage: float = 1.0) -> "DiscriminantGuard":
    f, o = np.asarray(fewshot, np.float64), np.asarray(own, np.float64)
    if len(o) < 2:
      raise ValueError(
          f"the discriminant guard needs at least 2 of the model's own images (discovery.num_id_latents), got {len(o)}"
      )
    both = np.concatenate([f, o])
    center, scale = both.mean(axis=0), both.std(axis=0) + 1e-8
    f, o = (f - center) / scale, (o - center) / scale
    loo = np.empty(len(f))
    for i in range(len(f)):
      w, b = _shrinkage_discriminant(np.delete(f, i, axis=0), o, shrinkage)
      loo[i] = f[i] @ w + b
    w, b = _shrinkage_discriminant(f, o, shrinkage)
    threshold = float(np.quantile(loo, quantile))
    return cls(center, scale, w, b, threshold, loo, float(np.mean(o @ w + b >= threshold)))

  def scores(self, features: Any) -> np.ndarray:
    return ((np.asarray(features, np.float64) - self.center) / self.scale) @ self.w + self.b

  def own_side(self, features: Any) -> np.ndarray:
    return self.scores(features) < self.threshold


@dataclasses.dataclass(frozen=True)
class CheckView:
  """The band measured a second time, in per-channel z-scores of the few-shot features:
  raw distances are decided by a few loud channels, z-scores by the quiet ones, and a
  candidate must look like the domain in both."""

  center: np.ndarray  # (L,)
  scale: np.ndarray  # (L,)
  live: np.ndarray  # (F,) bool
  fewshot: np.ndarray  # (N, L), standardized
  band: tuple[float, float]

  @classmethod
  def fit(cls, fewshot_features: np.ndarray, shrinkage: float, quantiles: tuple[float, float]) -> "CheckView":
    f = np.asarray(fewshot_features, np.float64)
    center, scale, live = _zscore_params(f, shrinkage)
    e = _standardize(f, center, scale, live)
    return cls(center, scale, live, e, _quantile_band(_leave_one_out(e), quantiles))

  def nearest(self, features: Any) -> np.ndarray:
    """Nearest few-shot distance of each row of (raw) selection ``features``, in this view."""
    e = _standardize(np.asarray(features, np.float64), self.center, self.scale, self.live)
    return _distances(e, self.fewshot).min(axis=1)


@dataclasses.dataclass(frozen=True)
class ImageCriteria:
  """Targets computed from the few-shot features (and the model's own images). Distances
  are measured in ``embed``'s space: the live selection channels centred on the few-shot
  mean and divided by ``scale`` (the raw features when ``center`` is None)."""

  fewshot: np.ndarray  # (N, F), embedded
  band: tuple[float, float]  # accepted nearest few-shot distance
  separation: float  # minimum distance between two accepted images
  own: np.ndarray | None  # (M, F) features of the model's own images, for the 'nearest' guard
  loo_distances: np.ndarray  # (N,) leave-one-out nearest-neighbour distances among the few-shot images
  discriminant: DiscriminantGuard | None = None  # the 'discriminant' guard, in guard features
  center: np.ndarray | None = None  # (L,) subtracted before distances (None: raw features)
  scale: np.ndarray | None = None  # (L,) divided by before distances
  live: np.ndarray | None = None  # (F,) bool: the channels kept (those the few-shot images vary in)
  check: CheckView | None = None  # the band measured again in z-scores (``standardized_check``)
  duplicates: int = 0  # few-shot images left out as repeats of an earlier one (``distinct_rows``)
  spectral: SpectralEnvelope | None = None  # the spectral guard (``spectral_guard``), on the images

  def embed(self, features: Any) -> np.ndarray:
    """Selection features -> the space the band and the separation are measured in."""
    return _standardize(np.asarray(features, np.float64), self.center, self.scale, self.live)

  @classmethod
  def fit(
      cls,
      fewshot_features: Any,
      own_features: Any | None,
      options: TypicalOptions,
      fewshot_guard_features: Any | None = None,
      own_guard_features: Any | None = None,
      fewshot_images: Any | None = None,
  ) -> "ImageCriteria":
    """``*_guard_features``: the two sets in the guard's feature space (default: the
    selection features); ``fewshot_images``: (N, H, W, C), needed by the spectral guard."""
    f = np.asarray(fewshot_features, np.float64)
    distinct = distinct_rows(f)
    if distinct.sum() < MIN_FEWSHOT:
      repeated = f" ({int(distinct.sum())} distinct)" if not distinct.all() else ""
      raise ValueError(
          f"image-space discovery needs at least {MIN_FEWSHOT} few-shot images (leave-one-out distances), "
          f"got {f.shape[0]}{repeated}"
      )
    f = raw = f[distinct]
    if fewshot_guard_features is not None:
      fewshot_guard_features = np.asarray(fewshot_guard_features)[distinct]
    check = None if options.standardized_check is None else CheckView.fit(f, options.standardized_check, options.band)
    center = scale = live = None
    if options.selection_shrinkage is not None:
      center, scale, live = _zscore_params(f, options.selection_shrinkage)
      f = _standardize(f, center, scale, live)
    loo = _leave_one_out(f)
    band = _quantile_band(loo, options.band)
    guarded = own_features is not None and options.guard
    own, discriminant = None, None
    if guarded and options.guard_kind == "nearest":
      own = _standardize(np.asarray(own_features, np.float64), center, scale, live)
    elif guarded:
      discriminant = DiscriminantGuard.fit(
          raw if fewshot_guard_features is None else fewshot_guard_features,
          own_features if own_guard_features is None else own_guard_features,
          quantile=options.guard_quantile,
          shrinkage=options.guard_shrinkage,
      )
    separation = float(np.quantile(loo, options.separation_quantile))
    duplicates = int((~distinct).sum())
    spectral = None
    if options.spectral_guard is not None:
      if fewshot_images is None:
        raise ValueError("the spectral guard (spectral_guard) needs the few-shot images")
      spectral = SpectralEnvelope.fit(np.asarray(fewshot_images)[distinct], options.spectral_guard)
    return cls(f, band, separation, own, loo, discriminant, center, scale, live, check, duplicates, spectral)

  def judge(
      self, features: np.ndarray, guard_features: np.ndarray | None = None, images: np.ndarray | None = None
  ) -> dict:
    """Per candidate (raw selection ``features``): nearest few-shot distance and index,
    whether it is in the band, and whether it is on the model's own side (the guard, on
    ``guard_features`` when the guard has its own feature space); ``embedded``: the
    features in the space those distances were measured in. With the spectral guard the
    candidates' ``images`` too: one outside the few-shot spectra is too far
    (``off_spectrum``), and its miss counts toward ``band_miss``."""
    embedded = self.embed(features)
    d = _distances(embedded, self.fewshot)
    nn, idx = d.min(axis=1), d.argmin(axis=1)
    out = {
        "nn_fewshot": nn,
        "nn_index": idx,
        "too_close": nn < self.band[0],
        "too_far": nn > self.band[1],
        "embedded": embedded,
    }
    far, close = _log_excess(nn, self.band[1]), _log_excess(self.band[0], nn)
    if self.check is not None:  # far in either view is far; a copy only if a copy in both
      nn_check = self.check.nearest(features)
      out["too_close"] &= nn_check < self.check.band[0]
      out["too_far"] |= nn_check > self.check.band[1]
      out["nn_check"] = nn_check
      far = np.maximum(far, _log_excess(nn_check, self.check.band[1]))
      close = np.minimum(close, _log_excess(self.check.band[0], nn_check))
    out["off_spectrum"] = np.zeros(len(nn), bool)
    if self.spectral is not None:
      if images is None:
        raise ValueError("the spectral guard judges the candidates' images: pass images=")
      spectral_miss = self.spectral.miss(images)
      out["off_spectrum"] = spectral_miss > 0
      out["too_far"] |= out["off_spectrum"]
      far = np.maximum(far, spectral_miss)
    # How far outside the band (log ratio to the edge missed; 0 inside): ranks the near misses.
    out["band_miss"] = np.where(out["too_far"], far, 0.0) + np.where(out["too_close"], close, 0.0)
    if self.discriminant is not None:
      out["own_side"] = self.discriminant.own_side(features if guard_features is None else guard_features)
    elif self.own is not None:
      out["own_side"] = _distances(embedded, self.own).min(axis=1) < nn
    else:
      out["own_side"] = np.zeros(len(nn), bool)
    return out

  def summary(self) -> dict:
    return {
        "band": list(self.band),
        "separation": self.separation,
        "num_fewshot": int(len(self.fewshot)),
        "fewshot_duplicates": self.duplicates,
        "loo_nn_median": float(np.median(self.loo_distances)),
        "standardized": self.center is not None,
        "live_channels": None if self.live is None else int(self.live.sum()),
        "check_band": None if self.check is None else list(self.check.band),
        "check_live_channels": None if self.check is None else int(self.check.live.sum()),
        "guard": "discriminant" if self.discriminant is not None else "nearest" if self.own is not None else None,
        "spectral_guard": None if self.spectral is None else self.spectral.summary(),
        **(
            {
                "guard_threshold": self.discriminant.threshold,
                "guard_own_pass_rate": self.discriminant.own_pass_rate,
            }
            if self.discriminant is not None
            else {}
        ),
    }


def select(
    features: np.ndarray,
    verdict: dict,
    accepted: np.ndarray,
    separation: float,
    needed: int,
    bins: np.ndarray | None = None,
    room: np.ndarray | None = None,
    siblings: "Siblings | None" = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Greedy, in candidate order: the positions of candidates in the band, off the
  model's side, and at least ``separation`` from every accepted image (including
  those accepted from this batch). ``accepted``: (A, F) features accepted so far.
  With ``bins`` (each candidate's bin) and ``room`` (free places per bin), a
  candidate whose bin is full is not kept but returned second ("spilled"), for later;
  ``room`` is updated in place. A row of ``bins`` holding several bins (quotas on
  several partitions at once, their bins numbered into one ``room``) needs room in each.
  With ``siblings``, a candidate must lie ``siblings.separation`` from accepted images of
  its own few-shot source. Returns (kept positions, spilled positions)."""
  ok = ~(verdict["too_close"] | verdict["too_far"] | verdict["own_side"])
  kept: list[int] = []
  spilled: list[int] = []
  kept_feats = [np.asarray(accepted, np.float64)] if len(accepted) else []
  kept_src = [np.asarray(siblings.accepted, np.int64)] if siblings is not None and len(accepted) else []
  for i in np.flatnonzero(ok):
    if len(kept) >= needed:
      break
    x = features[i : i + 1]
    if kept_feats:
      d = _distances(x, np.concatenate(kept_feats))[0]
      limit = separation
      if siblings is not None:
        limit = np.where(np.concatenate(kept_src) == siblings.sources[i], siblings.separation, separation)
      if np.any(d < limit):
        continue
    if room is not None:
      if np.any(room[bins[i]] <= 0):
        spilled.append(int(i))
        continue
      room[bins[i]] -= 1
    kept.append(int(i))
    kept_feats.append(np.asarray(x, np.float64))
    if siblings is not None:
      kept_src.append(np.asarray(siblings.sources[i : i + 1], np.int64))
  return np.asarray(kept, np.int64), np.asarray(spilled, np.int64)


@dataclasses.dataclass(frozen=True)
class Siblings:
  """Candidates from one few-shot source share its residual, so two of them can look alike
  where the selection features see them apart: they must lie ``separation`` apart (larger than
  the criteria's). ``sources``: each candidate's; ``accepted``: each accepted image's."""

  separation: float
  sources: np.ndarray
  accepted: np.ndarray


def distance_bins(loo: np.ndarray, band: tuple[float, float], num_bins: int) -> np.ndarray:
  """Inner edges of ``num_bins`` bins holding equal shares of the few-shot images'
  leave-one-out distances inside the band: filling them equally gives the accepted
  images the nearest-neighbour distances that new real images have."""
  return np.quantile(loo, np.linspace(band[0], band[1], num_bins + 1)[1:-1])
