"""The improved-DDPM / guided-diffusion ``UNetModel`` (Nichol & Dhariwal), in NHWC.

Submodules carry the PyTorch module names (``input_blocks.9.1``,
``output_blocks.3.2``, ``in_layers.0``, ...), so the parameter tree joined with
'.' is the PyTorch state dict (with ``weight`` read as ``kernel`` / ``scale``).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from discovery_jax.models import layers

GN_EPS = 1e-5  # torch's GroupNorm default, used by guided-diffusion's GroupNorm32.


class ResBlock(nn.Module):
  out_channels: int
  use_scale_shift_norm: bool
  dropout: float
  dtype: Any
  precision: Any
  up: bool = False
  down: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, deterministic: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, precision=self.precision)
    h = nn.silu(layers.apply_norm(layers.group_norm(GN_EPS, "in_layers.0"), x))
    if self.up:
      h, x = layers.upsample_nearest(h), layers.upsample_nearest(x)
    elif self.down:
      h, x = layers.avg_pool2(h), layers.avg_pool2(x)
    h = layers.conv(self.out_channels, 3, name="in_layers.2", **kw)(h)

    emb_features = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
    emb_out = layers.dense(emb_features, name="emb_layers.1", **kw)(nn.silu(emb))[:, None, None, :]
    out_norm = layers.group_norm(GN_EPS, "out_layers.0")
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(emb_out, 2, axis=-1)
      h = layers.apply_norm(out_norm, h) * (1 + scale) + shift
    else:
      h = layers.apply_norm(out_norm, h + emb_out)
    h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=deterministic)
    h = layers.conv(self.out_channels, 3, name="out_layers.3", zero_init=True, **kw)(h)

    if x.shape[-1] != self.out_channels:
      x = layers.conv(self.out_channels, 1, name="skip_connection", **kw)(x)
    return x + h


class AttentionBlock(nn.Module):
  """Multi-head self-attention with a fused qkv projection.

  Legacy order (``use_new_attention_order=False``, every released checkpoint):
  qkv channel ``h*3d + s*d + c`` (heads outermost). New order: ``s*C + h*d + c``.
  """

  num_heads: int
  use_new_attention_order: bool
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, precision=self.precision)
    b, height, width, c = x.shape
    heads, d = self.num_heads, c // self.num_heads
    xn = layers.apply_norm(layers.group_norm(GN_EPS, "norm"), x).reshape(b, height * width, c)
    qkv = layers.dense(3 * c, name="qkv", **kw)(xn)
    if self.use_new_attention_order:
      qkv = qkv.reshape(b, height * width, 3, heads, d)
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
      qkv = qkv.reshape(b, height * width, heads, 3, d)
      q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
    a = layers.multihead_attention(q, k, v, precision=self.precision).reshape(b, height * width, c)
    out = layers.dense(c, name="proj_out", zero_init=True, **kw)(a)
    return x + out.reshape(b, height, width, c)


class Downsample(nn.Module):
  use_conv: bool
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.use_conv:  # stride-2 3x3 conv with padding 1 on every side.
      return layers.conv(x.shape[-1], 3, stride=2, name="op", dtype=self.dtype, precision=self.precision)(x)
    return layers.avg_pool2(x)


class IDDPMUNet(nn.Module):
  """guided-diffusion UNetModel without class conditioning.

  ``attention_ds`` holds downsample rates (``image_size // resolution``), as the
  PyTorch constructor does; ``create_model`` converts resolutions to rates.
  """

  image_size: int
  in_channels: int = 3
  model_channels: int = 128
  out_channels: int = 6
  num_res_blocks: int = 1
  attention_ds: Sequence[int] = (16,)
  channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4)
  num_heads: int = 4
  num_head_channels: int = 64
  num_heads_upsample: int = -1
  use_scale_shift_norm: bool = True
  resblock_updown: bool = True
  use_new_attention_order: bool = False
  conv_resample: bool = True
  dropout: float = 0.0
  dtype: Any = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  def _heads(self, channels: int, upsample: bool) -> int:
    if self.num_head_channels != -1:
      return channels // self.num_head_channels
    if upsample and self.num_heads_upsample != -1:
      return self.num_heads_upsample
    return self.num_heads

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
    """Returns ``out`` (eps in the first ``in_channels`` channels, then the
    learned-variance channels), or ``(out, mid_h)`` when ``return_mid``."""
    kw = dict(dtype=self.dtype, precision=self.precision)
    det = not train
    mc = self.model_channels
    t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))

    emb = layers.sinusoidal_embedding(t, mc, flip_sin_to_cos=True, freq_shift=0)
    emb = layers.dense(4 * mc, name="time_embed.0", **kw)(emb)
    emb = layers.dense(4 * mc, name="time_embed.2", **kw)(nn.silu(emb))

    def res_block(out_channels, name, **updown):
      return ResBlock(out_channels, self.use_scale_shift_norm, self.dropout, name=name, **updown, **kw)

    def attention(channels, name, upsample):
      return AttentionBlock(self._heads(channels, upsample), self.use_new_attention_order, name=name, **kw)

    h = layers.conv(mc, 3, name="input_blocks.0.0", **kw)(x.astype(self.dtype))
    hs = [h]
    block, ds = 1, 1
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        h = res_block(mult * mc, f"input_blocks.{block}.0")(h, emb, det)
        if ds in self.attention_ds:
          h = attention(h.shape[-1], f"input_blocks.{block}.1", upsample=False)(h)
        hs.append(h)
        block += 1
      if level != len(self.channel_mult) - 1:
        name = f"input_blocks.{block}.0"
        if self.resblock_updown:
          h = res_block(h.shape[-1], name, down=True)(h, emb, det)
        else:
          h = Downsample(self.conv_resample, name=name, **kw)(h)
        hs.append(h)
        block += 1
        ds *= 2

    h = res_block(h.shape[-1], "middle_block.0")(h, emb, det)
    h = attention(h.shape[-1], "middle_block.1", upsample=False)(h)
    h = res_block(h.shape[-1], "middle_block.2")(h, emb, det)
    mid_h = h
    if edit_h is not None:
      h = edit_h.astype(self.dtype)

    block = 0
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = res_block(mult * mc, f"output_blocks.{block}.0")(h, emb, det)
        layer = 1
        if ds in self.attention_ds:
          h = attention(h.shape[-1], f"output_blocks.{block}.{layer}", upsample=True)(h)
          layer += 1
        if level and i == self.num_res_blocks:
          name = f"output_blocks.{block}.{layer}"
          if self.resblock_updown:
            h = res_block(h.shape[-1], name, up=True)(h, emb, det)
          else:
            h = layers.Upsample(self.conv_resample, name=name, **kw)(h)
          ds //= 2
        block += 1
    assert not hs

    h = nn.silu(layers.apply_norm(layers.group_norm(GN_EPS, "out.0"), h))
    out = layers.conv(self.out_channels, 3, name="out.2", zero_init=True, **kw)(h)
    out = out.astype(jnp.float32)
    if return_mid:
      return out, mid_h.astype(jnp.float32)
    return out
