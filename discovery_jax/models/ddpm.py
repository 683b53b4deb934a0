"""The original DDPM UNet (Ho et al. 2020; the ``DDPM`` class of ermongroup/ddim and
DiscoveryDiff), in NHWC.

Submodules carry the PyTorch module names (``down.0.block.1``, ``mid.attn_1``, ...),
so the parameter tree joined with '.' is the PyTorch state dict (with ``weight``
read as ``kernel`` / ``scale``). ``convert`` relies on this.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from discovery_jax.models import layers

GN_EPS = 1e-6


class ResnetBlock(nn.Module):
  out_channels: int
  dropout: float
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, deterministic: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, precision=self.precision)
    h = nn.swish(layers.apply_norm(layers.group_norm(GN_EPS, "norm1"), x))
    h = layers.conv(self.out_channels, 3, name="conv1", **kw)(h)
    h = h + layers.dense(self.out_channels, name="temb_proj", **kw)(nn.swish(temb))[:, None, None, :]
    h = nn.swish(layers.apply_norm(layers.group_norm(GN_EPS, "norm2"), h))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = layers.conv(self.out_channels, 3, name="conv2", **kw)(h)
    if x.shape[-1] != self.out_channels:
      x = layers.conv(self.out_channels, 1, name="nin_shortcut", **kw)(x)
    return x + h


class AttnBlock(nn.Module):
  """Self-attention over all pixels; one head over all channels unless
  ``head_channels`` > 0 (diffusers' multi-head ``attention_head_dim``)."""

  head_channels: int
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, precision=self.precision)
    b, height, width, c = x.shape
    heads = 1 if self.head_channels <= 0 else c // self.head_channels
    hn = layers.apply_norm(layers.group_norm(GN_EPS, "norm"), x)
    q, k, v = (
        layers.conv(c, 1, name=n, **kw)(hn).reshape(b, height * width, heads, c // heads) for n in ("q", "k", "v")
    )
    o = layers.multihead_attention(q, k, v, precision=self.precision)
    o = o.reshape(b, height, width, c)
    return x + layers.conv(c, 1, name="proj_out", **kw)(o)


class Downsample(nn.Module):
  with_conv: bool
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if not self.with_conv:
      return layers.avg_pool2(x)
    # torch: F.pad(x, (0, 1, 0, 1)) then a stride-2 conv without padding.
    return layers.conv(
        x.shape[-1],
        3,
        stride=2,
        padding=((0, 1), (0, 1)),
        name="conv",
        dtype=self.dtype,
        precision=self.precision,
    )(x)


class DDPMUNet(nn.Module):
  """DDPM UNet. ``__call__(x, t)`` maps NHWC ``x`` in [-1, 1] and timesteps ``t``
  of shape (N,) to the eps prediction (``out_ch`` channels, float32)."""

  image_size: int
  in_channels: int = 3
  out_ch: int = 3
  ch: int = 128
  ch_mult: Sequence[int] = (1, 1, 2, 2, 4, 4)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.0
  resamp_with_conv: bool = True
  attn_head_channels: int = -1
  dtype: Any = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      t: jax.Array,
      *,
      edit_h: jax.Array | None = None,
      return_mid: bool = False,
      train: bool = False,
  ):
    """Returns ``out``, or ``(out, mid_h)`` when ``return_mid``.

    ``mid_h`` is the middle-block output (the paper's h-space, NHWC). If
    ``edit_h`` is given, the decoder starts from it instead (replacement).
    """
    kw = dict(dtype=self.dtype, precision=self.precision)
    det = not train
    num_levels = len(self.ch_mult)
    temb_ch = 4 * self.ch
    t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))

    emb = layers.sinusoidal_embedding(t, self.ch, flip_sin_to_cos=False, freq_shift=1)
    temb = layers.dense(temb_ch, name="temb.dense.0", **kw)(emb)
    temb = layers.dense(temb_ch, name="temb.dense.1", **kw)(nn.swish(temb))

    hs = [layers.conv(self.ch, 3, name="conv_in", **kw)(x.astype(self.dtype))]
    res = self.image_size
    for i in range(num_levels):
      for j in range(self.num_res_blocks):
        h = ResnetBlock(self.ch * self.ch_mult[i], self.dropout, name=f"down.{i}.block.{j}", **kw)(hs[-1], temb, det)
        if res in self.attn_resolutions:
          h = AttnBlock(self.attn_head_channels, name=f"down.{i}.attn.{j}", **kw)(h)
        hs.append(h)
      if i != num_levels - 1:
        hs.append(Downsample(self.resamp_with_conv, name=f"down.{i}.downsample", **kw)(hs[-1]))
        res //= 2

    c_mid = hs[-1].shape[-1]
    h = ResnetBlock(c_mid, self.dropout, name="mid.block_1", **kw)(hs[-1], temb, det)
    h = AttnBlock(self.attn_head_channels, name="mid.attn_1", **kw)(h)
    h = ResnetBlock(c_mid, self.dropout, name="mid.block_2", **kw)(h, temb, det)
    mid_h = h
    if edit_h is not None:
      h = edit_h.astype(self.dtype)

    for i in reversed(range(num_levels)):
      for j in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = ResnetBlock(self.ch * self.ch_mult[i], self.dropout, name=f"up.{i}.block.{j}", **kw)(h, temb, det)
        if res in self.attn_resolutions:
          h = AttnBlock(self.attn_head_channels, name=f"up.{i}.attn.{j}", **kw)(h)
      if i != 0:
        h = layers.Upsample(self.resamp_with_conv, name=f"up.{i}.upsample", **kw)(h)
        res *= 2
    assert not hs

    h = nn.swish(layers.apply_norm(layers.group_norm(GN_EPS, "norm_out"), h))
    out = layers.conv(self.out_ch, 3, name="conv_out", **kw)(h).astype(jnp.float32)
    if return_mid:
      return out, mid_h.astype(jnp.float32)
    return out
