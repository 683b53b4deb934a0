"""diffusers ``UNet2DModel`` folders (google/ddpm-celebahq-256, ddpm-church-256,
ddpm-bedroom-256, ddpm-cat-256, ...) -> the DDPM family.

A diffusers DDPM is the same network as the original DDPM with other module
names, ``Linear`` attention projections instead of 1x1 convolutions, and its up
path stored lowest resolution first. Only configurations that are exactly a DDPM
UNet are accepted; anything else is refused naming the config field.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

from convert.torch_to_flax import CheckpointError, load_torch_file, unwrap_state_dict
from discovery_jax import models

WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)
# What the DDPM network fixes; a diffusers config that differs is not a DDPM.
REQUIRED_VALUES = {
    "time_embedding_type": "positional",
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "resnet_time_scale_shift": "default",
    "downsample_padding": 0,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "center_input_sample": False,
    "mid_block_scale_factor": 1,
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "time_embedding_dim": None,
    "attn_norm_num_groups": None,
    "mid_block_type": "UNetMidBlock2D",
}
# diffusers' own defaults for keys a config.json may leave out.
DEFAULTS = {
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "dropout": 0.0,
    **REQUIRED_VALUES,
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


def config_from_diffusers(raw: Mapping[str, Any], source: str) -> dict:
  """The DDPM model config equivalent to a diffusers UNet2DModel config.json."""
  cls = raw.get("_class_name", "UNet2DModel")
  if cls != "UNet2DModel":
    raise CheckpointError(f"{source}: _class_name is {cls!r}; only UNet2DModel (a DDPM UNet) is supported")
  cfg = {**DEFAULTS, **{k: v for k, v in raw.items() if not k.startswith("_")}}
  for key, want in REQUIRED_VALUES.items():
    got = cfg.get(key)
    if key == "norm_eps":
      ok = abs(float(got) - want) < 1e-12
    elif key == "attn_norm_num_groups":
      ok = got in (None, cfg["norm_num_groups"])
    else:
      ok = got == want
    if not ok:
      raise CheckpointError(f"{source}: config field {key}={got!r} is not supported; a DDPM UNet has {key}={want!r}")
  channels = [int(c) for c in cfg["block_out_channels"]]
  down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
  if len(down) != len(channels) or len(up) != len(channels):
    raise CheckpointError(
        f"{source}: {len(channels)} block_out_channels but {len(down)} down and " f"{len(up)} up block types"
    )
  attn_levels = []
  for i, kind in enumerate(down):
    if kind not in ("DownBlock2D", "AttnDownBlock2D"):
      raise CheckpointError(
          f"{source}: down_block_types[{i}]={kind!r} is not supported " "(DownBlock2D or AttnDownBlock2D)"
      )
    want_up = "AttnUpBlock2D" if kind == "AttnDownBlock2D" else "UpBlock2D"
    if up[len(up) - 1 - i] != want_up:
      raise CheckpointError(
          f"{source}: up_block_types[{len(up) - 1 - i}]={up[len(up) - 1 - i]!r} "
          f"does not mirror down_block_types[{i}]={kind!r} (expected {want_up!r})"
      )
    if kind == "AttnDownBlock2D":
      attn_levels.append(i)
  ch = channels[0]
  if any(c % ch for c in channels):
    raise CheckpointError(f"{source}: block_out_channels {channels} are not multiples of {ch}")
  size = cfg.get("sample_size")
  if isinstance(size, (list, tuple)):
    if size[0] != size[1]:
      raise CheckpointError(f"{source}: non-square sample_size {size} is not supported")
    size = size[0]
  head_dim = cfg["attention_head_dim"]
  return {
      "arch": "ddpm",
      "image_size": int(size),
      "in_channels": int(cfg["in_channels"]),
      "out_ch": int(cfg["out_channels"]),
      "ch": ch,
      "ch_mult": tuple(c // ch for c in channels),
      "num_res_blocks": int(cfg["layers_per_block"]),
      "attn_resolutions": tuple(int(size) // 2**i for i in attn_levels),
      "dropout": float(cfg["dropout"]),
      "resamp_with_conv": True,
      "attn_head_channels": -1 if head_dim is None else int(head_dim),
  }


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
    return f"{side}.{level}.{'downsample' if side == 'down' else 'upsample'}.{rest}"
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


def read_folder(folder: str, model_config: Any = None) -> tuple[dict, dict]:
  """Reads a diffusers UNet2DModel folder: (DDPM-named state dict, model config).

  If ``model_config`` is given it must describe the same network as config.json.
  """
  unet = _find_unet_folder(folder)
  config_path = os.path.join(unet, "config.json")
  try:
    with open(config_path) as f:
      raw = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{config_path} is not valid JSON: {e}") from None
  derived = config_from_diffusers(raw, config_path)
  if model_config is not None:
    given = models.validate(model_config)
    want = models.validate(derived)
    diff = [k for k in want if k not in ("dtype", "precision") and given.get(k) != want[k]]
    if diff:
      raise CheckpointError(
          f"{config_path} describes a different network than the given model config: "
          + ", ".join(f"{k}: config.json gives {want[k]!r}, model config has {given.get(k)!r}" for k in diff)
      )
  weights = next((os.path.join(unet, w) for w in WEIGHT_FILES if os.path.isfile(os.path.join(unet, w))), None)
  if weights is None:
    raise CheckpointError(f"{unet}: no weights file (looked for {', '.join(WEIGHT_FILES)})")
  state = rename_state_dict(read_weights(weights), derived, weights)
  return state, derived
