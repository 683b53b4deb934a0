"""The on-disk format of a generated dataset: the feature spec (tfds features), PNG
encoding and array_record shard I/O, shared by the writer and readers."""

from __future__ import annotations

import io
import json
import re
from typing import Any, Mapping, Sequence

import numpy as np

RESERVED = ("image", "index", "latent")
SCALAR_DTYPES = ("int64", "int32", "float32", "float64")


class DatasetError(ValueError):
  """A dataset directory or request that is inconsistent, incompatible or corrupt; names it."""


def features_spec(
    image_shape: Sequence[int], latent_shape: Sequence[int] | None = None, scalars: Mapping[str, str] | None = None
) -> dict:
  """The JSON feature spec of a dataset: 'image' (uint8, PNG), 'index' (int64),
  optional 'latent' (float32) and extra scalars ``{name: dtype}``."""
  spec = {
      "image": {"type": "image", "shape": [int(d) for d in image_shape], "dtype": "uint8"},
      "index": {"type": "scalar", "dtype": "int64"},
  }
  if latent_shape is not None:
    spec["latent"] = {"type": "tensor", "shape": [int(d) for d in latent_shape], "dtype": "float32"}
  for key, dtype in (scalars or {}).items():
    spec[key] = {"type": "scalar", "dtype": str(np.dtype(dtype))}
  return validate_features_spec(spec)


def validate_features_spec(spec: Mapping[str, Any]) -> dict:
  """Checks a spec (as written by ``features_spec``) and returns it as plain JSON."""
  spec = json.loads(json.dumps(spec))
  image = spec.get("image")
  if not image or image.get("type") != "image":
    raise DatasetError(f"features spec needs an 'image' entry of type 'image', got {image!r}")
  shape = image.get("shape")
  if not (isinstance(shape, list) and len(shape) == 3 and shape[2] in (1, 3, 4) and min(shape) > 0):
    raise DatasetError(f"features spec: image shape must be [H, W, C] with C in 1, 3, 4; got {shape!r}")
  if spec.get("index") != {"type": "scalar", "dtype": "int64"}:
    raise DatasetError(f"features spec: 'index' must be an int64 scalar, got {spec.get('index')!r}")
  if "latent" in spec and (spec["latent"].get("type") != "tensor" or spec["latent"].get("dtype") != "float32"):
    raise DatasetError(f"features spec: 'latent' must be a float32 tensor, got {spec['latent']!r}")
  for key, entry in spec.items():
    if key in RESERVED:
      continue
    if not re.fullmatch(r"[A-Za-z_]\w*", key):
      raise DatasetError(f"features spec: feature name {key!r} is not an identifier")
    if entry.get("type") != "scalar" or entry.get("dtype") not in SCALAR_DTYPES:
      raise DatasetError(f"features spec: extra feature {key!r} must be a scalar of {SCALAR_DTYPES}, got {entry!r}")
  return spec


def tfds_features(spec: Mapping[str, Any]):
  """The ``tfds.features.FeaturesDict`` of a spec (latents as raw float32 bytes)."""
  import tensorflow_datasets as tfds

  out = {}
  for key, entry in validate_features_spec(spec).items():
    if entry["type"] == "image":
      out[key] = tfds.features.Image(shape=tuple(entry["shape"]), dtype=np.uint8, encoding_format="png")
    elif entry["type"] == "tensor":
      out[key] = tfds.features.Tensor(
          shape=tuple(entry["shape"]), dtype=np.float32, encoding=tfds.features.Encoding.BYTES
      )
    else:
      out[key] = tfds.features.Scalar(dtype=np.dtype(entry["dtype"]))
  return tfds.features.FeaturesDict(out)


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of one uint8 (H, W, C) image (deterministic: same pixels, same bytes)."""
  from PIL import Image

  image = np.ascontiguousarray(image)
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  buf = io.BytesIO()
  pil.save(buf, format="PNG")
  return buf.getvalue()


def open_record_writer(path: str):
  """An array_record writer for random access (one record per chunk, as tfds writes)."""
  from array_record.python import array_record_module

  return array_record_module.ArrayRecordWriter(path, "group_size:1")


def read_records(path: str) -> list[bytes]:
  from array_record.python import array_record_module

  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.read_all()
  finally:
    reader.close()
