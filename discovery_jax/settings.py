"""The config boundary: ``ml_collections.ConfigDict`` sections turned into the typed
options the libraries take. Entry points call these; no library sees a ConfigDict.

Unset fields are ``None`` placeholders in ``configs/base.py``; an empty string in
a path field (older configs) means the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from discovery_jax import diffusion
from discovery_jax.data import images, scientific
from discovery_jax.data.bank import BankSources
from discovery_jax.data.inputs import InputOptions
from discovery_jax.discovery import DiscoveryOptions, TypicalOptions, step_spectrum
from discovery_jax.discovery.bandwidth import BandwidthOptions


def _get(section: Any, key: str, default: Any = None) -> Any:
  if section is None:
    return default
  value = section.get(key, default) if hasattr(section, "get") else getattr(section, key, default)
  return default if value is None else value


def path_or_none(value: Any) -> str | None:
  """A path field: None (or an empty string) means not given."""
  return None if value in (None, "") else str(value)


def finetune_data(config: Any) -> str:
  """The folder ``finetune`` trains on: ``finetune.data``, else the few-shot set ``data.ood_dir``."""
  data = path_or_none(config.finetune.get("data")) or path_or_none(config.data.get("ood_dir"))
  if not data:
    raise ValueError("nothing to fine-tune on: set config.finetune.data or config.data.ood_dir")
  return data


def _opt(value: Any) -> Any:
  """None for the "not set" spellings of a field that may be a string or a tuple."""
  return None if value in (None, "", (), []) else value


def image_options(config: Any) -> images.ImageOptions:
  data = config.get("data")
  return images.ImageOptions(
      image_size=int(config.model.image_size),
      channels=int(config.model.in_channels),
      resize=_get(data, "resize", "stretch"),
      resample=_get(data, "resample", "lanczos"),
      alpha=_get(data, "alpha", "black"),
  )


def scientific_options(config: Any) -> scientific.ScientificOptions:
  data = config.get("data")
  keep = _get(data, "keep_cards", scientific.KEEP_CARDS)
  return scientific.ScientificOptions(
      image_size=int(config.model.image_size),
      channels=int(config.model.in_channels),
      resize=_get(data, "resize", "stretch"),
      resample=_get(data, "scientific_resample", "auto"),
      hdu=_opt(_get(data, "hdu")),
      cube_axis=_opt(_get(data, "cube_axis")),
      cube_slices=_opt(_get(data, "cube_slices")),
      cube_channels=_opt(_get(data, "cube_channels")),
      npz_key=_opt(_get(data, "npz_key")),
      fill=_get(data, "fill", "median"),
      keep_cards=keep if isinstance(keep, str) else tuple(keep),
      same_size=bool(_get(data, "same_size", True)),
  )


def transform_spec(section: Any) -> dict:
  """``transforms.fit_transform`` keywords from ``config.data.transform``."""
  clip = _opt(_get(section, "clip_percentiles"))
  return {
      "kind": str(_get(section, "kind", "asinh")),
      "per_channel": bool(_get(section, "per_channel", False)),
      "clip_percentiles": tuple(float(v) for v in clip) if clip is not None else None,
      "offset": _get(section, "offset"),
      "softening": _get(section, "softening"),
  }


def input_options(config: Any) -> InputOptions:
  data = config.get("data")
  max_files = _get(data, "max_files")
  return InputOptions(
      image=image_options(config),
      scientific=scientific_options(config),
      transform=transform_spec(_get(data, "transform")),
      format=_get(data, "format", "auto"),
      on_bad_file=_get(data, "on_bad_file", "skip"),
      max_files=None if max_files in (None, -1) else int(max_files),
  )


def bank_sources(config: Any) -> BankSources:
  disc = config.get("discovery")
  return BankSources(
      ood_dir=path_or_none(config.data.get("ood_dir")),
      id_dir=path_or_none(config.data.get("id_dir")),
      inputs=input_options(config),
      num_id_latents=int(_get(disc, "num_id_latents", 64)),
      id_source=_get(disc, "id_source", "generate_invert"),
  )


def discovery_options(config: Any) -> DiscoveryOptions:
  """``config.discovery`` as DiscoveryOptions (unknown values refused there, by name)."""
  d = config.discovery
  guard = _get(d, "guard")
  per_path, budget = _get(d, "max_per_path"), _get(d, "max_candidates")
  try:
    return DiscoveryOptions(
        mode=d.mode,
        max_candidates=None if budget in (None, -1) else int(budget),
        num_interior=int(d.num_interior),
        num_refs=int(d.num_refs),
        max_per_path=None if per_path in (None, 0) else int(per_path),
        tolerance_scale=float(d.tolerance_scale),
        prior_kind=d.prior_kind,
        span_draws=bool(_get(d, "span_draws", True)),
        guard=None if guard in (None, "", "none") else guard,
        guard_margin=float(d.guard_margin),
        opt_steps=int(d.opt_steps),
        opt_lr=float(d.opt_lr),
    )
  except ValueError as e:
    raise ValueError(f"config.discovery: {e}") from None


def _step_power(value: Any) -> float | str:
  """'auto' stays a word (resolved on the bank); anything else must be a number."""
  if isinstance(value, str) and value == step_spectrum.AUTO:
    return value
  try:
    return float(value)
  except (TypeError, ValueError):
    raise step_spectrum.power_error(value) from None


def _quantile_or_none(name: str, value: Any) -> float | None:
  """A number or None (off), as a float; the field is untyped so that the command line can say None.
  The range is ``TypicalOptions``' check, with the same message."""
  if value is None:
    return None
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  raise ValueError(f"{name} must be a quantile in [0, 1) or None, got {value!r}")


def typical_options(config: Any) -> TypicalOptions:
  """The 'typical' discovery settings of ``config.discovery``."""
  d = config.discovery
  fill_after = d.fill_after if "fill_after" in d else TypicalOptions.fill_after  # None (off) is a setting
  if fill_after is not None and (isinstance(fill_after, bool) or not isinstance(fill_after, int)):
    raise ValueError(f"config.discovery.fill_after must be an integer >= 1 or None, got {fill_after!r}")
  try:
    default = TypicalOptions  # a missing key takes the library's default
    return TypicalOptions(
        strength_range=None if _get(d, "strength_range") is None else tuple(float(v) for v in d.strength_range),
        band=tuple(float(v) for v in _get(d, "band", default.band)),
        separation_quantile=float(_get(d, "separation_quantile", default.separation_quantile)),
        sibling_separation_quantile=_quantile_or_none(
            "sibling_separation_quantile", d.get("sibling_separation_quantile", default.sibling_separation_quantile)
        ),
        pool_factor=int(_get(d, "pool_factor", default.pool_factor)),
        guard=bool(_get(d, "image_guard", default.guard)),
        guard_kind=str(_get(d, "guard_kind", default.guard_kind)),
        guard_quantile=float(_get(d, "guard_quantile", default.guard_quantile)),
        guard_shrinkage=float(_get(d, "guard_shrinkage", default.guard_shrinkage)),
        distance_bins=int(_get(d, "distance_bins", default.distance_bins)),
        balance=str(_get(d, "balance", default.balance)),
        fill_after=fill_after,  # already checked: None or an integer
        partner_weight=float(_get(d, "partner_weight", default.partner_weight)),
        partner_neighbours=None if _get(d, "partner_neighbours") is None else int(d.partner_neighbours),
        selection_shrinkage=None if _get(d, "selection_shrinkage") is None else float(d.selection_shrinkage),
        standardized_check=None if _get(d, "standardized_check") is None else float(d.standardized_check),
        fill_near_misses=bool(_get(d, "fill_near_misses", default.fill_near_misses)),
        strength_sweep=bool(_get(d, "strength_sweep", default.strength_sweep)),
        fill_keeps_bins=bool(_get(d, "fill_keeps_bins", default.fill_keeps_bins)),
        fill_spreads=bool(_get(d, "fill_spreads", default.fill_spreads)),
        step_spectrum=_step_power(_get(d, "step_spectrum", default.step_spectrum)),
        # None is a setting here (off), so only a missing key takes the library's default
        spectral_guard=_quantile_or_none("spectral_guard", d.get("spectral_guard", default.spectral_guard)),
        rescue_factor=d.get("rescue_factor", default.rescue_factor),  # checked by TypicalOptions
    )
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.discovery: {e}") from None


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """DDIM settings of a run (``config.sampling``) and the diffusion schedule.

  ``t_0`` is None for ``sampling.t_0='auto'``: the CLI then finds it from the few-shot
  images (``discovery.bandwidth``) with ``bandwidth``'s options."""

  t_0: int | None
  n_steps: int
  eta: float
  batch_size: int  # per device
  schedule: diffusion.Schedule
  bandwidth: BandwidthOptions = BandwidthOptions()

  def with_t0(self, t_0: int) -> "SamplingOptions":
    diffusion.check_ddim_args(t_0, self.n_steps, self.eta, self.schedule.num_timesteps)
    return dataclasses.replace(self, t_0=int(t_0))


def _t0(value: Any) -> int | None:
  if isinstance(value, str):
    if value.strip().lower() == "auto":
      return None
    try:
      return int(value)
    except ValueError:
      raise ValueError(f"sampling.t_0 must be an integer in 1..999 or 'auto', got {value!r}") from None
  if value is None:
    raise ValueError("sampling.t_0 must be an integer in 1..999 or 'auto', got None")
  return int(value)


def sampling_options(config: Any) -> SamplingOptions:
  s = config.sampling
  tolerance, t_0_max = _get(s, "t_0_tolerance"), _get(s, "t_0_max")
  bandwidth = BandwidthOptions() if tolerance is None else BandwidthOptions(tolerance=float(tolerance))
  if t_0_max is not None:
    below = tuple(t for t in bandwidth.candidates if t <= int(t_0_max))
    if not below:
      raise ValueError(
          f"sampling.t_0_max={t_0_max} leaves t_0='auto' nothing to try: the smallest candidate is "
          f"{bandwidth.candidates[0]}"
      )
    bandwidth = dataclasses.replace(bandwidth, candidates=below)
  out = SamplingOptions(
      _t0(s.t_0),
      int(s.n_steps),
      float(_get(s, "eta", 0.0)),
      int(_get(s, "batch_size", 8)),
      diffusion.Schedule.from_config(config.get("diffusion")),
      bandwidth,
  )
  if out.t_0 is not None:
    diffusion.check_ddim_args(out.t_0, out.n_steps, out.eta, out.schedule.num_timesteps)
  else:
    diffusion.check_ddim_args(out.schedule.num_timesteps - 1, out.n_steps, out.eta, out.schedule.num_timesteps)
  if out.batch_size < 1:
    raise ValueError(f"sampling.batch_size must be >= 1, got {out.batch_size}")
  return out


def num_devices(config: Any) -> int | None:
  """``config.parallel.num_devices`` (None: every local device)."""
  n = _get(config.get("parallel"), "num_devices")
  return None if n in (None, -1, 0) else int(n)
