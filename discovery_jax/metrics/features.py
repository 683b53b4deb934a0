"""Image -> feature-vector extractors for the evaluation metrics (jitted, batched).

* ``inception_extractor``: FID's pool3 features (2048-d) with pytorch-fid's
  preprocessing: images in [0, 1], bilinear resize to 299x299 exactly as
  ``F.interpolate(mode='bilinear', align_corners=False)`` (no antialiasing), then
  ``2x - 1``. Needs the converted weights (``python -m convert.inception``), read
  here by ``load_inception`` without torch.
* Offline stand-ins for tests and demos where the Inception weights are absent:
  ``random_conv_extractor`` (a fixed random ReLU conv net), ``random_projection_extractor``
  (a Johnson-Lindenstrauss projection of downsampled pixels) and ``pixel_extractor``.
  Their weights come from ``numpy.random.default_rng(seed)`` (seed 0 by default) and
  their SHA-256 is recorded in ``info``. Distances computed on them are NOT comparable
  with Inception-based FID/KID values; they rank and sanity-check, nothing more.

An extractor is called on NHWC images: uint8 in [0, 255], or floats in
``value_range`` (the project's images are in [-1, 1], the default). Floats are
clipped and, by default, quantized to 8 bits, so that features of in-memory samples
equal those of the same samples saved as PNG, which is how FID is usually computed.
Batches are padded to a fixed size, so there is one compilation per image shape and a
sample's features do not depend on the batch it was in.
"""

from __future__ import annotations

import dataclasses
import functools

import json
import os
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from discovery_jax import fileio
from discovery_jax.models import inception

INCEPTION_SIZE = 299
INCEPTION_FORMAT = "discovery_jax.fid_inception_v3"
INCEPTION_VARIABLES_DIR = "variables"
INCEPTION_METADATA_FILE = "metadata.json"
_HIGHEST = jax.lax.Precision.HIGHEST

# ---------------------------------------------------------------------------
# Preprocessing.


def to_unit_interval(images: Any, value_range: tuple[float, float] = (-1.0, 1.0), quantize: bool = True) -> np.ndarray:
  """NHWC images -> float32 in [0, 1] with 3 channels (grayscale is repeated).

  uint8 input is read as [0, 255] whatever ``value_range`` says. ``quantize`` rounds
  floats to the 256 levels of an 8-bit image file.
  """
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):  # a bare (H, W, C) image is refused, not guessed.
    raise ValueError(f"expected NHWC images with 1 or 3 channels, got shape {x.shape}")
  if x.dtype == np.uint8:
    x = x.astype(np.float32) / 255.0
  else:
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
      raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    x = np.clip((x.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    if quantize:
      x = np.round(x * 255.0) / 255.0
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  return x.astype(np.float32, copy=False)


def torch_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of torch's 1-D bilinear resize with ``align_corners=False``.

  Source coordinate ``(i + 0.5) * in / out - 0.5``, clamped at 0, and the upper
  neighbour clamped at the last pixel; no antialiasing when shrinking (as torch).
  The rounding follows torch's CPU kernel (a float32 scale, the coordinate formed in
  double and stored as float32): other roundings differ by up to 1e-4 at 1024 pixels.
  """
  f32 = np.float32
  scale = np.float64(f32(in_size) / f32(out_size))
  src = np.maximum((scale * (np.arange(out_size) + 0.5) - 0.5).astype(f32), f32(0))
  i0 = np.minimum(src.astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = (src - i0.astype(f32)).astype(f32)
  m = np.zeros((out_size, in_size), f32)
  rows = np.arange(out_size)
  np.add.at(m, (rows, i0), f32(1) - w1)
  np.add.at(m, (rows, i1), w1)
  return m


def resize_bilinear_torch(x: jax.Array, size: int) -> jax.Array:
  """NHWC -> (N, size, size, C), matching ``F.interpolate(bilinear, align_corners=False)``."""
  n, h, w, c = x.shape
  if (h, w) == (size, size):
    return x
  mh = jnp.asarray(torch_bilinear_matrix(h, size))
  mw = jnp.asarray(torch_bilinear_matrix(w, size))
  x = jnp.einsum("oh,nhwc->nowc", mh, x, precision=_HIGHEST)
  return jnp.einsum("pw,nowc->nopc", mw, x, precision=_HIGHEST)


def _resize_area(x: jax.Array, size: int | None) -> jax.Array:
  """Antialiased resize for the stand-in extractors (their exact filter does not matter)."""
  if size is None or x.shape[1:3] == (size, size):
    return x
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "linear", antialias=True, precision=_HIGHEST)


# ---------------------------------------------------------------------------
# The extractor type.


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureExtractor:
  """A jitted map from a batch of [0, 1] NHWC images to (B, dim) features, plus batching.

  ``apply`` takes float32 (B, H, W, 3) in [0, 1]; ``__call__`` handles value ranges,
  grayscale, quantization, batching and padding, and returns float32 numpy (N, dim).
  ``info`` describes the extractor (name, seed, weights hash) for reports.
  """

  name: str
  dim: int | None
  apply: Callable[[jax.Array], jax.Array]
  batch_size: int = 64
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __call__(
      self,
      images: Any,
      *,
      value_range: tuple[float, float] = (-1.0, 1.0),
      quantize: bool = True,
      batch_size: int | None = None,
  ) -> np.ndarray:
    """``images``: an NHWC array (numpy or jax), or an iterable of such batches."""
    bs = int(batch_size or self.batch_size)
    if bs < 1:
      raise ValueError(f"batch_size must be >= 1, got {bs}")
    if hasattr(images, "shape") and hasattr(images, "__getitem__"):
      chunks: Iterable[Any] = (images[i : i + bs] for i in range(0, int(images.shape[0]), bs))
    else:
      chunks = images
    outs = []
    for chunk in chunks:
      x = to_unit_interval(chunk, value_range, quantize)
      for i in range(0, x.shape[0], bs):
        part = x[i : i + bs]
        n = part.shape[0]
        if n < bs:  # pad: one compiled shape for every batch.
          part = np.concatenate([part, np.zeros((bs - n,) + part.shape[1:], part.dtype)])
        outs.append(np.asarray(self.apply(jnp.asarray(part)))[:n])
    if not outs:
      raise ValueError("no images given")
    return np.concatenate(outs).astype(np.float32, copy=False)

  def describe(self) -> dict:
    return {"name": self.name, "dim": self.dim, **dict(self.info)}


def _weights_hash(arrays: Iterable[np.ndarray]) -> str:
  return fileio.sha256_arrays(arrays)[:16]


# ---------------------------------------------------------------------------
# Inception (FID).


def inception_extractor(
    variables: Mapping[str, Any], *, batch_size: int = 50, precision: str = "highest"
) -> FeatureExtractor:
  """pool3 features of FID's Inception-v3 for ``variables`` from ``load_inception``."""
  module = inception.FIDInceptionV3(precision=precision)

  @jax.jit
  def run(variables, x):
    x = resize_bilinear_torch(x, INCEPTION_SIZE)
    return module.apply(variables, 2.0 * x - 1.0)

  # Weights are a jit argument, not a constant baked into the compiled program.
  variables = jax.device_put(dict(variables))
  return FeatureExtractor(
      "inception_pool3",
      inception.POOL3_DIM,
      functools.partial(run, variables),
      batch_size,
      {"resize": INCEPTION_SIZE, "precision": precision},
  )


def read_inception_metadata(path: str) -> dict:
  meta_path = os.path.join(path, INCEPTION_METADATA_FILE)
  if not os.path.isfile(meta_path):
    from discovery_jax.checkpoint import CheckpointError

    raise CheckpointError(
        f"{path} is not a converted FID Inception folder ({INCEPTION_METADATA_FILE} is missing); "
        "convert pytorch-fid's weights with: python -m convert.inception "
        "--pth=pt_inception-2015-12-05-6726825d.pth --output=DIR"
    )
  with open(meta_path) as f:
    return json.load(f)


def load_inception(path: str) -> dict:
  """The ``{'params', 'batch_stats'}`` tree written by ``convert.inception`` (no torch)."""
  import orbax.checkpoint as ocp
  from discovery_jax.checkpoint import CheckpointError, quiet_orbax

  meta = read_inception_metadata(path)
  if meta.get("format") != INCEPTION_FORMAT:
    raise CheckpointError(f"{path}: format {meta.get('format')!r} is not {INCEPTION_FORMAT!r}")
  var_path = os.path.join(os.path.abspath(path), INCEPTION_VARIABLES_DIR)
  if not os.path.isdir(var_path):
    raise CheckpointError(f"{path}: {INCEPTION_VARIABLES_DIR}/ is missing")
  try:
    with quiet_orbax():
      return ocp.StandardCheckpointer().restore(var_path, inception.variable_shapes())
  except Exception as e:  # orbax raises many types; name the folder and the cause.
    raise CheckpointError(f"{path}: cannot restore the Inception weights: {e}") from e


def load_inception_extractor(path: str, **kwargs: Any) -> FeatureExtractor:
  extractor = inception_extractor(load_inception(path), **kwargs)
  meta = read_inception_metadata(path)
  info = {
      **extractor.info,
      "weights": os.path.abspath(path),
      "official_fid_weights": bool(meta.get("official_fid_weights", False)),
  }
  return dataclasses.replace(extractor, info=info)


# ---------------------------------------------------------------------------
# Offline stand-ins.


def random_conv_extractor(
    seed: int = 0, *, size: int = 64, widths: tuple[int, ...] = (32, 64, 128), batch_size: int = 64
) -> FeatureExtractor:
  """A frozen random ReLU conv net: 3x3 stride-2 convs with He-scaled Gaussian weights.

  Features: the spatial mean of every stage's activations plus a 2x2 grid of the last
  stage's (dim = sum(widths) + 4 * widths[-1]): texture/colour statistics with a
  little layout, a cheap perceptual proxy when no trained network is available.
  """
  rng = np.random.default_rng(seed)
  kernels, cin = [], 3
  for cout in widths:
    kernels.append((rng.standard_normal((3, 3, cin, cout)) * np.sqrt(2.0 / (9 * cin))).astype(np.float32))
    cin = cout
  if size // 2 ** len(widths) < 2:
    raise ValueError(f"size {size} is too small for {len(widths)} stride-2 stages")

  @jax.jit
  def run(kernels, x):
    h = _resize_area(2.0 * x - 1.0, size)
    pooled = []
    for k in kernels:
      h = jax.nn.relu(
          jax.lax.conv_general_dilated(
              h, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HIGHEST
          )
      )
      pooled.append(jnp.mean(h, axis=(1, 2)))
    n, hh, ww, c = h.shape
    grid = h[:, : hh // 2 * 2, : ww // 2 * 2].reshape(n, 2, hh // 2, 2, ww // 2, c).mean(axis=(2, 4))
    return jnp.concatenate(pooled + [grid.reshape(n, 4 * c)], axis=-1)

  dim = int(sum(widths) + 4 * widths[-1])
  info = {"seed": seed, "size": size, "widths": list(widths), "weights_sha256": _weights_hash(kernels)}
  return FeatureExtractor(
      "random_conv", dim, functools.partial(run, [jnp.asarray(k) for k in kernels]), batch_size, info
  )


def random_projection_extractor(
    seed: int = 0, *, dim: int = 256, size: int = 32, batch_size: int = 256
) -> FeatureExtractor:
  """Pixels at ``size`` x ``size`` in [-1, 1], flattened and projected by a fixed Gaussian
  matrix / sqrt(D): Euclidean distances are kept up to ~1/sqrt(dim) relative error."""
  d_in = size * size * 3
  proj = (np.random.default_rng(seed).standard_normal((d_in, dim)) / np.sqrt(d_in)).astype(np.float32)

  @jax.jit
  def run(proj, x):
    h = _resize_area(2.0 * x - 1.0, size).reshape(x.shape[0], -1)
    return jnp.dot(h, proj, precision=_HIGHEST)

  info = {"seed": seed, "size": size, "weights_sha256": _weights_hash([proj])}
  return FeatureExtractor("random_projection", dim, functools.partial(run, jnp.asarray(proj)), batch_size, info)


def pixel_extractor(size: int | None = 64, *, batch_size: int = 256) -> FeatureExtractor:
  """Raw pixels in [-1, 1] (resized to ``size`` x ``size``, or native when None), flattened."""

  @jax.jit
  def run(x):
    return _resize_area(2.0 * x - 1.0, size).reshape(x.shape[0], -1)

  dim = None if size is None else size * size * 3
  return FeatureExtractor("pixels", dim, run, batch_size, {"size": size})


def learned_extractor(
    path: str | None = None, *, image_shape: tuple[int, ...] | None = None, batch_size: int = 256
) -> FeatureExtractor:
  """The project's learned feature network (``metrics.feature_net``; default: the
  committed one). Grayscale of the input (channel mean), at the net's own size:
  images of another size are refused, not resized (features of resampled images are
  not the ones the net was trained on)."""
  from discovery_jax.metrics import feature_net

  module, params, meta = feature_net.load(path)
  want = feature_net.image_shape(meta)
  if image_shape is not None and tuple(image_shape[:2]) != want[:2]:
    raise ValueError(
        f"the feature network {path or feature_net.ASSET_DIR} takes {want[0]}x{want[1]} images, these are "
        f"{image_shape[0]}x{image_shape[1]}; use evaluate.features='inception' (with inception_path) or "
        "'random_conv'"
    )

  @jax.jit
  def run(params, x):
    gray = 2.0 * jnp.mean(x, axis=-1, keepdims=True) - 1.0
    return module.apply({"params": params}, gray)[0]

  info = {
      "weights_sha256": meta["weights_sha256"][:16],
      "classes": len(meta.get("class_names", [])),
      "test_accuracy": meta.get("test_accuracy", {}).get("overall"),
      "image_shape": list(want),
  }
  return FeatureExtractor(
      "learned", int(meta["architecture"]["embed_dim"]), functools.partial(run, params), batch_size, info
  )


def model_extractor(
    eps_fn: Any, schedule: Any, *, timesteps: tuple[int, ...] = (0, 50, 150), batch_size: int = 64
) -> FeatureExtractor:
  """The base model's own view of an image: its middle-block activations (h-space),
  spatial mean and standard deviation per channel, for the image noised to each of
  ``timesteps`` with one fixed noise draw (so a feature depends on the image alone).
  The frozen model knows its own domain better than any stand-in network, which is
  what a mode-interference guard needs to see. ``eps_fn``: a ``diffusion.EpsFn``."""
  alphas = np.asarray(schedule.alphas_cumprod, np.float64)
  for t in timesteps:
    if not 0 <= int(t) < len(alphas):
      raise ValueError(f"model feature timesteps must lie in [0, {len(alphas)}), got {tuple(timesteps)}")
  channels = int(eps_fn.module.in_channels)
  if channels not in (1, 3):
    raise ValueError(f"model features need a 1- or 3-channel model, this one takes {channels}")

  @jax.jit
  def run(params, x):
    x0 = 2.0 * x[..., :channels] - 1.0
    noise = jax.random.normal(jax.random.key(0), x0.shape[1:], x0.dtype)
    feats = []
    for t in timesteps:
      a = float(alphas[int(t)])
      xt = np.sqrt(a) * x0 + (np.sqrt(1.0 - a) * noise if t > 0 else 0.0)
      _, mid = eps_fn.apply(params, xt, jnp.full((x0.shape[0],), int(t), jnp.int32), with_mid=True)
      mid = mid.astype(jnp.float32)
      feats += [jnp.mean(mid, axis=(1, 2)), jnp.std(mid, axis=(1, 2))]
    return jnp.concatenate(feats, axis=-1)

  info = {"timesteps": [int(t) for t in timesteps], "model": type(eps_fn.module).__name__}
  return FeatureExtractor("model", None, functools.partial(run, eps_fn.params), batch_size, info)


EXTRACTORS = ("learned", "inception", "random_conv", "random_projection", "pixels")


def create_extractor(
    name: str,
    *,
    inception_path: str | None = None,
    feature_net_path: str | None = None,
    image_shape: tuple[int, ...] | None = None,
    **kwargs: Any,
) -> FeatureExtractor:
  """By name, for configs: 'learned' (the project's feature network), 'inception'
  (needs ``inception_path``), 'random_conv', 'random_projection' or 'pixels';
  ``kwargs`` go to the constructor."""
  if name == "learned":
    return learned_extractor(feature_net_path, image_shape=image_shape, **kwargs)
  if name == "inception":
    if not inception_path:
      raise ValueError(
          "the 'inception' extractor needs inception_path= (a folder written by "
          "`python -m convert.inception`); use 'random_conv' where no weights exist"
      )
    return load_inception_extractor(inception_path, **kwargs)
  makers = {
      "random_conv": random_conv_extractor,
      "random_projection": random_projection_extractor,
      "pixels": pixel_extractor,
  }
  if name not in makers:
    raise ValueError(f"unknown feature extractor {name!r}; choose from {list(EXTRACTORS)}")
  return makers[name](**kwargs)
