"""Discovery that earns its place: typical candidates around the prior mean, judged in
image space by criteria computed from the few-shot set itself.

The paper slerps an OOD latent toward a prior draw and keeps candidates whose latent
angles match the bank's. Slerping two latents that share the bank mean lifts the
mean component, so only points next to the source pass: near-copies. Here:

* candidates interpolate the RESIDUALS: z = m + sqrt(1 - s^2) (x_src - m) + s sigma eps,
  a variance-preserving step from a few-shot latent toward a draw of the fitted prior
  (s = 0: the source, s = 1: a fresh prior draw), so every candidate keeps the bank's
  norm and angle statistics whatever s is; s is drawn per candidate over a wide range;
* optionally, part of the step (``partner_weight``, off by default) goes toward ANOTHER
  few-shot latent instead of noise: isotropic noise is read by the base model as its
  own domain's structure, a step toward a member of the target domain adds that
  domain's structure (it lowers FD but also novelty: docs/method.md);
* candidates are denoised and judged on what matters, their images: a new image of
  the domain is as far from the few-shot images as a few-shot image is from the
  others (leave-one-out), so a candidate is kept when its nearest few-shot distance
  lies in that band: closer is a copy, further is not the domain;
* the accepted images are shared out twice over: over the few-shot images (each belongs
  to the one it is nearest to, and each of those cells holds an equal share, so every
  neighbourhood of the target set is represented) and over bins of the band of equal
  few-shot mass (each holding an equal share, so their distances follow the few-shot
  images' own); first come would favour the band's near end and the neighbourhoods
  whose candidates pass most easily. Once enough candidates are held, the places still
  open are filled with the set-aside ones (``balance``, ``fill_after``);
* never two from nearly the same place: a candidate closer to an accepted one than
  the few-shot images ever are to each other is dropped;
* mode interference: a linear discriminant between the few-shot images and the
  model's own, in the base model's own features (it knows its domain better than a
  stand-in network does), drops a candidate that scores on the model's side of where
  the few-shot images themselves score when each is left out of the fit.

Everything is computed from the banks and the few-shot images; nothing is tuned per
domain. Keys: candidate g draws its source order, strength and noise from ``fold_in``
of named sub-keys and g, so results never depend on batch or device count.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from discovery_jax.discovery.image_criteria import ImageCriteria, Siblings, distance_bins, select
from discovery_jax.discovery.linalg import as_rows, latent_shape
from discovery_jax.discovery.prior import GaussianPrior, fit_prior, standard_normal
from discovery_jax.discovery.step_spectrum import (
    AUTO,
    StepSpectrum,
    auto_power,
    fit_step_spectrum,
    residual_slope,
    shape_step,
)
from discovery_jax.discovery.typical_options import TypicalOptions

_KEY_SOURCE, _KEY_STRENGTH, _KEY_NOISE, _KEY_PARTNER = 0, 1, 2, 3
NEAR_MISS_RELAXATIONS = 3  # the near-miss fill may halve the separation this many times
RESCUE_SLICES, RESCUE_FLOOR = 8, 0.05  # the rescue pool's strength law: slices, and each one's least weight


# ---------------------------------------------------------------------------
# Candidates (pure, jitted).


@jax.jit
def _candidates(
    rows: jax.Array,
    prior: GaussianPrior,
    order: jax.Array,
    key: jax.Array,
    index: jax.Array,
    s_lo: jax.Array,
    s_hi: jax.Array,
    partner_weight: jax.Array,
    neighbours: jax.Array,
    sweep: jax.Array,
    spectrum: StepSpectrum | None,
    strength_law: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  n = rows.shape[0]
  k_strength, k_noise = jax.random.fold_in(key, _KEY_STRENGTH), jax.random.fold_in(key, _KEY_NOISE)
  k_partner = jax.random.fold_in(key, _KEY_PARTNER)

  def one(g):
    src = order[g % n]
    u = jax.random.uniform(jax.random.fold_in(k_strength, g))
    u = jnp.where(sweep > 0, jnp.minimum((g + u) / jnp.maximum(sweep, 1.0), 1.0), u)
    s = s_lo + (s_hi - s_lo) * u
    if strength_law is not None:  # the inverse of a piecewise-uniform law: (its CDF at the edges, the edges)
      s = jnp.interp(u, strength_law[0], strength_law[1])
    eps = standard_normal(jax.random.fold_in(k_noise, g), rows.shape[1])
    if spectrum is not None:
      eps = shape_step(spectrum, eps)
    partner = neighbours[src, jax.random.randint(jax.random.fold_in(k_partner, g), (), 0, neighbours.shape[1])]
    r_src, r_partner = rows[src] - prior.mean, rows[partner] - prior.mean
    step = jnp.sqrt(1.0 - partner_weight) * jnp.sqrt(prior.var) * eps + jnp.sqrt(partner_weight) * r_partner
    u = jnp.sqrt(1.0 - s * s) * r_src + s * step
    # Two few-shot residuals need not be orthogonal (neighbours are not): rescale to the norm
    # an orthogonal step would give, so a mix never leaves the bank's norm shell.
    want = (1.0 - s * s) * jnp.sum(r_src**2) + s * s * (
        (1.0 - partner_weight) * jnp.sum(prior.var * eps**2) + partner_weight * jnp.sum(r_partner**2)
    )
    u = jnp.where(partner_weight > 0, u * jnp.sqrt(want / jnp.maximum(jnp.sum(u * u), 1e-30)), u)
    return prior.mean + u, src, s

  return jax.vmap(one)(index)


WHITE_STRENGTHS, FILTERED_STRENGTHS = (0.1, 0.7), (0.2, 0.9)  # each measured best with its step (docs/method.md)


def strengths_for_power(power: float) -> tuple[float, float]:
  """The strength range that goes with a step of this power: white steps (0) take the range
  measured best for them, the inverse filter (-1 and below) the wider one it needs to move a
  source's layout at all; between, the ends are interpolated (a positive power: white's)."""
  a = float(np.clip(-power, 0.0, 1.0))
  return tuple(round(w + a * (f - w), 4) for w, f in zip(WHITE_STRENGTHS, FILTERED_STRENGTHS))


def resolve_step(options: TypicalOptions, ood_bank: Any, prior: GaussianPrior) -> tuple[TypicalOptions, dict]:
  """``options`` with ``step_spectrum`` a number ('auto': from the bank's residual slope) and
  ``strength_range`` set (None: ``strengths_for_power``); and what was read off the bank."""
  power, info = options.step_spectrum, {}
  if power == AUTO:
    # Flat latents have no spatial spectrum: white steps.
    slope = residual_slope(ood_bank, prior.mean) if len(latent_shape(ood_bank)) == 3 else None
    power = 0.0 if slope is None else auto_power(slope)
    info = {"requested": AUTO, "residual_slope": None if slope is None else round(slope, 4)}
  power = float(power)
  strengths = options.strength_range if options.strength_range is not None else strengths_for_power(power)
  return dataclasses.replace(options, step_spectrum=power, strength_range=tuple(strengths)), info


def step_filter(ood_bank: Any, prior: GaussianPrior, options: TypicalOptions) -> StepSpectrum | None:
  """The filter ``options.step_spectrum`` asks for, fitted on the bank (None: white steps, nothing
  to fit); 'auto' is resolved first (``resolve_step``)."""
  power = resolve_step(options, ood_bank, prior)[0].step_spectrum
  return fit_step_spectrum(ood_bank, prior.mean, power) if power else None


def typical_candidates(
    ood_bank: Any,
    prior: GaussianPrior,
    key: jax.Array,
    candidate_index: Any,
    strength_range: tuple[float, float] = WHITE_STRENGTHS,
    partner_weight: float = 0.0,
    partner_neighbours: int | None = None,
    sweep: int = 0,
    spectrum: StepSpectrum | None = None,
    strength_law: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Candidates g of ``candidate_index``: (latents (n, *shape), source index, strength).
  ``strength_law``: (CDF at the edges, edges) of a piecewise-uniform law the strengths are
  drawn from instead of ``strength_range`` (``rescue_law``).

  Sources cycle through a key-seeded permutation of the bank, so every few-shot latent
  seeds the same number of candidates; a candidate's partner (``partner_weight`` > 0) is
  drawn from its own key, so it too depends on g alone. ``spectrum``: the step's noise is
  filtered by it (None: white)."""
  rows = jnp.asarray(as_rows(ood_bank))
  order = jax.random.permutation(jax.random.fold_in(key, _KEY_SOURCE), rows.shape[0]).astype(jnp.int32)
  index = jnp.atleast_1d(jnp.asarray(candidate_index, jnp.uint32))
  n = rows.shape[0]
  if partner_neighbours is None or partner_neighbours >= n - 1:
    neighbours = (jnp.arange(n)[:, None] + 1 + jnp.arange(n - 1)[None, :]) % n  # every other latent
  else:
    sq = jnp.sum(rows * rows, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * rows @ rows.T
    d2 = d2.at[jnp.arange(n), jnp.arange(n)].set(jnp.inf)
    neighbours = jnp.argsort(d2, axis=1)[:, :partner_neighbours]
  z, src, s = _candidates(
      rows,
      prior,
      order,
      key,
      index,
      jnp.float32(strength_range[0]),
      jnp.float32(strength_range[1]),
      jnp.float32(partner_weight),
      neighbours.astype(jnp.int32),
      jnp.float32(sweep),
      spectrum,
      None if strength_law is None else tuple(jnp.asarray(a, jnp.float32) for a in strength_law),
  )
  return np.asarray(z).reshape((-1,) + latent_shape(ood_bank)), np.asarray(src), np.asarray(s)


# ---------------------------------------------------------------------------
# The search.


@dataclasses.dataclass
class TypicalResult:
  latents: np.ndarray
  images: np.ndarray
  candidate_index: np.ndarray
  source_index: np.ndarray
  strength: np.ndarray
  nn_fewshot: np.ndarray
  nearest_fewshot: np.ndarray  # the few-shot image each accepted image is nearest to (among the distinct ones)
  near_miss: np.ndarray  # True where a sample missed the band (filled in when the pool ran out short)
  num_candidates: int
  rejections: dict
  criteria: dict
  prior: dict
  seconds: float
  options: dict
  rescue: dict | None = None  # the rescue pool, where one ran (``rescue_factor``)

  @property
  def num_accepted(self) -> int:
    return int(self.latents.shape[0])

  def summary(self) -> dict:
    return {
        "mode": "typical",
        "num_accepted": self.num_accepted,
        "num_candidates": self.num_candidates,
        "acceptance_rate": self.num_accepted / max(self.num_candidates, 1),
        "num_near_misses": int(np.sum(self.near_miss)),
        "rejections": self.rejections,
        "criteria": self.criteria,
        "prior": self.prior,
        "seconds": self.seconds,
        "config": self.options,
        "rescue": self.rescue,
        "strength_accepted": {
            "mean": float(np.mean(self.strength)) if len(self.strength) else None,
            "min": float(np.min(self.strength)) if len(self.strength) else None,
            "max": float(np.max(self.strength)) if len(self.strength) else None,
        },
        # how the accepted images share out over the few-shot images they are nearest to
        "fewshot_cells": {
            "used": int(len(np.unique(self.nearest_fewshot))),
            "of": int(self.criteria["num_fewshot"]),
            "max_per_cell": int(np.bincount(self.nearest_fewshot).max()) if len(self.nearest_fewshot) else 0,
        },
    }


def rescue_law(
    strengths: np.ndarray, passed: np.ndarray, strength_range: tuple[float, float], slices: int = RESCUE_SLICES
) -> tuple[np.ndarray, np.ndarray] | None:
  """The strengths a rescue pool draws from: ``strength_range`` cut into equal slices, each
  weighted by the share of its examined candidates that ``passed`` (plus RESCUE_FLOOR x the
  mean share, so no slice is ruled out on a few draws); (CDF at the edges, edges), or None
  when no candidate passed."""
  edges = np.linspace(strength_range[0], strength_range[1], slices + 1)
  k = np.clip(np.searchsorted(edges, np.asarray(strengths), side="right") - 1, 0, slices - 1)
  tried = np.bincount(k, minlength=slices)
  rate = np.bincount(k, weights=np.asarray(passed, np.float64), minlength=slices) / np.maximum(tried, 1)
  if not rate.any():
    return None
  weight = rate + RESCUE_FLOOR * rate.mean()
  return np.concatenate([[0.0], np.cumsum(weight) / weight.sum()]), edges


def _all_pass(n: int) -> dict:
  """A verdict that rejects none of ``n`` candidates: ``select`` then only separates and fills quotas."""
  return {k: np.zeros(n, bool) for k in ("too_close", "too_far", "own_side")}


def _spread_fill(
    features: np.ndarray,
    cells: np.ndarray,
    accepted: np.ndarray,
    accepted_cells: np.ndarray,
    num_cells: int,
    separation: float,
    needed: int,
    siblings: Siblings | None = None,
) -> np.ndarray:
  """Positions of fill-in candidates to take, the emptiest few-shot cells first: round r lets
  every cell hold r images (counting those accepted), candidates in order within a round,
  each at least ``separation`` from everything taken (``siblings``: and that far from its
  own source's). A candidate too near then stays too near."""
  counts = np.bincount(accepted_cells, minlength=num_cells).astype(np.int64)
  taken: list[np.ndarray] = []
  acc = np.asarray(accepted, np.float64).reshape(-1, features.shape[1])
  left = np.arange(len(features))
  level = int(counts.min()) + 1
  while len(left) and needed > 0:
    room = np.maximum(level - counts, 0)
    sib = None if siblings is None else dataclasses.replace(siblings, sources=siblings.sources[left])
    keep, spilled = select(features[left], _all_pass(len(left)), acc, separation, needed, cells[left], room, sib)
    picked = left[keep]
    if siblings is not None:
      siblings = dataclasses.replace(siblings, accepted=np.concatenate([siblings.accepted, siblings.sources[picked]]))
    taken.append(picked)
    counts += np.bincount(cells[picked], minlength=num_cells)
    acc = np.concatenate([acc, features[picked]])
    needed -= len(picked)
    left = left[spilled]
    level += 1
  return np.concatenate(taken) if taken else np.zeros(0, np.int64)


def _fillable_by_bins(keep, spilled, bins, last, n_acc, accepted_bins, spill_bins, bin_share) -> np.ndarray:
  """For each of the batch's first ``last`` candidates: how many places the accepted images so far
  and the set-aside ones could fill if every distance bin takes at most its share."""
  acc = accepted_bins.copy()
  held = np.bincount(spill_bins, minlength=len(bin_share))
  kept, set_aside, n = set(keep.tolist()), set(spilled.tolist()), n_acc
  out = np.empty(last, np.int64)
  for p in range(last):
    if p in kept:
      acc[bins[p]] += 1
      n += 1
    elif p in set_aside:
      held[bins[p]] += 1
    out[p] = n + np.minimum(held, np.maximum(bin_share - acc, 0)).sum()
  return out


def _separate_guard(options: TypicalOptions, own_images: Any, guard_features: Any) -> bool:
  """Whether the discriminant guard judges in its own feature space (not the selection features)."""
  return (
      own_images is not None and options.guard and guard_features is not None and options.guard_kind == "discriminant"
  )


def fit_criteria(
    options: TypicalOptions,
    features: Callable[[np.ndarray], np.ndarray],
    fewshot_images: np.ndarray,
    own_images: np.ndarray | None = None,
    guard_features: Callable[[np.ndarray], np.ndarray] | None = None,
) -> ImageCriteria:
  """The criteria the search judges its candidates by (``discover_typical``'s arguments of the
  same names); benchmarks/candidates.py fits the same ones to look at what they pass."""
  guarded = own_images is not None and options.guard
  separate_guard = _separate_guard(options, own_images, guard_features)
  return ImageCriteria.fit(
      features(fewshot_images),
      features(own_images) if guarded else None,
      options,
      guard_features(fewshot_images) if separate_guard else None,
      guard_features(own_images) if separate_guard else None,
      fewshot_images=fewshot_images,
  )


def discover_typical(
    ood_bank: Any,
    *,
    num_samples: int,
    key: jax.Array,
    denoise: Callable[[np.ndarray], np.ndarray],
    features: Callable[[np.ndarray], np.ndarray],
    fewshot_images: np.ndarray,
    own_images: np.ndarray | None = None,
    options: TypicalOptions | None = None,
    prior: GaussianPrior | None = None,
    log: Callable[[str], None] | None = None,
    guard_features: Callable[[np.ndarray], np.ndarray] | None = None,
) -> TypicalResult:
  """Typical candidates, denoised in batches (``denoise``: latents -> images), judged by
  ``features`` of their images against the few-shot images' own leave-one-out
  statistics, kept until ``num_samples`` or ``pool_factor * num_samples`` candidates.
  ``guard_features``: the feature space of the discriminant guard (default ``features``;
  ``sample`` passes the base model's own, ``metrics.features.model_extractor``).

  Returns the accepted latents AND their images (``denoise`` is deterministic, so these
  are the samples). Fewer than asked when the pool runs out (the caller decides).
  """
  options = options or TypicalOptions()
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  start = time.perf_counter()
  prior = prior or fit_prior(ood_bank)
  options, step_info = resolve_step(options, ood_bank, prior)
  spectrum = step_filter(ood_bank, prior, options)
  criteria = fit_criteria(options, features, fewshot_images, own_images, guard_features)
  separate_guard = _separate_guard(options, own_images, guard_features)
  sibling_separation = None
  if options.sibling_separation_quantile is not None:
    sibling_separation = max(
        criteria.separation, float(np.quantile(criteria.loo_distances, options.sibling_separation_quantile))
    )
  budget = options.pool_factor * num_samples
  sweep = budget if options.strength_sweep else 0
  lat, imgs, idx, srcs, strengths, nns, nearest, feats, missed = [], [], [], [], [], [], [], [], []
  rejections = {"too_close": 0, "too_far": 0, "own_side": 0, "duplicate": 0, "bin_full": 0, "off_spectrum": 0}
  accepted_feats = np.zeros((0, criteria.fewshot.shape[1]))
  n_cells, n_bins = len(criteria.fewshot), options.distance_bins
  edges = distance_bins(criteria.loo_distances, options.band, n_bins)
  cell_of = lambda verdict: verdict["nn_index"]  # a cell per few-shot image: the candidate's nearest one
  bin_of_distance = lambda d: np.searchsorted(edges, np.asarray(d, np.float64), side="right")
  bin_of = lambda verdict: bin_of_distance(verdict["nn_fewshot"])
  share = lambda n: np.full(n, -(-num_samples // n))
  keeps_bins = options.fill_keeps_bins and options.balance == "both"
  bin_share = share(n_bins)  # fill_keeps_bins: each distance bin's share, counted over everything accepted
  accepted_per_bin = lambda: np.bincount(bin_of_distance(np.concatenate(nns)) if nns else [], minlength=n_bins)
  if options.balance == "fewshot":
    room, quota_of = share(n_cells), cell_of
  elif options.balance == "distance":
    room, quota_of = share(n_bins), bin_of
  else:  # both quotas at once: the cells' and the distance bins' (numbered after the cells)
    room = np.concatenate([share(n_cells), share(n_bins)])
    quota_of = lambda verdict: np.stack([cell_of(verdict), n_cells + bin_of(verdict)], axis=1)
  # Candidates whose bin was full, used in order if the pool runs out: their index, distance
  # and features only (a latent is rebuilt from its index, so no image is held twice).
  spill: list[tuple] = []
  n_spill = 0

  def accept(parts, near_miss=False):
    nonlocal accepted_feats, n_acc
    zk, xk, gk, sk_src, sk, nk, ik, fk = parts
    lat.append(zk), imgs.append(xk), idx.append(gk), srcs.append(sk_src)
    strengths.append(sk), nns.append(nk), nearest.append(ik), feats.append(fk)
    missed.append(np.full(len(fk), near_miss))
    accepted_feats = np.concatenate([accepted_feats, fk])
    n_acc += len(fk)

  n_acc = examined = 0

  def siblings_of(sources: np.ndarray, scale: float = 1.0) -> Siblings | None:
    """The sibling rule for candidates of ``sources`` (None when off); ``scale`` shrinks it with the separation."""
    if sibling_separation is None:
      return None
    accepted = np.concatenate(srcs).astype(np.int64) if srcs else np.zeros(0, np.int64)
    return Siblings(sibling_separation * scale, np.asarray(sources, np.int64), accepted)

  pool_end, law = budget, None  # candidates from pool_end on are the rescue pool's, drawn from ``law``

  def candidates(g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates g under these options (a set-aside one is rebuilt from its index alone)."""
    g = np.asarray(g)
    make = lambda part, strength_law=None: typical_candidates(
        ood_bank,
        prior,
        key,
        part,
        options.strength_range,
        options.partner_weight,
        options.partner_neighbours,
        sweep,
        spectrum,
        strength_law,
    )
    rescued = g >= pool_end
    out = None
    for rows, strength_law in ((~rescued, None), (rescued, law)):
      if rows.any():
        part = make(g[rows], strength_law)
        out = out or tuple(np.empty((len(g),) + a.shape[1:], a.dtype) for a in part)
        for whole, a in zip(out, part):
          whole[rows] = a
    return out

  def fill_from(
      held: list[tuple], near_miss: bool = False, bin_room: np.ndarray | None = None, separation: float | None = None
  ) -> np.ndarray:
    """``held`` candidates (index, distance, nearest few-shot image, features), in order, as far as
    they keep ``separation`` (default the criteria's) apart from what is accepted (and, with
    ``bin_room``, only into distance bins with room); returns the positions taken."""
    fs = np.stack([c[3] for c in held])
    apart = criteria.separation if separation is None else separation
    sib = siblings_of([c[4] for c in held], apart / criteria.separation)
    if options.fill_spreads and bin_room is None:
      keep = _spread_fill(
          fs,
          np.asarray([c[2] for c in held]),
          accepted_feats,
          np.concatenate(nearest) if nearest else np.zeros(0, np.int64),
          n_cells,
          apart,
          num_samples - n_acc,
          sib,
      )
    else:
      quota = () if bin_room is None else (bin_of_distance([c[1] for c in held]), bin_room.copy())
      keep, _ = select(fs, _all_pass(len(held)), accepted_feats, apart, num_samples - n_acc, *quota, siblings=sib)
    for b0 in range(0, len(keep), options.batch):
      part = keep[b0 : b0 + options.batch]
      g = np.asarray([held[i][0] for i in part])
      z, src, s = candidates(g)
      nn, near = (np.asarray([held[i][k] for i in part]) for k in (1, 2))
      accept((z, denoise(z), g, src, s, nn, near, fs[part]), near_miss)
    return keep

  def fill_in(final: bool = True):
    nonlocal spill, n_spill
    if keeps_bins:  # the cells give way first: set-aside candidates into distance bins with room
      used = set(fill_from(spill, bin_room=np.maximum(bin_share - accepted_per_bin(), 0)).tolist())
      n_spill -= len(used)
      spill = [c for i, c in enumerate(spill) if i not in used]
      if not final or not spill or n_acc >= num_samples:
        return
    n_spill -= len(fill_from(spill))
    spill = []  # the rest lie too near an accepted image, now and from now on

  # The candidates that missed the band (never those on the model's side), (miss, index, distance,
  # nearest few-shot image, features), for a pool that runs out short: sorted, least miss first, only
  # when it does (some may lie too near each other).
  misses: list[tuple] = []

  # fill_after past pool_factor is the pool's end, where the search always fills in.
  settle = budget if options.fill_after is None else min(options.fill_after * num_samples, budget)
  tried_strength, tried_passed = [], []  # every examined candidate's strength, and whether it was usable
  rescue = None
  for rescuing in (False, True):
    if rescuing:  # short at the pool's end: a second pool, its strengths where the first one's passed
      if n_acc >= num_samples or not options.rescue_factor:
        break
      law = rescue_law(np.concatenate(tried_strength), np.concatenate(tried_passed), options.strength_range)
      if law is None:
        break
      rescue = {"from": n_acc, "strength_cdf": law[0].tolist(), "edges": law[1].tolist()}
      budget = settle = pool_end + options.rescue_factor * num_samples
      if log:
        log(f"typical discovery: the pool ran out at {n_acc}/{num_samples}; a rescue pool of {budget - pool_end}")
    while examined < budget and n_acc < num_samples:
      g = np.arange(examined, min(budget, examined + options.batch))
      z, src, s = candidates(g)
      x = denoise(z)
      f = np.asarray(features(x), np.float64)
      verdict = criteria.judge(f, np.asarray(guard_features(x), np.float64) if separate_guard else None, images=x)
      f = verdict["embedded"]  # separation and the spill are measured where the band is
      keep, spilled = select(
          f,
          verdict,
          accepted_feats,
          criteria.separation,
          num_samples - n_acc,
          quota_of(verdict),
          room,
          siblings_of(src),
      )
      last = keep[-1] + 1 if n_acc + len(keep) >= num_samples else len(g)
      # Past fill_after x N candidates (at the pool's end without it), the search also stops at the first
      # candidate by which the accepted and set-aside ones make up N, and fills in: found candidate by
      # candidate, so it never depends on the batch size.
      if keeps_bins:  # what the set-aside candidates can fill without overfilling a distance bin
        spill_bins = bin_of_distance([c[1] for c in spill])
        held = _fillable_by_bins(keep, spilled, bin_of(verdict), last, n_acc, accepted_per_bin(), spill_bins, bin_share)
      else:
        pos = np.arange(last)
        held = n_acc + np.searchsorted(keep, pos, side="right")
        held += np.minimum(num_samples, len(spill) + np.searchsorted(spilled, pos, side="right"))
      settled = np.flatnonzero((g[:last] + 1 >= settle) & (held >= num_samples))
      if len(settled):
        last = int(settled[0]) + 1
        keep = keep[keep < last]
      examined += int(last)
      seen = slice(0, last)
      rejections["too_close"] += int(verdict["too_close"][seen].sum())
      rejections["too_far"] += int(verdict["too_far"][seen].sum())
      rejections["off_spectrum"] += int(verdict["off_spectrum"][seen].sum())  # counted in too_far as well
      in_band = ~(verdict["too_close"] | verdict["too_far"])
      rejections["own_side"] += int((in_band & verdict["own_side"])[seen].sum())
      eligible = int((in_band & ~verdict["own_side"])[seen].sum())
      spilled = spilled[spilled < last]
      if not rescuing:
        usable = np.zeros(last, bool)
        usable[np.concatenate([keep, spilled])] = True
        tried_strength.append(s[:last]), tried_passed.append(usable)
      if options.fill_near_misses:
        off = np.flatnonzero(~in_band[seen] & ~verdict["own_side"][seen])
        misses += [
            (verdict["band_miss"][i], g[i], verdict["nn_fewshot"][i], verdict["nn_index"][i], f[i], src[i]) for i in off
        ]
      rejections["duplicate"] += eligible - len(keep) - len(spilled)
      n_spill += len(spilled)
      spill_cap = budget if keeps_bins else num_samples  # keeping the bins, any set-aside one may fill a far bin
      if len(spilled) and len(spill) < spill_cap:
        sp = spilled[: spill_cap - len(spill)]
        spill += list(zip(g[sp], verdict["nn_fewshot"][sp], verdict["nn_index"][sp], f[sp], src[sp]))
      if len(keep):
        nn, near = verdict["nn_fewshot"][keep], verdict["nn_index"][keep]
        accept((z[keep], x[keep], g[keep], src[keep], s[keep], nn, near, f[keep]))
      if log:
        log(f"typical discovery: {n_acc}/{num_samples} accepted after {examined} candidates")
      if len(settled) and n_acc < num_samples:
        fill_in(final=False)
        settle = budget  # set-aside ones too near each other to make up N: search on, and fill in again at the end
    if n_acc < num_samples and spill:  # the pool ran out before every bin filled
      fill_in()
  if rescue is not None:
    rescue.update(candidates=examined - pool_end, accepted=n_acc - rescue["from"])
  num_near_misses, fill_separation = 0, criteria.separation
  if n_acc < num_samples and misses:  # still short: the near misses, nearest the band first
    # Where even they lie too near each other (a few-shot set of a few, mutually distant images sets
    # a separation that nearest neighbours among N samples never keep), the separation is halved,
    # at most NEAR_MISS_RELAXATIONS times, before the search gives up.
    held = [m[1:] for m in sorted(misses, key=lambda m: (m[0], m[1]))]
    for relaxation in range(NEAR_MISS_RELAXATIONS + 1):
      fill_separation = criteria.separation / 2**relaxation
      taken = set(fill_from(held, near_miss=True, separation=fill_separation).tolist())
      num_near_misses += len(taken)
      held = [c for i, c in enumerate(held) if i not in taken]
      if n_acc >= num_samples or not held:
        break
    if log:
      log(
          f"typical discovery: the pool ran out at {n_acc - num_near_misses}/{num_samples}; filled "
          f"{num_near_misses} with the candidates nearest the band (flagged 'near_miss')"
          + (f", {fill_separation:.3g} apart (the separation halved)" if fill_separation < criteria.separation else "")
      )
  rejections["bin_full"] = n_spill
  cat = lambda xs, tail, dt: np.concatenate(xs).astype(dt) if xs else np.zeros((0,) + tail, dt)
  shape = latent_shape(ood_bank)
  return TypicalResult(
      latents=cat(lat, shape, np.float32),
      images=cat(imgs, tuple(fewshot_images.shape[1:]), np.float32),
      candidate_index=cat(idx, (), np.int64),
      source_index=cat(srcs, (), np.int64),
      strength=cat(strengths, (), np.float32),
      nn_fewshot=cat(nns, (), np.float64),
      nearest_fewshot=cat(nearest, (), np.int64),
      near_miss=cat(missed, (), bool),
      num_candidates=examined,
      rejections=rejections,
      criteria=criteria.summary()
      | {
          "near_miss_separation": fill_separation if num_near_misses else None,
          "sibling_separation": sibling_separation,
      },
      prior=prior.summary()
      | {"step_spectrum": (spectrum.summary() if spectrum is not None else {"power": 0.0}) | step_info},
      seconds=time.perf_counter() - start,
      options=dataclasses.asdict(options),
      rescue=rescue,
  )
