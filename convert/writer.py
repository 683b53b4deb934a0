"""Whole-file conversion: read, check, convert, and write a checkpoint directory."""

from __future__ import annotations

import hashlib
import os
import resource
import time

import jax

from convert import diffusers_format, torch_to_flax
from discovery_jax import checkpoint, models


def sha256(path: str, chunk: int = 1 << 24) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      digest.update(block)
  return digest.hexdigest()


def convert_checkpoint(
    source: str, output: str, model_config=None, *, diffusers: bool = False, overwrite: bool = False
) -> dict:
  """Converts ``source`` and writes ``output``; returns a summary dict."""
  start = time.time()
  if os.path.exists(output) and not overwrite:  # fail before the slow part.
    raise checkpoint.CheckpointError(f"{output} already exists; pass --overwrite to replace it")
  if diffusers:
    state, model_config, info = diffusers_format.read_folder(source, model_config)
    params = torch_to_flax.convert_state_dict(state, model_config)
    digest = info["weights_sha256"]
  else:
    if model_config is None:
      raise torch_to_flax.CheckpointError(
          "--config is required with --torch_checkpoint: it names the " "architecture (e.g. configs/afhq.py)"
      )
    params = torch_to_flax.convert_state_dict(source, model_config)
    digest = sha256(source)
    info = {}
  cfg = models.validate(model_config)
  seconds_convert = time.time() - start
  path = checkpoint.save_model(
      output,
      params,
      cfg,
      overwrite=overwrite,
      metadata={
          "source": os.path.abspath(source),
          "source_sha256": digest,
          "source_format": "diffusers" if diffusers else "torch",
          "arch": cfg["arch"],
          **({"diffusers": info} if diffusers else {}),
      },
  )
  num_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
  return {
      "output": path,
      "arch": cfg["arch"],
      "scheduler_config": info.get("scheduler_config"),
      "prediction_type": cfg.get("prediction_type", "epsilon"),
      "num_tensors": len(jax.tree_util.tree_leaves(params)),
      "num_params": num_params,
      "seconds": round(time.time() - start, 2),
      "seconds_convert": round(seconds_convert, 2),
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
  }
