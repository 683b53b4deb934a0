r"""pytorch-fid's Inception weights -> a Flax/orbax folder that loads without torch.

  python -m convert.inception --pth=pt_inception-2015-12-05-6726825d.pth --output=checkpoints/fid_inception

The input is the plain state dict that pytorch-fid downloads (read with
``torch.load(weights_only=True)``). Every tensor of the pool3 network must be
present with its exact shape; ``fc.*`` (the 1008-way classifier) and BatchNorm's
``num_batches_tracked`` counters are accepted and dropped. Anything else (a missing
or extra key, a wrong shape, torchvision's ImageNet Inception) is refused with the
offending keys listed, and nothing is written.

Output folder (read by ``discovery_jax.features.load_inception``)::

    DIR/variables/      orbax tree {'params': ..., 'batch_stats': ...} (float32)
    DIR/metadata.json   format tag, source path and SHA-256, whether it is the official file
"""

from __future__ import annotations

import argparse

import json
import os
import sys
import time
from typing import Any, Mapping

import flax.traverse_util
import numpy as np

from convert import torch_to_flax
from discovery_jax import checkpoint, fileio
from discovery_jax.metrics import features
from discovery_jax.models import inception

CheckpointError = torch_to_flax.CheckpointError

# The official file's name carries the first hex digits of its SHA-256 (torch.hub convention).
OFFICIAL_FILE = "pt_inception-2015-12-05-6726825d.pth"
OFFICIAL_SHA256_PREFIX = "6726825d"
FC_SHAPES = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}
LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
MAX_LISTED = 8


def expected_state_dict() -> dict[str, tuple[tuple, tuple]]:
  """torch key -> (flax path incl. collection, torch shape) for the FID network."""
  flat = flax.traverse_util.flatten_dict(inception.variable_shapes())
  out = {}
  for path, sds in flat.items():
    collection, modules, leaf = path[0], path[1:-1], path[-1]
    shape = tuple(sds.shape)
    if leaf == "kernel":  # Flax (kh, kw, I, O) <- torch (O, I, kh, kw).
      shape = (shape[3], shape[2], shape[0], shape[1])
    out[".".join(modules + (LEAF_TO_TORCH[(collection, leaf)],))] = (path, shape)
  return out


def _shape(value: Any) -> tuple:
  return tuple(int(d) for d in value.shape)


def _fmt(keys: list, describe) -> str:
  shown = [describe(k) for k in keys[:MAX_LISTED]]
  return "; ".join(shown) + (f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else "")


def check_state_dict(state: Mapping[str, Any], source: str = "state dict") -> dict:
  """Raises ``CheckpointError`` naming the offending keys; returns the expectation."""
  expected = expected_state_dict()
  fc = state.get("fc.weight")
  if any(k.startswith("AuxLogits.") for k in state) or (fc is not None and _shape(fc)[0] == 1000):
    raise CheckpointError(
        f"{source} looks like torchvision's ImageNet Inception-v3 (AuxLogits / 1000 classes), not the "
        f"FID network: FID needs pytorch-fid's {OFFICIAL_FILE} (weights of TensorFlow's "
        "inception-2015-12-05 graph)"
    )
  ignored = [k for k in state if k.endswith(".num_batches_tracked") or k in FC_SHAPES]
  missing = [k for k in expected if k not in state]
  unexpected = [k for k in state if k not in expected and k not in ignored]
  wrong = [k for k in expected if k in state and _shape(state[k]) != expected[k][1]]
  wrong += [k for k in FC_SHAPES if k in state and _shape(state[k]) != FC_SHAPES[k]]
  if missing or unexpected or wrong:
    lines = [
        f"{source} is not the FID Inception-v3 state dict ({len(state)} tensors in the file, "
        f"{len(expected)} needed):"
    ]
    want = lambda k: expected[k][1] if k in expected else FC_SHAPES[k]
    if wrong:
      lines.append("  wrong shapes: " + _fmt(wrong, lambda k: f"{k} has {_shape(state[k])}, expected {want(k)}"))
    if missing:
      lines.append("  missing keys: " + _fmt(missing, lambda k: f"{k} {expected[k][1]}"))
    if unexpected:
      lines.append("  unexpected keys: " + _fmt(unexpected, lambda k: f"{k} {_shape(state[k])}"))
    raise CheckpointError("\n".join(lines))
  return expected


def _to_numpy(value: Any) -> np.ndarray:
  if not isinstance(value, np.ndarray):
    value = value.detach().float().numpy()
  return np.asarray(value, np.float32)


def convert_state_dict(path_or_state_dict: Any) -> dict:
  """Returns ``{'params': ..., 'batch_stats': ...}`` (numpy float32) for the FID network."""
  if isinstance(path_or_state_dict, (str, os.PathLike)):
    source = os.fspath(path_or_state_dict)
    state = torch_to_flax.unwrap_state_dict(torch_to_flax.load_torch_file(source), source)
  else:
    source = "state dict"
    state = torch_to_flax.unwrap_state_dict(path_or_state_dict, source)
  expected = check_state_dict(state, source)
  flat = {}
  for key, (path, _) in expected.items():
    flat[path] = torch_to_flax.torch_to_flax_array(_to_numpy(state[key]), path[-1])
  return flax.traverse_util.unflatten_dict(flat)


_sha256 = fileio.sha256_file


def convert_inception(source: Any, output: str, *, overwrite: bool = False) -> dict:
  """Converts a pytorch-fid weights file (or in-memory state dict) and writes ``output``
  atomically; returns a JSON-ready summary."""
  import orbax.checkpoint as ocp

  start = time.time()
  output = os.path.abspath(output)
  if os.path.exists(output) and not overwrite:
    raise checkpoint.CheckpointError(f"{output} already exists; pass overwrite=True (--overwrite) to replace it")
  variables = convert_state_dict(source)
  is_file = isinstance(source, (str, os.PathLike))
  digest = _sha256(os.fspath(source)) if is_file else ""
  meta = {
      "format": features.INCEPTION_FORMAT,
      "network": "pytorch-fid FID Inception-v3 (TF inception-2015-12-05), pool3 2048-d",
      "source": os.path.abspath(os.fspath(source)) if is_file else "in-memory state dict",
      "source_sha256": digest,
      "official_fid_weights": digest.startswith(OFFICIAL_SHA256_PREFIX),
      "num_params": int(sum(x.size for x in flax.traverse_util.flatten_dict(variables).values())),
      "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
  }
  with checkpoint.atomic_directory(output) as tmp:
    with checkpoint.quiet_orbax():
      checkpoint.lean_checkpointer().save(  # synchronous, no host copies.
          os.path.join(tmp, features.INCEPTION_VARIABLES_DIR), args=ocp.args.PyTreeSave(variables)
      )
    fileio.atomic_write_text(
        os.path.join(tmp, features.INCEPTION_METADATA_FILE), json.dumps(meta, indent=1, sort_keys=True)
    )
  return {
      "output": output,
      "num_tensors": len(flax.traverse_util.flatten_dict(variables)),
      "num_params": meta["num_params"],
      "official_fid_weights": meta["official_fid_weights"],
      "seconds": round(time.time() - start, 2),
  }


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pth", required=True, help=f"pytorch-fid's {OFFICIAL_FILE}")
  parser.add_argument("--output", required=True, help="folder to write")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
  args = parser.parse_args(argv)
  try:
    summary = convert_inception(args.pth, args.output, overwrite=args.overwrite)
  except CheckpointError as e:
    print(f"convert.inception: error: {e}", file=sys.stderr)
    return 1
  note = (
      ""
      if summary["official_fid_weights"]
      else (
          f" (WARNING: SHA-256 does not start with {OFFICIAL_SHA256_PREFIX}: not the official FID "
          "weights, values will not be comparable with published FIDs)"
      )
  )
  print(
      f"converted {summary['num_tensors']} tensors ({summary['num_params']:,} parameters) in "
      f"{summary['seconds']} s -> {summary['output']}{note}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
