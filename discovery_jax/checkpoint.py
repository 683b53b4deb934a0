"""Model checkpoints on disk: an orbax parameter tree plus the model config as JSON.

Layout of a checkpoint directory::

    DIR/model_config.json   the model config (``arch`` + constructor fields)
    DIR/params/             orbax StandardCheckpointer tree (float32)
    DIR/metadata.json       provenance: source file, hash, parameter count, ...

Directories are written under a temporary name and renamed into place, so a
checkpoint directory either exists complete or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from typing import Any, Mapping

import jax
import numpy as np

from discovery_jax import fileio

MODEL_CONFIG_FILE = "model_config.json"
METADATA_FILE = "metadata.json"
PARAMS_DIR = "params"


class CheckpointError(ValueError):
  """A checkpoint that cannot be read, written or converted; the message names it."""


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


@contextlib.contextmanager
def quiet_orbax():
  """Orbax logs every step of a save at INFO through absl; keep WARNING and up."""
  from absl import logging

  old = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)
  try:
    yield
  finally:
    logging.set_verbosity(old)


@contextlib.contextmanager
def atomic_directory(output_dir: str):
  """Yields a fresh temporary directory beside ``output_dir``; on success it replaces
  ``output_dir`` (the old one, if any, is removed only after the swap), on any error it is deleted."""
  output_dir = os.path.abspath(output_dir)
  os.makedirs(os.path.dirname(output_dir), exist_ok=True)
  tmp = f"{output_dir}.tmp-{os.getpid()}-{int(time.time())}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
    if os.path.exists(output_dir):
      old = f"{output_dir}.old-{os.getpid()}"
      os.replace(output_dir, old)
      os.replace(tmp, output_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, output_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def lean_checkpointer():
  """A synchronous orbax checkpointer that writes host arrays without extra copies.

  Orbax by default deep-copies every numpy array before an (async) write and
  zstd-compresses it; float weights barely compress, and both copies would
  triple the memory a save needs. The save below is synchronous, so nothing can
  modify the arrays while they are written.
  """
  import orbax.checkpoint as ocp
  from orbax.checkpoint import type_handlers

  registry = type_handlers.create_type_handler_registry(
      (np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      (jax.Array, type_handlers.ArrayHandler()),
  )
  handler = ocp.PyTreeCheckpointHandler(use_compression=False, type_handler_registry=registry)
  return ocp.Checkpointer(handler)


def save_model(
    output_dir: str,
    params: Any,
    model_config: Any,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
  """Writes a checkpoint directory atomically and returns its absolute path."""
  import orbax.checkpoint as ocp
  from discovery_jax import models

  cfg = models.validate(model_config)  # refuse to write a config that cannot be loaded.
  output_dir = os.path.abspath(output_dir)
  if os.path.exists(output_dir) and not overwrite:
    raise CheckpointError(f"{output_dir} already exists; pass overwrite=True (--overwrite) to replace it")
  with atomic_directory(output_dir) as tmp:
    with quiet_orbax():
      lean_checkpointer().save(os.path.join(tmp, PARAMS_DIR), args=ocp.args.PyTreeSave(params))
    with open(os.path.join(tmp, MODEL_CONFIG_FILE), "w") as f:
      f.write(fileio.dumps(_jsonable(cfg)))
    num_params = int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))
    meta = {
        "num_params": num_params,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "params_fingerprint": params_fingerprint(params),
        **_jsonable(dict(metadata or {})),
    }
    with open(os.path.join(tmp, METADATA_FILE), "w") as f:
      f.write(fileio.dumps(meta))
  return output_dir


def params_fingerprint(params: Any) -> str:
  """sha256 over every parameter (path, shape and float32 bytes), in path order.

  Identifies the model a latent bank was made with, whatever file it came from.
  """
  import flax.traverse_util

  digest = hashlib.sha256()
  for path, leaf in sorted(flax.traverse_util.flatten_dict(params).items()):
    arr = np.ascontiguousarray(np.asarray(leaf, np.float32))
    digest.update("/".join(path).encode() + str(arr.shape).encode())
    digest.update(memoryview(arr).cast("B"))
  return digest.hexdigest()[:32]


def model_fingerprint(checkpoint_dir: str, params: Any = None) -> str:
  """The stored fingerprint of a checkpoint (computed if an old one lacks it)."""
  fp = read_metadata(checkpoint_dir).get("params_fingerprint")
  if fp:
    return fp
  if params is None:
    _, params = load_model(checkpoint_dir)
  return params_fingerprint(params)


def read_model_config(checkpoint_dir: str) -> dict:
  path = os.path.join(checkpoint_dir, MODEL_CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(
        f"{checkpoint_dir} is not a discovery_jax checkpoint: {MODEL_CONFIG_FILE} is missing "
        "(convert a PyTorch checkpoint with `python -m convert` first)"
    )
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def read_metadata(checkpoint_dir: str) -> dict:
  path = os.path.join(checkpoint_dir, METADATA_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def load_params(checkpoint_dir: str, module: Any) -> Any:
  """Restores the parameter tree of ``module`` (checked against its shapes)."""
  import orbax.checkpoint as ocp
  from discovery_jax import models

  path = os.path.join(os.path.abspath(checkpoint_dir), PARAMS_DIR)
  if not os.path.isdir(path):
    raise CheckpointError(f"{checkpoint_dir}: parameter folder {PARAMS_DIR}/ is missing")
  abstract = models.param_shapes(module)
  try:
    with quiet_orbax():
      return ocp.StandardCheckpointer().restore(path, abstract)
  except Exception as e:  # orbax raises many types; name the folder and the cause.
    raise CheckpointError(f"{checkpoint_dir}: cannot restore parameters: {e}") from e


def load_model(checkpoint_dir: str, **overrides: Any):
  """Returns ``(module, params)``; ``overrides`` replace model-config fields that
  do not change the parameters (e.g. ``dtype='bfloat16'``)."""
  from discovery_jax import models

  cfg = read_model_config(checkpoint_dir)
  cfg.update(overrides)
  module = models.create_model(cfg)
  return module, load_params(checkpoint_dir, module)
