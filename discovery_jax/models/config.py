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
    # 'default' lets GPUs use TF32 (faster, ~1e-3 relative error).
    "precision": "highest",
}
DDPM_OPTIONAL = {
    # Attention head size; -1 is the original single head over all channels
    # (diffusers' ``attention_head_dim``).
    "attn_head_channels": -1,
}
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
  if out["precision"] not in ("highest", "high", "default"):
    raise ModelConfigError(f"model.precision must be 'highest', 'high' or 'default', got {out['precision']!r}")
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
  for m in mult:
    if (base * m) % GROUPS:
      raise ModelConfigError(
          f"model.{base_key}={base} x {mult_key} entry {m} = {base * m} channels is not divisible "
          f"by the {GROUPS} GroupNorm groups"
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


def eps_channels(config: Any) -> int:
  """How many leading output channels are the eps prediction."""
  cfg = validate(config)
  return int(cfg["out_ch"] if cfg["arch"] == "ddpm" else cfg["in_channels"])
