"""diffusers ``UNet2DModel`` folders (google/ddpm-celebahq-256, ddpm-church-256,
ddpm-bedroom-256, ddpm-cat-256, ...) -> the DDPM family.

A diffusers DDPM is the same network as the original DDPM with other module
names, ``Linear`` attention projections instead of 1x1 convolutions, and its up
path stored lowest resolution first; the DDPM family's extra fields cover
UNet2DModel's other options (embedding flip/shift, padding, norm groups/eps,
multi-head attention, scale-shift norm, resnet resampling blocks, learned time
embedding). A field missing from config.json takes diffusers' default; anything
this family cannot reproduce exactly is refused naming the field
(docs/diffusers.md). The scheduler config gives the prediction type and the
training betas, stored in the model config.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

from convert.torch_to_flax import CheckpointError, load_torch_file, unwrap_state_dict
from discovery_jax import fileio, models
from discovery_jax.models.config import DIFFUSION_FIELDS

WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)
SHARD_INDEXES = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")
# The defaults of ``diffusers.UNet2DModel.__init__`` in diffusers 0.42.1, written down
# here (tests/test_diffusers.py checks them against the installed signature). A
# config.json that omits a field means this value, as it does for diffusers.
UNET2D_DEFAULTS = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-05,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}
# The training-time fields of a scheduler config and their defaults (DDPMScheduler and
# DDIMScheduler of diffusers 0.42.1 agree on these). Other fields (clip_sample,
# timestep_spacing, steps_offset, set_alpha_to_one, ...) only change diffusers' own
# sampling loops and are not read.
SCHEDULER_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
}
SUPPORTED_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SUPPORTED_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# Schedulers of discrete-time DDPM models (they share the beta fields above).
DDPM_SCHEDULERS = (
    "DDPMScheduler",
    "DDIMScheduler",
    "DDIMInverseScheduler",
    "PNDMScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "HeunDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DDPMParallelScheduler",
    "DDIMParallelScheduler",
)
DOWN_TYPES = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D")
UP_FOR_DOWN = {
    "DownBlock2D": "UpBlock2D",
    "AttnDownBlock2D": "AttnUpBlock2D",
    "ResnetDownsampleBlock2D": "ResnetUpsampleBlock2D",
}
ATTN_RENAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "query": "q",
    "to_k": "k",
    "key": "k",
    "to_v": "v",
    "value": "v",
    "to_out.0": "proj_out",
    "proj_attn": "proj_out",
}
RESNET_RENAMES = {"time_emb_proj": "temb_proj", "conv_shortcut": "nin_shortcut"}


def _find_unet_folder(folder: str) -> str:
  if os.path.isfile(os.path.join(folder, "config.json")):
    return folder
  if os.path.isfile(os.path.join(folder, "unet", "config.json")):  # a pipeline folder.
    return os.path.join(folder, "unet")
  raise CheckpointError(f"{folder}: no config.json (nor unet/config.json); not a diffusers model folder")


def _refuse(source: str, key: str, value: Any, why: str) -> CheckpointError:
  return CheckpointError(f"{source}: {key}={value!r} is not supported: {why}")


def config_from_diffusers(raw: Mapping[str, Any], source: str) -> dict:
  """The DDPM model config equivalent to a diffusers UNet2DModel config.json.

  Missing fields take diffusers' own defaults (``UNET2D_DEFAULTS``); an unknown
  field or a value this family cannot reproduce exactly is refused by name.
  """
  cls = raw.get("_class_name", "UNet2DModel")
  if cls != "UNet2DModel":
    raise CheckpointError(f"{source}: _class_name is {cls!r}; only UNet2DModel (a DDPM UNet) is supported")
  unknown = sorted(k for k in raw if not k.startswith("_") and k not in UNET2D_DEFAULTS)
  if unknown:
    raise CheckpointError(f"{source}: unknown UNet2DModel field(s) {unknown} (diffusers 0.42.1 has no such argument)")
  cfg = {**UNET2D_DEFAULTS, **{k: v for k, v in raw.items() if not k.startswith("_")}}

  def need(key, allowed, why):
    if cfg[key] not in allowed:
      raise _refuse(source, key, cfg[key], why)

  need("center_input_sample", (False,), "the network would take inputs in [0, 1], not [-1, 1]")
  need(
      "time_embedding_type",
      ("positional", "learned"),
      "a Fourier embedding takes log(sigma) of a score-SDE (VE) noise level and divides the output by it; "
      "it is not a DDPM eps network that DDIM can run",
  )
  need("act_fn", ("silu", "swish"), "only SiLU (swish) activations")
  need("mid_block_type", ("UNetMidBlock2D",), "the method needs the middle block (its output is the h-space)")
  need("class_embed_type", (None,), "class-conditional networks are not supported")
  need("num_class_embeds", (None,), "class-conditional networks are not supported")
  need("resnet_time_scale_shift", ("default", "scale_shift"), "only 'default' and 'scale_shift'")
  need("downsample_padding", (0, 1), "only 0 (pad right/bottom) and 1 keep the resolution halving")
  need("downsample_type", ("conv", "resnet"), "only 'conv' and 'resnet'")
  need("upsample_type", ("conv", "resnet"), "only 'conv' and 'resnet'")
  need("add_attention", (True, False), "must be true or false")
  for key in ("norm_num_groups",):
    if not isinstance(cfg[key], int) or cfg[key] < 1:
      raise _refuse(source, key, cfg[key], "must be a positive integer")
  if cfg["attn_norm_num_groups"] is not None and (
      not isinstance(cfg["attn_norm_num_groups"], int) or cfg["attn_norm_num_groups"] < 1
  ):
    raise _refuse(source, "attn_norm_num_groups", cfg["attn_norm_num_groups"], "must be null or a positive integer")

  size = cfg["sample_size"]
  if size is None:
    raise CheckpointError(
        f"{source}: field sample_size is missing (or null): the image size cannot be known; "
        'add e.g. "sample_size": 256 to config.json'
    )
  if isinstance(size, (list, tuple)):
    if len(size) != 2 or size[0] != size[1]:
      raise _refuse(source, "sample_size", size, "only square images")
    size = size[0]
  in_ch, out_ch = int(cfg["in_channels"]), int(cfg["out_channels"])
  if out_ch not in (in_ch, 2 * in_ch):
    raise _refuse(
        source,
        "out_channels",
        out_ch,
        f"the output must be the prediction ({in_ch} channels = in_channels) or the prediction and a "
        f"learned variance ({2 * in_ch})",
    )

  channels = [int(c) for c in cfg["block_out_channels"]]
  down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
  levels = len(channels)
  if len(down) != levels or len(up) != levels:
    raise CheckpointError(f"{source}: {levels} block_out_channels but {len(down)} down and {len(up)} up block types")
  attn_levels, resnet_down, resnet_up = [], [], []
  for i, kind in enumerate(down):
    if kind not in DOWN_TYPES:
      raise _refuse(source, f"down_block_types[{i}]", kind, f"supported: {list(DOWN_TYPES)}")
    k = levels - 1 - i  # the up block of the same level.
    if up[k] not in UP_FOR_DOWN.values():
      raise _refuse(source, f"up_block_types[{k}]", up[k], f"supported: {list(UP_FOR_DOWN.values())}")
    if (kind == "AttnDownBlock2D") != (up[k] == "AttnUpBlock2D"):
      raise CheckpointError(
          f"{source}: up_block_types[{k}]={up[k]!r} does not mirror down_block_types[{i}]={kind!r} "
          "(attention must be at the same resolutions on both paths)"
      )
    if kind == "AttnDownBlock2D":
      attn_levels.append(i)
    if i != levels - 1 and (
        kind == "ResnetDownsampleBlock2D" or (kind == "AttnDownBlock2D" and cfg["downsample_type"] == "resnet")
    ):
      resnet_down.append(i)
    if i != 0 and (up[k] == "ResnetUpsampleBlock2D" or (up[k] == "AttnUpBlock2D" and cfg["upsample_type"] == "resnet")):
      resnet_up.append(i)
  ch = channels[0]
  if any(c % ch for c in channels):
    raise _refuse(source, "block_out_channels", channels, f"every entry must be a multiple of the first ({ch})")

  learned = cfg["time_embedding_type"] == "learned"
  if learned and cfg["num_train_timesteps"] is None:
    raise CheckpointError(f"{source}: time_embedding_type='learned' needs num_train_timesteps (the table size)")
  if cfg["attn_norm_num_groups"] is not None:
    mid_groups = int(cfg["attn_norm_num_groups"])
  else:  # diffusers: the middle attention has a GroupNorm only under 'default' time conditioning.
    mid_groups = -1 if cfg["resnet_time_scale_shift"] == "default" else 0
  head_dim = cfg["attention_head_dim"]
  out = {
      "arch": "ddpm",
      "image_size": int(size),
      "in_channels": in_ch,
      "out_ch": out_ch,
      "ch": ch,
      "ch_mult": tuple(c // ch for c in channels),
      "num_res_blocks": int(cfg["layers_per_block"]),
      "attn_resolutions": tuple(int(size) // 2**i for i in attn_levels),
      "dropout": float(cfg["dropout"]),
      "resamp_with_conv": True,
      "attn_head_channels": -1 if head_dim is None else int(head_dim),
      "flip_sin_to_cos": bool(cfg["flip_sin_to_cos"]),
      "freq_shift": cfg["freq_shift"],
      "time_embedding_type": cfg["time_embedding_type"],
      "temb_channels": -1 if cfg["time_embedding_dim"] is None else int(cfg["time_embedding_dim"]),
      "norm_num_groups": int(cfg["norm_num_groups"]),
      "norm_eps": float(cfg["norm_eps"]),
      "mid_attn_norm_groups": mid_groups,
      "downsample_padding": int(cfg["downsample_padding"]),
      "use_scale_shift_norm": cfg["resnet_time_scale_shift"] == "scale_shift",
      "resnet_down_levels": tuple(resnet_down),
      "resnet_up_levels": tuple(resnet_up),
      "mid_block_scale_factor": float(cfg["mid_block_scale_factor"]),
      "mid_attention": bool(cfg["add_attention"]),
  }
  if learned:
    out["num_train_timesteps"] = int(cfg["num_train_timesteps"])
  try:
    return models.validate(out)
  except models.ModelConfigError as e:
    raise CheckpointError(f"{source}: {e}") from None


def find_scheduler_config(folder: str, unet: str) -> str | None:
  """scheduler_config.json of a pipeline folder (``scheduler/``) or beside the UNet."""
  candidates = [
      os.path.join(folder, "scheduler", "scheduler_config.json"),
      os.path.join(folder, "scheduler_config.json"),
      os.path.join(unet, "scheduler_config.json"),
  ]
  if os.path.basename(os.path.normpath(unet)) == "unet":
    candidates.append(os.path.join(os.path.dirname(os.path.normpath(unet)), "scheduler", "scheduler_config.json"))
  return next((c for c in candidates if os.path.isfile(c)), None)


def schedule_from_scheduler(raw: Mapping[str, Any], source: str) -> dict:
  """The model-config diffusion fields (prediction type, training betas) of a scheduler config."""
  cls = raw.get("_class_name", "DDPMScheduler")
  if cls not in DDPM_SCHEDULERS:
    raise _refuse(
        source, "_class_name", cls, f"not a discrete-time DDPM scheduler ({', '.join(DDPM_SCHEDULERS[:3])}, ...)"
    )
  cfg = {**SCHEDULER_DEFAULTS, **{k: v for k, v in raw.items() if k in SCHEDULER_DEFAULTS}}
  if cfg["trained_betas"] is not None:
    raise _refuse(
        source, "trained_betas", "[...]", "only the named schedules (linear, scaled_linear, squaredcos_cap_v2)"
    )
  if cfg["rescale_betas_zero_snr"]:
    raise _refuse(source, "rescale_betas_zero_snr", True, "zero-terminal-SNR betas are not implemented here")
  if cfg["beta_schedule"] not in SUPPORTED_BETA_SCHEDULES:
    raise _refuse(source, "beta_schedule", cfg["beta_schedule"], f"supported: {list(SUPPORTED_BETA_SCHEDULES)}")
  if cfg["prediction_type"] not in SUPPORTED_PREDICTION_TYPES:
    raise _refuse(source, "prediction_type", cfg["prediction_type"], f"supported: {list(SUPPORTED_PREDICTION_TYPES)}")
  return {
      "prediction_type": cfg["prediction_type"],
      "beta_schedule": cfg["beta_schedule"],
      "beta_start": float(cfg["beta_start"]),
      "beta_end": float(cfg["beta_end"]),
      "num_train_timesteps": int(cfg["num_train_timesteps"]),
  }


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      raw = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(raw, dict):
    raise CheckpointError(f"{path}: expected a JSON object, found {type(raw).__name__}")
  return raw


def rename_state_dict(state: Mapping[str, Any], model_config: Any, source: str) -> dict:
  """diffusers key names -> DDPM key names (attention projections reshaped to 1x1 convs)."""
  levels = len(models.validate(model_config)["ch_mult"])
  out = {}
  for key, value in state.items():
    new = _rename(key, levels)
    if new is None:
      out[key] = value  # reported as unexpected by the shape check.
      continue
    if re.search(r"\.attn(_1|\.\d+)\.(q|k|v|proj_out)\.weight$", new) and len(value.shape) == 2:
      value = value.reshape(*value.shape, 1, 1)
    out[new] = value
  return out


def _rename(key: str, levels: int) -> str | None:
  simple = {
      "time_embedding.linear_1.": "temb.dense.0.",
      "time_embedding.linear_2.": "temb.dense.1.",
      "time_proj.": "temb.embed.",  # the table of time_embedding_type='learned'.
      "conv_in.": "conv_in.",
      "conv_norm_out.": "norm_out.",
      "conv_out.": "conv_out.",
  }
  for old, new in simple.items():
    if key.startswith(old):
      return new + key[len(old) :]
  m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$", key)
  if m:
    side, level, kind, idx, rest = m.groups()
    level = int(level) if side == "down" else levels - 1 - int(level)
    if kind == "resnets":
      return f"{side}.{level}.block.{idx}.{_sub(rest, RESNET_RENAMES)}"
    if kind == "attentions":
      return f"{side}.{level}.attn.{idx}.{_sub(rest, ATTN_RENAMES)}"
    return f"{side}.{level}.{'downsample' if side == 'down' else 'upsample'}.{_sub(rest, RESNET_RENAMES)}"
  m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
  if m:
    kind, idx, rest = m.groups()
    if kind == "resnets":
      return f"mid.block_{int(idx) + 1}.{_sub(rest, RESNET_RENAMES)}"
    return f"mid.attn_{int(idx) + 1}.{_sub(rest, ATTN_RENAMES)}"
  return None


def _sub(rest: str, renames: Mapping[str, str]) -> str:
  for old, new in renames.items():
    if rest.startswith(old + "."):
      return new + rest[len(old) :]
  return rest


def read_weights(path: str) -> dict:
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file

    try:
      return load_file(path)
    except Exception as e:  # safetensors raises its own error types.
      raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
  return unwrap_state_dict(load_torch_file(path), path)


def read_folder(folder: str, model_config: Any = None) -> tuple[dict, dict, dict]:
  """Reads a diffusers UNet2DModel (or pipeline) folder.

  Returns (DDPM-named state dict, model config, provenance). The model config
  includes the prediction type and training schedule of the folder's scheduler
  config (DDPMScheduler's defaults when there is none; provenance says which).
  If ``model_config`` is given it must describe the same network as config.json.
  """
  unet = _find_unet_folder(folder)
  config_path = os.path.join(unet, "config.json")
  derived = config_from_diffusers(_read_json(config_path), config_path)
  scheduler_path = find_scheduler_config(folder, unet)
  schedule = schedule_from_scheduler(
      _read_json(scheduler_path) if scheduler_path else {}, scheduler_path or "scheduler defaults"
  )
  if derived["time_embedding_type"] == "learned" and derived["num_train_timesteps"] != schedule["num_train_timesteps"]:
    raise CheckpointError(
        f"{config_path}: num_train_timesteps={derived['num_train_timesteps']} (the learned time-embedding table) "
        f"differs from the scheduler's {schedule['num_train_timesteps']}"
    )
  derived = models.validate({**derived, **schedule})
  if model_config is not None:
    given = models.validate(model_config)
    skip = ("dtype", "precision") + DIFFUSION_FIELDS
    diff = [k for k in derived if k not in skip and given.get(k) != derived[k]]
    if diff:
      raise CheckpointError(
          f"{config_path} describes a different network than the given model config: "
          + ", ".join(f"{k}: config.json gives {derived[k]!r}, model config has {given.get(k)!r}" for k in diff)
      )
    derived = {**derived, "dtype": given["dtype"], "precision": given["precision"]}
  shards = [s for s in SHARD_INDEXES if os.path.isfile(os.path.join(unet, s))]
  weights = next((os.path.join(unet, w) for w in WEIGHT_FILES if os.path.isfile(os.path.join(unet, w))), None)
  if weights is None and shards:
    raise CheckpointError(f"{unet}: sharded weights ({shards[0]}) are not supported; save the UNet as one file")
  if weights is None:
    raise CheckpointError(f"{unet}: no weights file (looked for {', '.join(WEIGHT_FILES)})")
  info = {
      "weights_file": os.path.abspath(weights),
      "weights_sha256": fileio.sha256_file(weights),
      "unet_config": os.path.abspath(config_path),
      "scheduler_config": os.path.abspath(scheduler_path) if scheduler_path else None,
  }
  state = rename_state_dict(read_weights(weights), derived, weights)
  return state, derived, info
