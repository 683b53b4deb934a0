"""The settings of typical discovery (``typical.discover_typical``), checked where they are made:
what each one does, and the one-line error a bad value gets."""

from __future__ import annotations

import dataclasses

from discovery_jax.discovery.step_spectrum import AUTO, check_power

GUARD_KINDS = ("discriminant", "nearest")
BALANCE_KINDS = ("distance", "fewshot", "both")


@dataclasses.dataclass(frozen=True)
class TypicalOptions:
  """strength_range: the candidates' step toward the prior, drawn uniformly per
  candidate (None: from the step's power, ``strengths_for_power``); band: leave-one-out quantiles of few-shot nearest-neighbour distances
  that bound an accepted image's nearest few-shot distance; separation_quantile: the
  few-shot quantile below which two accepted images count as the same;
  sibling_separation_quantile: two accepted images from ONE few-shot source must lie at least
  this few-shot quantile apart (they share the source's residual, so they can look alike where
  the selection features see them apart; None: the separation for every pair); pool_factor:
  at most this many candidates per requested sample; guard: drop candidates closer to
  the model's own images (mode interference); guard_kind: 'discriminant' (a shrinkage
  linear discriminant between the few-shot and the model's own images, threshold at
  the ``guard_quantile`` of the few-shot images' own leave-one-out scores) or
  'nearest' (closer to an own image than to any few-shot image); distance_bins: the
  band is cut into this many bins of equal few-shot mass, each holding an equal share
  of the accepted images (1: accept anywhere in the band, first come); balance: what
  the accepted images are shared out over, 'distance' (those distance bins) or
  'fewshot' (one cell per few-shot image, the accepted images nearest to it, each
  holding an equal share: every neighbourhood of the target set is represented, not
  only those whose candidates pass most easily) or 'both' (an accepted image counts
  against its cell and its distance bin, and needs room in each); fill_after: after this many
  candidates per requested sample, stop as soon as the accepted and set-aside
  candidates make up the number asked, and fill in with the set-aside ones (None or at
  least pool_factor: search the whole pool for a balanced set; a cell no candidate lands
  in never fills, so without it a balanced search always examines the whole pool);
  partner_weight:
  the step's share toward another few-shot latent rather than a prior draw (0: prior
  draws only, 1: mixes of two few-shot latents); partner_neighbours: draw that partner
  from the source's k nearest latents (None: from all the others); selection_shrinkage:
  the band and separation measure distances in selection features standardized per
  channel by the few-shot images' variance plus this x its mean over channels (0:
  plain z-scores; None: the raw features, whose few high-variance channels then decide
  alone); channels no few-shot image varies in are dropped when standardizing;
  standardized_check: a second view the band is also measured in, per-channel
  z-scores of the selection features with this shrinkage (None: off): a candidate is
  too far when beyond either view's upper edge, a copy only when inside both lower
  edges; fill_near_misses: when the pool runs out short, fill the open places with the
  candidates that missed the band by the least (never those on the model's side, always
  apart from what is accepted, at a separation halved up to three times where they lie too
  near each other), flagged as such (False: return short, and ``sample`` stops with a budget
  error); strength_sweep: candidate g of the pool takes its strength
  from the g-th of pool_factor x N equal slices of strength_range, so the search tries the
  gentlest steps first and goes further only where the quotas are not yet met (False: drawn
  uniformly per candidate); fill_keeps_bins (balance 'both' only): the fill-in gives up the
  few-shot cells before the distance bins: set-aside candidates whose distance bin still has
  room go first, and the search settles only once the bins can be met that way (False: the
  set-aside candidates in order, whatever their bin: first come, they crowd the near bins);
  fill_spreads: the fill-in (set-aside candidates and near misses) goes to the few-shot cells
  holding the fewest accepted images first, one more per cell per round (False, the default: in
  order, first come, which crowds the neighbourhoods whose candidates pass most easily; spreading
  lowers FD but also novelty, docs/method.md);
  step_spectrum: the step's power per spatial frequency and channel component follows the
  few-shot residuals' own raised to this power (-1: the inverse, most of the step in the
  fine detail the few-shot images vary least in, so the layout stays the source's and the
  model re-draws the detail; 0: white, the prior's isotropic draws; 1: a stationary
  Gaussian fit of the bank; 'auto', the default: the residuals' own spectral slope between
  -1 and 0, ``step_spectrum.auto_power``); needs image latents unless 0; spectral_guard: a
  candidate whose image's log power per octave band of spatial frequency lies further from the
  few-shot images' (largest |z| over the bands) than all but this quantile of the few-shot images
  do, each left out of the fit, is too far (``spectral_envelope``; default 0.1; None: off);
  rescue_factor: when the pool runs out short (after the set-aside candidates are used), search
  this many more candidates per requested sample before any near miss is taken, their strengths
  drawn where the first pool's passed (``rescue_law``: its strength range in slices, each as likely
  as the share of its candidates that were usable), so a domain whose candidates mostly land too
  close (or too far) is searched at the strengths that work for it (None or 0: no rescue)."""

  strength_range: tuple[float, float] | None = None
  band: tuple[float, float] = (0.1, 0.7)
  separation_quantile: float = 0.05
  sibling_separation_quantile: float | None = None
  pool_factor: int = 8
  guard: bool = True
  guard_kind: str = "discriminant"
  guard_quantile: float = 0.1
  guard_shrinkage: float = 1.0
  distance_bins: int = 4
  balance: str = "both"
  fill_after: int | None = 4
  partner_weight: float = 0.0
  partner_neighbours: int | None = None
  selection_shrinkage: float | None = None
  standardized_check: float | None = None
  fill_near_misses: bool = True
  strength_sweep: bool = False
  fill_keeps_bins: bool = False
  fill_spreads: bool = False
  step_spectrum: float | str = AUTO
  spectral_guard: float | None = 0.1
  rescue_factor: int | None = None
  batch: int = 64

  def __post_init__(self):
    if self.strength_range is not None and not 0.0 <= self.strength_range[0] <= self.strength_range[1] <= 1.0:
      raise ValueError(f"strength_range must satisfy 0 <= low <= high <= 1 (or be None), got {self.strength_range}")
    qlo, qhi = self.band
    if not 0.0 <= qlo < qhi <= 1.0:
      raise ValueError(f"band must be two quantiles 0 <= low < high <= 1, got {self.band}")
    if not 0.0 <= self.separation_quantile < 1.0:
      raise ValueError(f"separation_quantile must lie in [0, 1), got {self.separation_quantile}")
    sibling = self.sibling_separation_quantile
    if sibling is not None and not 0.0 <= sibling < 1.0:
      raise ValueError(f"sibling_separation_quantile must lie in [0, 1) or be None, got {sibling}")
    if self.guard_kind not in GUARD_KINDS:
      raise ValueError(f"guard_kind must be one of {GUARD_KINDS}, got {self.guard_kind!r}")
    if self.balance not in BALANCE_KINDS:
      raise ValueError(f"balance must be one of {BALANCE_KINDS}, got {self.balance!r}")
    if not 0.0 <= self.guard_quantile < 1.0 or not self.guard_shrinkage > 0.0:
      raise ValueError(
          f"guard_quantile must lie in [0, 1) and guard_shrinkage be > 0, got {self.guard_quantile}, "
          f"{self.guard_shrinkage}"
      )
    if not 0.0 <= self.partner_weight <= 1.0:
      raise ValueError(f"partner_weight must lie in [0, 1], got {self.partner_weight}")
    if self.selection_shrinkage is not None and not self.selection_shrinkage >= 0.0:
      raise ValueError(f"selection_shrinkage must be >= 0 or None, got {self.selection_shrinkage}")
    if self.standardized_check is not None and not self.standardized_check >= 0.0:
      raise ValueError(f"standardized_check must be >= 0 or None, got {self.standardized_check}")
    if self.fill_after is not None and not self.fill_after >= 1:
      raise ValueError(f"fill_after must be >= 1 or None, got {self.fill_after}")
    check_power(self.step_spectrum)
    if self.spectral_guard is not None and not 0.0 <= self.spectral_guard < 1.0:
      raise ValueError(f"spectral_guard must be a quantile in [0, 1) or None, got {self.spectral_guard}")
    if self.partner_neighbours is not None and self.partner_neighbours < 1:
      raise ValueError(f"partner_neighbours must be >= 1 or None, got {self.partner_neighbours}")
    rescue = self.rescue_factor
    if rescue is not None and (isinstance(rescue, bool) or not isinstance(rescue, int) or rescue < 0):
      raise ValueError(f"rescue_factor must be an integer >= 0 or None, got {self.rescue_factor!r}")
    if self.pool_factor < 1 or self.batch < 1 or self.distance_bins < 1:
      raise ValueError(
          f"pool_factor, batch and distance_bins must be >= 1, got {self.pool_factor}, {self.batch}, "
          f"{self.distance_bins}"
      )
