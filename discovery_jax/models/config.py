"""Model configs: field names follow the original PyTorch constructors, plus ``arch``.

A model config is an ``ml_collections.ConfigDict`` (or any mapping). Required
fields are the ones the original constructors take; every field this project adds
has a default. ``validate`` returns a complete, checked plain dict, and raises
``ModelConfigError`` naming the offending field otherwise.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

DDPM_REQUIRED = (
    "image_size",
    "in_channels",
    "out_ch",
    "ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "dropout",
    "resamp_with_conv",
)
IDDPM_REQUIRED = (
    "image_size",
    "in_channels",
    "num_channels",
    "num_res_blocks",
    "channel_mult",
    "attention_resolutions",
    "num_head_channels",
    "num_heads",
    "learn_sigma",
    "use_scale_shift_norm",
    "resblock_updown",
    "use_new_attention_order",
    "dropout",
)
# Fields added by this project, with their defaults.
COMMON_OPTIONAL = {
    # Compute dtype; parameters always stay float32.
    "dtype": "float32",
    # Matmul/conv precision: 'highest' reproduces PyTorch float32 exactly;
    # 'default' lets GPUs use TF32 (faster, ~1e-3 relative error). None: per
    # dtype ('highest' for float32, 'default' for bfloat16/float16).
    "precision": None,
}
DDPM_OPTIONAL = {
    # Attention head size; -1 is the original single head over all channels
    # (diffusers' ``attention_head_dim``).
    "attn_head_channels": -1,
    # diffusers UNet2DModel options (docs/diffusers.md); the defaults are the original DDPM.
    "flip_sin_to_cos": False,  # timestep embedding [cos, sin] instead of [sin, cos]
    "freq_shift": 1,  # frequencies exp(-k ln(10000) / (ch/2 - freq_shift))
    "time_embedding_type": "positional",  # or 'learned': a table of num_train_timesteps rows
    "temb_channels": -1,  # time-embedding width; -1: 4 * ch
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "mid_attn_norm_groups": -1,  # -1: norm_num_groups; 0: no GroupNorm in the middle attention
    "downsample_padding": 0,  # 0: pad right/bottom by 1 (DDPM); 1: pad 1 on every side
    "use_scale_shift_norm": False,  # time embedding as norm2(h) * (1 + scale) + shift
    "resnet_down_levels": (),  # levels whose downsampler is a ResnetBlock with average pooling
    "resnet_up_levels": (),  # levels whose upsampler is a ResnetBlock with nearest upsampling
    "mid_block_scale_factor": 1.0,  # middle ResnetBlocks and attention divide their output by it
    "mid_attention": True,  # False: no attention between the two middle ResnetBlocks
    # What the output means ('epsilon', 'v_prediction' or 'sample', i.e. x0) and the
    # schedule it was trained with (diffusers' scheduler names; None: not recorded, as
    # for PyTorch conversions and `train`); read by diffusion.eps_fn, checked against
    # config.diffusion by cli.load_model when recorded. v / x0 need a recorded schedule.
    "prediction_type": "epsilon",
    "beta_schedule": None,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "num_train_timesteps": 1000,
}
# Fields of the DDPM model config that describe the diffusion, not the network.
DIFFUSION_FIELDS = ("prediction_type", "beta_schedule", "beta_start", "beta_end", "num_train_timesteps")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "quadratic", "cosine")
IDDPM_OPTIONAL = {
    "num_heads_upsample": -1,
    "conv_resample": True,
    # Output channels; -1 means in_channels * (2 if learn_sigma else 1).
    "out_channels": -1,
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
GROUPS = 32


class ModelConfigError(ValueError):
  """A model config that does not describe a valid network."""


def _as_dict(config: Any) -> dict:
  if hasattr(config, "to_dict"):
    return config.to_dict()
  if isinstance(config, Mapping):
    return dict(config)
  raise ModelConfigError(f"model config must be a ConfigDict or a mapping, got {type(config).__name__}")


def _int_tuple(name: str, value: Any) -> tuple:
  try:
    out = tuple(int(v) for v in value)
  except TypeError:
    out = (int(value),)
  if any(v <= 0 for v in out):
    raise ModelConfigError(f"model.{name} must hold positive integers, got {value!r}")
  return out


def validate(config: Any) -> dict:
  """Checks a model config and returns it as a plain dict with defaults filled in."""
  cfg = _as_dict(config)
  arch = cfg.get("arch")
  if arch not in ("ddpm", "iddpm"):
    raise ModelConfigError(f"model.arch must be 'ddpm' or 'iddpm', got {arch!r}")
  required = DDPM_REQUIRED if arch == "ddpm" else IDDPM_REQUIRED
  optional = {**COMMON_OPTIONAL, **(DDPM_OPTIONAL if arch == "ddpm" else IDDPM_OPTIONAL)}
  missing = [k for k in required if k not in cfg]
  if missing:
    raise ModelConfigError(f"model config (arch={arch!r}) is missing field(s) {missing}")
  unknown = sorted(set(cfg) - set(required) - set(optional) - {"arch"})
  if unknown:
    raise ModelConfigError(
        f"model config (arch={arch!r}) has unknown field(s) {unknown}; "
        f"known fields: {sorted(set(required) | set(optional))}"
    )
  out = {**optional, **cfg}

  if out["dtype"] not in DTYPES:
    raise ModelConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {out['dtype']!r}")
  if out["precision"] not in (None, "highest", "high", "default"):
    raise ModelConfigError(
        f"model.precision must be None (per dtype), 'highest', 'high' or 'default', got {out['precision']!r}"
    )
  if not 0.0 <= float(out["dropout"]) < 1.0:
    raise ModelConfigError(f"model.dropout must be in [0, 1), got {out['dropout']!r}")

  size = int(out["image_size"])
  mult_key, base_key, attn_key = (
      ("ch_mult", "ch", "attn_resolutions")
      if arch == "ddpm"
      else ("channel_mult", "num_channels", "attention_resolutions")
  )
  mult = _int_tuple(mult_key, out[mult_key])
  attn = tuple(int(r) for r in out[attn_key]) if out[attn_key] is not None else ()
  base = int(out[base_key])
  out[mult_key], out[attn_key], out["image_size"], out[base_key] = mult, attn, size, base
  if int(out["num_res_blocks"]) < 1:
    raise ModelConfigError(f"model.num_res_blocks must be >= 1, got {out['num_res_blocks']!r}")
  if size % (2 ** (len(mult) - 1)):
    raise ModelConfigError(
        f"model.image_size={size} must be divisible by 2**(len({mult_key})-1) = {2 ** (len(mult) - 1)}"
    )
  groups = int(out["norm_num_groups"]) if arch == "ddpm" else GROUPS
  if groups < 1:
    raise ModelConfigError(f"model.norm_num_groups must be >= 1, got {groups}")
  for m in (1,) + mult if arch == "ddpm" else mult:
    if (base * m) % groups:
      raise ModelConfigError(
          f"model.{base_key}={base} x {mult_key} entry {m} = {base * m} channels is not divisible "
          f"by the {groups} GroupNorm groups"
      )
  resolutions = [size // 2**i for i in range(len(mult))]
  for r in attn:
    if r not in resolutions:
      raise ModelConfigError(
          f"model.{attn_key} contains {r}, which is not a resolution of this network "
          f"(image_size={size}, {len(mult)} levels: {resolutions})"
      )

  if arch == "ddpm":
    hc = int(out["attn_head_channels"])
    for c in {base * m for m, r in zip(mult, resolutions) if r in attn} | {base * mult[-1]}:
      if hc > 0 and c % hc:
        raise ModelConfigError(f"model.attn_head_channels={hc} does not divide {c} channels")
    _validate_ddpm_options(out, base * mult[-1], len(mult))
  else:
    nhc, nh = int(out["num_head_channels"]), int(out["num_heads"])
    for c in {base * m for m, r in zip(mult, resolutions) if r in attn} | {base * mult[-1]}:
      if nhc != -1 and c % nhc:
        raise ModelConfigError(f"model.num_head_channels={nhc} does not divide {c} channels")
      if nhc == -1 and c % nh:
        raise ModelConfigError(f"model.num_heads={nh} does not divide {c} channels")
    if int(out["out_channels"]) == -1:
      out["out_channels"] = int(out["in_channels"]) * (2 if out["learn_sigma"] else 1)
  return out


def _validate_ddpm_options(out: dict, mid_channels: int, levels: int) -> None:
  """Checks (and normalises in place) the DDPM fields beyond the original constructor."""

  def choice(key, allowed):
    if out[key] not in allowed:
      raise ModelConfigError(f"model.{key} must be one of {list(allowed)}, got {out[key]!r}")

  choice("time_embedding_type", ("positional", "learned"))
  choice("downsample_padding", (0, 1))
  choice("prediction_type", PREDICTION_TYPES)
  choice("beta_schedule", BETA_SCHEDULES + (None,))
  if out["prediction_type"] != "epsilon" and out["beta_schedule"] is None:
    raise ModelConfigError(
        f"model.prediction_type={out['prediction_type']!r} needs model.beta_schedule (the training schedule)"
    )
  for key in ("flip_sin_to_cos", "use_scale_shift_norm", "mid_attention", "resamp_with_conv"):
    if not isinstance(out[key], (bool, int)) or out[key] not in (0, 1):
      raise ModelConfigError(f"model.{key} must be True or False, got {out[key]!r}")
    out[key] = bool(out[key])
  out["norm_eps"], out["freq_shift"] = float(out["norm_eps"]), float(out["freq_shift"])
  out["mid_block_scale_factor"] = float(out["mid_block_scale_factor"])
  out["beta_start"], out["beta_end"] = float(out["beta_start"]), float(out["beta_end"])
  if out["freq_shift"] == int(out["freq_shift"]):
    out["freq_shift"] = int(out["freq_shift"])
  if out["norm_eps"] <= 0 or out["mid_block_scale_factor"] <= 0:
    raise ModelConfigError("model.norm_eps and model.mid_block_scale_factor must be > 0")
  if int(out["num_train_timesteps"]) < 2:
    raise ModelConfigError(f"model.num_train_timesteps must be >= 2, got {out['num_train_timesteps']!r}")
  if not 0 < out["beta_start"] <= out["beta_end"] < 1:
    raise ModelConfigError(
        f"model.beta_start={out['beta_start']} and beta_end={out['beta_end']} must satisfy 0 < start <= end < 1"
    )
  for key in ("temb_channels", "num_train_timesteps", "norm_num_groups", "mid_attn_norm_groups"):
    out[key] = int(out[key])
  mg = out["mid_attn_norm_groups"]
  if mg < -1 or (mg > 0 and mid_channels % mg):
    raise ModelConfigError(
        f"model.mid_attn_norm_groups={mg} must be -1 (norm_num_groups), 0 (no norm) or divide {mid_channels}"
    )
  if out["temb_channels"] == 0 or out["temb_channels"] < -1:
    raise ModelConfigError(f"model.temb_channels must be -1 (4 * ch) or > 0, got {out['temb_channels']}")
  for key, allowed in (("resnet_down_levels", range(levels - 1)), ("resnet_up_levels", range(1, levels))):
    try:
      vals = tuple(sorted(int(v) for v in out[key]))
    except TypeError:
      raise ModelConfigError(f"model.{key} must be a list of level indices, got {out[key]!r}") from None
    if any(v not in allowed for v in vals):
      raise ModelConfigError(f"model.{key}={list(vals)}: levels must lie in {list(allowed)} ({levels} levels)")
    out[key] = vals


def eps_channels(config: Any) -> int:
  """How many leading output channels are the model's prediction (eps, v or x0): for
  iDDPM, and for a DDPM with out_ch = 2 * in_channels (learned variance, as diffusers'
  schedulers split it), the first ``in_channels``; otherwise all ``out_ch``."""
  cfg = validate(config)
  if cfg["arch"] == "ddpm" and int(cfg["out_ch"]) != 2 * int(cfg["in_channels"]):
    return int(cfg["out_ch"])
  return int(cfg["in_channels"])
