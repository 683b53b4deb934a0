"""The project's learned feature network for small grayscale images.

The penultimate embedding of a small classifier this project trained on labelled
data that ships offline (``python -m discovery_jax.demo.train_features``; weights and
their provenance in ``discovery_jax/assets/feature_net/``). It replaces the frozen
random conv net for Frechet distance, KID, precision/recall and the domain judge at
the embedded demo's scale; Inception stays the feature space for real 256 images.

No BatchNorm or per-sample normalisation: features never depend on the batch and
stay sensitive to absolute brightness and contrast (a blank image must not look
like a faint galaxy). Weights are an ``.npz`` of flattened parameter paths read with
``allow_pickle=False``, next to a JSON of metadata with their sha256.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from discovery_jax import fileio

ASSET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "feature_net")
WEIGHTS_FILE = "weights.npz"
METADATA_FILE = "feature_net.json"


class FeatureNet(nn.Module):
  """Stride-2 conv stem, (conv, stride-2 conv) per further width, global mean, a dense
  SiLU embedding and a linear head. Returns ``(embedding, logits)``."""

  widths: Sequence[int] = (32, 64, 128)
  embed_dim: int = 128
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = nn.silu(nn.Conv(self.widths[0], (3, 3), strides=(2, 2), name="stem")(x))
    for i, width in enumerate(self.widths[1:], start=1):
      h = nn.silu(nn.Conv(width, (3, 3), name=f"conv{i}a")(h))
      h = nn.silu(nn.Conv(width, (3, 3), strides=(2, 2), name=f"conv{i}b")(h))
    embedding = nn.silu(nn.Dense(self.embed_dim, name="embed")(jnp.mean(h, axis=(1, 2))))
    return embedding, nn.Dense(self.num_classes, name="head")(embedding)


def build(architecture: Mapping[str, Any]) -> FeatureNet:
  return FeatureNet(
      widths=tuple(architecture["widths"]),
      embed_dim=int(architecture["embed_dim"]),
      num_classes=int(architecture["num_classes"]),
  )


def flatten_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  return {k: np.asarray(v, np.float32) for k, v in sorted(flat.items())}


def save(directory: str, params: Mapping[str, Any], metadata: dict) -> dict:
  """Writes weights and metadata (with the weights' sha256) into ``directory``."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, WEIGHTS_FILE)
  fileio.atomic_write_bytes(path, _npz_bytes(flatten_params(params)))
  metadata = {**metadata, "weights_sha256": fileio.sha256_file(path)}
  fileio.atomic_write_json(os.path.join(directory, METADATA_FILE), metadata)
  return metadata


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
  import io

  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def load(directory: str | None = None) -> tuple[FeatureNet, dict, dict]:
  """Module, parameters and metadata; refuses weights whose sha256 differs from the metadata's."""
  directory = directory or ASSET_DIR
  weights, meta_path = os.path.join(directory, WEIGHTS_FILE), os.path.join(directory, METADATA_FILE)
  for path in (weights, meta_path):
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"feature network: {path} does not exist (a folder written by "
          "`python -m discovery_jax.demo.train_features`)"
      )
  with open(meta_path) as f:
    meta = json.load(f)
  digest = fileio.sha256_file(weights)
  if digest != meta.get("weights_sha256"):
    raise ValueError(
        f"feature network: {weights} has sha256 {digest}, its metadata says "
        f"{meta.get('weights_sha256')} (a corrupt or replaced file)"
    )
  with np.load(weights, allow_pickle=False) as data:
    params = traverse_util.unflatten_dict({k: jnp.asarray(data[k]) for k in data.files}, sep="/")
  return build(meta["architecture"]), params, meta


def image_shape(meta: dict) -> tuple[int, int, int]:
  return tuple(int(v) for v in meta["image_shape"])
