"""Inception-v3 as the FID network (pytorch-fid's ``fid_inception_v3``), NHWC, no I/O.

This is the TensorFlow FID graph (``inception-2015-12-05``) as ported to PyTorch by
pytorch-fid, not torchvision's ImageNet Inception: the FID variant differs in its
average pools, which exclude the zero padding (``count_include_pad=False``, as
TensorFlow's do), and in the pool branch of the last block (``Mixed_7c``), which is
a 3x3 MAX pool. Getting either wrong shifts every FID value.

Module names mirror the keys of ``pt_inception-2015-12-05-6726825d.pth``, so the
tensor ``Mixed_5b.branch1x1.conv.weight`` lives at Flax path
``('Mixed_5b', 'branch1x1', 'conv', 'kernel')``. Batch norm runs in inference mode:
``weight``/``bias`` are ``params`` ``scale``/``bias``, ``running_mean``/``running_var``
are the ``batch_stats`` collection's ``mean``/``var`` (kept unfolded so that the
conversion is a pure renaming and the weights stay inspectable).

``FIDInceptionV3()(x)`` takes NHWC images already scaled to [-1, 1] (any size >= 75;
FID uses 299x299, see ``discovery_jax.features``) and returns the 2048-d ``pool3``
features. The classifier (``fc``, 1008 classes) is not part of the FID features and
is not built.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from discovery_jax.models import layers

POOL3_DIM = 2048
MIN_SIZE = 75  # the smallest input for which every VALID conv/pool has an output.
BN_EPSILON = 1e-3


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class BasicConv2d(nn.Module):
  """conv (no bias) -> batch norm (eps 1e-3, running statistics) -> ReLU."""

  features: int
  kernel: int | Sequence[int]
  stride: int = 1
  padding: int | Sequence[int] = 0
  precision: str = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = _pair(self.padding)
    x = nn.Conv(
        self.features,
        _pair(self.kernel),
        strides=(self.stride, self.stride),
        padding=((ph, ph), (pw, pw)),
        use_bias=False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        precision=layers.PRECISIONS[self.precision],
        name="conv",
    )(x)
    x = nn.BatchNorm(
        use_running_average=True, epsilon=BN_EPSILON, dtype=jnp.float32, param_dtype=jnp.float32, name="bn"
    )(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
  """3x3/1 average pool over the valid pixels only (TensorFlow's, and FID's, border rule)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_same(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  """Mixed_5b/5c/5d: 1x1, 5x5, double 3x3 and pooled branches (35x35 grid)."""

  pool_features: int
  precision: str = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda f, k, p, name: BasicConv2d(f, k, padding=p, precision=self.precision, name=name)
    b1 = conv(64, 1, 0, "branch1x1")(x)
    b5 = conv(48, 1, 0, "branch5x5_1")(x)
    b5 = conv(64, 5, 2, "branch5x5_2")(b5)
    b3 = conv(64, 1, 0, "branch3x3dbl_1")(x)
    b3 = conv(96, 3, 1, "branch3x3dbl_2")(b3)
    b3 = conv(96, 3, 1, "branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, 1, 0, "branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: grid reduction 35 -> 17."""

  precision: str = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda f, k, s, p, name: BasicConv2d(f, k, s, p, precision=self.precision, name=name)
    b3 = conv(384, 3, 2, 0, "branch3x3")(x)
    bd = conv(64, 1, 1, 0, "branch3x3dbl_1")(x)
    bd = conv(96, 3, 1, 1, "branch3x3dbl_2")(bd)
    bd = conv(96, 3, 2, 0, "branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e: factorised 7x7 branches (17x17 grid)."""

  channels_7x7: int
  precision: str = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    conv = lambda f, k, p, name: BasicConv2d(f, k, padding=p, precision=self.precision, name=name)
    b1 = conv(192, 1, 0, "branch1x1")(x)
    b7 = conv(c7, 1, 0, "branch7x7_1")(x)
    b7 = conv(c7, (1, 7), (0, 3), "branch7x7_2")(b7)
    b7 = conv(192, (7, 1), (3, 0), "branch7x7_3")(b7)
    bd = conv(c7, 1, 0, "branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), (3, 0), "branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), (0, 3), "branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), (3, 0), "branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), (0, 3), "branch7x7dbl_5")(bd)
    bp = conv(192, 1, 0, "branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: grid reduction 17 -> 8."""

  precision: str = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda f, k, s, p, name: BasicConv2d(f, k, s, p, precision=self.precision, name=name)
    b3 = conv(192, 1, 1, 0, "branch3x3_1")(x)
    b3 = conv(320, 3, 2, 0, "branch3x3_2")(b3)
    b7 = conv(192, 1, 1, 0, "branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), 1, (0, 3), "branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), 1, (3, 0), "branch7x7x3_3")(b7)
    b7 = conv(192, 3, 2, 0, "branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (avg-pool branch) and Mixed_7c (max-pool branch, the FID graph's quirk)."""

  pool: str = "avg"
  precision: str = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda f, k, p, name: BasicConv2d(f, k, padding=p, precision=self.precision, name=name)
    b1 = conv(320, 1, 0, "branch1x1")(x)
    b3 = conv(384, 1, 0, "branch3x3_1")(x)
    b3 = jnp.concatenate(
        [conv(384, (1, 3), (0, 1), "branch3x3_2a")(b3), conv(384, (3, 1), (1, 0), "branch3x3_2b")(b3)], axis=-1
    )
    bd = conv(448, 1, 0, "branch3x3dbl_1")(x)
    bd = conv(384, 3, 1, "branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
        [conv(384, (1, 3), (0, 1), "branch3x3dbl_3a")(bd), conv(384, (3, 1), (1, 0), "branch3x3dbl_3b")(bd)], axis=-1
    )
    pooled = _max_pool_3x3_same(x) if self.pool == "max" else _avg_pool_3x3_same(x)
    bp = conv(192, 1, 0, "branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """NHWC images in [-1, 1] -> (N, 2048) pool3 features, in float32.

  ``precision`` defaults to 'highest' so that GPUs do not drop to TF32 convolutions,
  which would move FID values away from the reference implementation's.
  """

  precision: str = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"FIDInceptionV3 expects NHWC images with 3 channels, got shape {x.shape}")
    if min(x.shape[1], x.shape[2]) < MIN_SIZE:
      raise ValueError(
          f"FIDInceptionV3 needs images of at least {MIN_SIZE}x{MIN_SIZE}, got "
          f"{x.shape[1]}x{x.shape[2]} (FID resizes to 299x299 first)"
      )
    p = self.precision
    x = jnp.asarray(x, jnp.float32)
    x = BasicConv2d(32, 3, 2, precision=p, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, 3, precision=p, name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, 3, padding=1, precision=p, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv2d(80, 1, precision=p, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, 3, precision=p, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, precision=p, name="Mixed_5b")(x)
    x = InceptionA(64, precision=p, name="Mixed_5c")(x)
    x = InceptionA(64, precision=p, name="Mixed_5d")(x)
    x = InceptionB(precision=p, name="Mixed_6a")(x)
    x = InceptionC(128, precision=p, name="Mixed_6b")(x)
    x = InceptionC(160, precision=p, name="Mixed_6c")(x)
    x = InceptionC(160, precision=p, name="Mixed_6d")(x)
    x = InceptionC(192, precision=p, name="Mixed_6e")(x)
    x = InceptionD(precision=p, name="Mixed_7a")(x)
    x = InceptionE("avg", precision=p, name="Mixed_7b")(x)
    x = InceptionE("max", precision=p, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))  # pool3: adaptive average pool to 1x1.


def variable_shapes(module: nn.Module | None = None) -> Any:
  """The ``{'params', 'batch_stats'}`` tree of ShapeDtypeStructs (no computation)."""
  module = module if module is not None else FIDInceptionV3()
  x = jax.ShapeDtypeStruct((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
