"""PyTorch state dicts -> Flax parameter trees, checked key by key and shape by shape.

The Flax modules carry the PyTorch module names, so a parameter at Flax path
``('down.0.block.1', 'conv1', 'kernel')`` is the tensor ``down.0.block.1.conv1.weight``.
Leaf layouts:

* conv2d weight (O, I, kh, kw) -> kernel (kh, kw, I, O)
* Linear weight (O, I)         -> kernel (I, O)
* conv1d k=1 weight (O, I, 1)  -> Dense kernel (I, O)   (iDDPM ``qkv`` / ``proj_out``)
* GroupNorm weight             -> scale; biases unchanged.

Checkpoints are read with ``torch.load(..., weights_only=True)``: a file whose
unpickling would execute code is refused.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import flax.traverse_util
import numpy as np

from discovery_jax import checkpoint, models

LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "ema_model", "ema", "params", "net", "module")
STRIP_PREFIXES = ("module.", "_orig_mod.")
CONV1D_MODULES = ("qkv", "proj_out")  # 1-D convolutions of guided-diffusion's attention.
MAX_LISTED = 8


# One error type for every checkpoint problem, read or write, in the package and here.
CheckpointError = checkpoint.CheckpointError


# ---------------------------------------------------------------------------
# Reading files.


def _torch():
  try:
    import torch
  except ImportError as e:  # pragma: no cover - depends on the install.
    raise ImportError(
        "reading PyTorch checkpoints needs torch: pip install -e '.[torch]' " "(torch==2.13.0, CPU build)"
    ) from e
  return torch


def _return_freed_memory_to_os() -> None:
  """Fixes glibc's mmap threshold at 1 MiB so that every tensor-sized buffer is its
  own mapping and goes back to the OS when freed. With glibc's default dynamic
  threshold, freed storages are recycled into the heap and the converter's peak
  memory holds both the PyTorch and the converted copy. No-op off glibc."""
  try:
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 1 << 20)
  except (OSError, AttributeError):
    pass


def load_torch_file(path: str) -> Any:
  """``torch.load`` with ``weights_only=True``; clear errors for anything else."""
  torch = _torch()
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: no such file")
  if os.path.isdir(path):
    raise CheckpointError(
        f"{path} is a directory; pass a checkpoint file (or use --diffusers for a " "diffusers model folder)"
    )
  _return_freed_memory_to_os()
  try:
    # No mmap: memory-mapped pages would stay resident beside the converted
    # arrays, while ordinary storages are freed one by one as they are converted.
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch's unpickler raises anything from IndexError to RuntimeError.
    lines = str(e).splitlines() or [type(e).__name__]
    unsafe = next((line.strip() for line in lines if "Unsupported global" in line), "")
    if unsafe and _looks_like_torch_file(path):
      raise CheckpointError(
          f"{path}: refused as unsafe: unpickling this file would execute code ({unsafe.split('. ')[0]}). "
          "Only plain tensor state dicts are loaded (torch.load(weights_only=True)); re-save the "
          "weights with torch.save(model.state_dict(), path) from a trusted environment."
      ) from None
    text = " ".join(str(e).split())
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\s*Check the documentation|$)", text)
    detail = (m.group(1) if m else lines[0].strip()).split(". ")[0][:200]
    raise CheckpointError(
        f"corrupt or not a PyTorch checkpoint: {path} ({type(e).__name__}: {detail}; a truncated download or a "
        "file of another format)"
    ) from None


def _looks_like_torch_file(path: str) -> bool:
  """True for what ``torch.save`` writes: a zip archive, or a legacy file that opens with a
  protocol >= 2 pickle header. Anything else is corrupt, whatever torch's unpickler said."""
  import zipfile

  with open(path, "rb") as f:
    head = f.read(2)
  return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _is_tensor(value: Any) -> bool:
  return hasattr(value, "detach") and hasattr(value, "shape")


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict:
  """Finds the name->tensor mapping in ``obj`` and strips a common ``module.`` prefix."""
  if not isinstance(obj, Mapping):
    raise CheckpointError(
        f"{source}: expected a state dict (a mapping of names to tensors), " f"found {type(obj).__name__}"
    )
  values = list(obj.values())
  if values and all(_is_tensor(v) or isinstance(v, np.ndarray) for v in values):
    state = dict(obj)
  else:
    for key in WRAPPER_KEYS:
      if isinstance(obj.get(key), Mapping):
        return unwrap_state_dict(obj[key], f"{source}['{key}']")
    nested = [k for k, v in obj.items() if isinstance(v, Mapping)]
    if len(nested) == 1:
      return unwrap_state_dict(obj[nested[0]], f"{source}['{nested[0]}']")
    raise CheckpointError(
        f"{source}: no state dict found; top-level keys are {list(obj)[:MAX_LISTED]} "
        f"(expected tensors, or a wrapper key among {list(WRAPPER_KEYS)})"
    )
  for prefix in STRIP_PREFIXES:
    if state and all(k.startswith(prefix) for k in state):
      state = {k[len(prefix) :]: v for k, v in state.items()}
  return state


def detect_family(keys: Any) -> str | None:
  """'iddpm', 'ddpm', 'diffusers' or None, from state-dict key names."""
  keys = list(keys)
  if any(k.startswith(("input_blocks.", "middle_block.", "time_embed.")) for k in keys):
    return "iddpm"
  if any(k.startswith(("down_blocks.", "mid_block.", "time_embedding.")) for k in keys):
    return "diffusers"
  if any(k.startswith(("down.", "mid.", "temb.dense.")) for k in keys):
    return "ddpm"
  return None


# ---------------------------------------------------------------------------
# Naming and layouts.


def _torch_shape(path: tuple, flax_shape: tuple) -> tuple:
  leaf = path[-1]
  if leaf == "kernel" and len(flax_shape) == 4:
    kh, kw, i, o = flax_shape
    return (o, i, kh, kw)
  if leaf == "kernel" and len(flax_shape) == 2:
    i, o = flax_shape
    return (o, i, 1) if path[-2] in CONV1D_MODULES else (o, i)
  return tuple(flax_shape)


def expected_state_dict(model_config: Any) -> dict[str, tuple[tuple, tuple]]:
  """torch key -> (flax path, torch shape) for the network ``model_config`` describes."""
  shapes = flax.traverse_util.flatten_dict(models.param_shapes(models.create_model(model_config)))
  out = {}
  for path, sds in shapes.items():
    key = ".".join(path[:-1] + (LEAF_TO_TORCH[path[-1]],))
    out[key] = (path, _torch_shape(path, tuple(sds.shape)))
  return out


def torch_to_flax_array(value: np.ndarray, flax_leaf: str) -> np.ndarray:
  if flax_leaf == "kernel":
    if value.ndim == 4:
      return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    if value.ndim == 3:
      return np.ascontiguousarray(value[:, :, 0].T)
    if value.ndim == 2:
      return np.ascontiguousarray(value.T)
  return np.ascontiguousarray(value)


def flax_to_torch_array(value: np.ndarray, path: tuple) -> np.ndarray:
  """Inverse of ``torch_to_flax_array`` (for exporting fine-tuned weights)."""
  value = np.asarray(value)
  if path[-1] == "kernel":
    if value.ndim == 4:
      return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if value.ndim == 2:
      return np.ascontiguousarray(value.T[:, :, None] if path[-2] in CONV1D_MODULES else value.T)
  return np.ascontiguousarray(value)


def _to_numpy(value: Any) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value.astype(np.float32, copy=False)
  value = value.detach()
  if value.dtype != _torch().float32:
    value = value.float()
  return value.numpy()


def _fmt(keys: list, describe) -> str:
  shown = [describe(k) for k in keys[:MAX_LISTED]]
  more = f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
  return "; ".join(shown) + more


def check_state_dict(state: Mapping[str, Any], model_config: Any, source: str = "checkpoint") -> dict:
  """Raises ``CheckpointError`` naming the first offending keys; returns the expectation."""
  cfg = models.validate(model_config)
  family = detect_family(state)
  if family is None:
    raise CheckpointError(f"{source}: not a DDPM or iDDPM state dict (first keys: {list(state)[:5]})")
  if family != cfg["arch"] and family != "diffusers":
    raise CheckpointError(
        f"{source} is a{'n' if family == 'iddpm' else ''} {family} checkpoint (keys such as "
        f"{next(iter(state))!r}) but the config says model.arch={cfg['arch']!r}"
    )
  expected = expected_state_dict(cfg)
  missing = [k for k in expected if k not in state]
  unexpected = [k for k in state if k not in expected]
  wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k][1]]
  if missing or unexpected or wrong:
    lines = [
        f"{source} does not match the model config (arch={cfg['arch']!r}, "
        f"{len(state)} tensors in the file, {len(expected)} expected):"
    ]
    if wrong:
      lines.append(
          f"  wrong shapes: "
          + _fmt(wrong, lambda k: f"{k} has {tuple(state[k].shape)}, config expects {expected[k][1]}")
      )
    if missing:
      lines.append(f"  missing keys: " + _fmt(missing, lambda k: f"{k} {expected[k][1]}"))
    if unexpected:
      lines.append(f"  unexpected keys: " + _fmt(unexpected, lambda k: f"{k} {tuple(state[k].shape)}"))
    raise CheckpointError("\n".join(lines))
  return expected


def convert_state_dict(path_or_state_dict: Any, model_config: Any) -> dict:
  """Returns the Flax params pytree (numpy float32) for a PyTorch checkpoint.

  ``path_or_state_dict``: a checkpoint path (zip or legacy torch format, possibly
  wrapped as ``{'state_dict': ...}`` or prefixed ``module.``), a diffusers
  ``UNet2DModel`` folder, or an in-memory mapping of names to tensors/arrays.
  """
  from convert import diffusers_format  # local: avoids an import cycle.

  if isinstance(path_or_state_dict, (str, os.PathLike)):
    source = os.fspath(path_or_state_dict)
    if os.path.isdir(source):
      state, _, _ = diffusers_format.read_folder(source, model_config)
    else:
      state = unwrap_state_dict(load_torch_file(source), source)
  else:
    source = "state dict"
    state = unwrap_state_dict(path_or_state_dict, source)
  if detect_family(state) == "diffusers":
    state = diffusers_format.rename_state_dict(state, model_config, source)
  expected = check_state_dict(state, model_config, source)
  flat = {}
  # Pop as we go so that each source tensor can be freed once converted.
  for key in list(expected):
    path, _ = expected[key]
    flat[path] = torch_to_flax_array(_to_numpy(state.pop(key)), path[-1])
  return flax.traverse_util.unflatten_dict(flat)
