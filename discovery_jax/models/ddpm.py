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


def _norm(groups: int, eps: float, name: str) -> nn.Module:
  return layers.GroupNorm(num_groups=groups, epsilon=eps, name=name)


class ResnetBlock(nn.Module):
  """DDPM's ResnetBlock, plus diffusers' ``ResnetBlock2D`` options: scale-shift
  time conditioning (``scale_shift``), 2x resampling inside the block (``resample``
  'down': average pooling, 'up': nearest, applied to both paths after norm1) and
  ``output_scale_factor``. The defaults are DDPM's block."""

  out_channels: int
  dropout: float
  dtype: Any
  precision: Any
  groups: int = 32
  eps: float = GN_EPS
  scale_shift: bool = False
  resample: str | None = None
  output_scale_factor: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, deterministic: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, precision=self.precision)
    h = nn.swish(layers.apply_norm(_norm(self.groups, self.eps, "norm1"), x))
    if self.resample == "down":
      h, x = layers.avg_pool2(h), layers.avg_pool2(x)
    elif self.resample == "up":
      h, x = layers.upsample_nearest(h), layers.upsample_nearest(x)
    h = layers.conv(self.out_channels, 3, name="conv1", **kw)(h)
    t = layers.dense(self.out_channels * (2 if self.scale_shift else 1), name="temb_proj", **kw)(nn.swish(temb))
    t = t[:, None, None, :]
    if self.scale_shift:
      scale, shift = jnp.split(t, 2, axis=-1)
      h = layers.apply_norm(_norm(self.groups, self.eps, "norm2"), h) * (1 + scale) + shift
      h = nn.swish(h)
    else:
      h = nn.swish(layers.apply_norm(_norm(self.groups, self.eps, "norm2"), h + t))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = layers.conv(self.out_channels, 3, name="conv2", **kw)(h)
    if x.shape[-1] != self.out_channels:
      x = layers.conv(self.out_channels, 1, name="nin_shortcut", **kw)(x)
    out = x + h
    return out if self.output_scale_factor == 1 else out / self.output_scale_factor


class AttnBlock(nn.Module):
  """Self-attention over all pixels; one head over all channels unless
  ``head_channels`` > 0 (diffusers' multi-head ``attention_head_dim``).
  ``groups`` = 0: no GroupNorm before the projections (diffusers' middle
  attention under scale-shift norm)."""

  head_channels: int
  dtype: Any
  precision: Any
  groups: int = 32
  eps: float = GN_EPS
  output_scale_factor: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, precision=self.precision)
    b, height, width, c = x.shape
    heads = 1 if self.head_channels <= 0 else c // self.head_channels
    hn = layers.apply_norm(_norm(self.groups, self.eps, "norm"), x) if self.groups > 0 else x
    q, k, v = (
        layers.conv(c, 1, name=n, **kw)(hn).reshape(b, height * width, heads, c // heads) for n in ("q", "k", "v")
    )
    o = layers.multihead_attention(q, k, v, precision=self.precision)
    o = o.reshape(b, height, width, c)
    out = x + layers.conv(c, 1, name="proj_out", **kw)(o)
    return out if self.output_scale_factor == 1 else out / self.output_scale_factor


class Downsample(nn.Module):
  with_conv: bool
  dtype: Any
  precision: Any
  padding: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if not self.with_conv:
      return layers.avg_pool2(x)
    # padding 0: torch F.pad(x, (0, 1, 0, 1)) then a stride-2 conv without padding (DDPM,
    # diffusers downsample_padding=0); padding 1: a stride-2 conv with padding 1.
    pad = ((0, 1), (0, 1)) if self.padding == 0 else ((1, 1), (1, 1))
    return layers.conv(
        x.shape[-1],
        3,
        stride=2,
        padding=pad,
        name="conv",
        dtype=self.dtype,
        precision=self.precision,
    )(x)


class DDPMUNet(nn.Module):
  """DDPM UNet. ``__call__(x, t)`` maps NHWC ``x`` in [-1, 1] and timesteps ``t``
  of shape (N,) to the network output (``out_ch`` channels, float32).

  The fields after ``attn_head_channels`` are the diffusers ``UNet2DModel`` options
  this family covers (docs/diffusers.md); their defaults are the original DDPM.
  ``prediction_type`` and the schedule fields do not change the network: they say
  what its output means (read by ``diffusion.eps_fn``).
  """

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
  flip_sin_to_cos: bool = False
  freq_shift: float = 1
  time_embedding_type: str = "positional"
  temb_channels: int = -1
  norm_num_groups: int = 32
  norm_eps: float = GN_EPS
  mid_attn_norm_groups: int = -1
  downsample_padding: int = 0
  use_scale_shift_norm: bool = False
  resnet_down_levels: Sequence[int] = ()
  resnet_up_levels: Sequence[int] = ()
  mid_block_scale_factor: float = 1.0
  mid_attention: bool = True
  prediction_type: str = "epsilon"
  beta_schedule: str | None = None
  beta_start: float = 1e-4
  beta_end: float = 0.02
  num_train_timesteps: int = 1000
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
    temb_ch = 4 * self.ch if self.temb_channels <= 0 else self.temb_channels
    t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
    g, e = self.norm_num_groups, self.norm_eps
    res_kw = dict(groups=g, eps=e, scale_shift=self.use_scale_shift_norm, **kw)
    attn_kw = dict(groups=g, eps=e, **kw)

    if self.time_embedding_type == "learned":
      idx = jnp.clip(jnp.asarray(t).astype(jnp.int32), 0, self.num_train_timesteps - 1)
      emb = nn.Embed(self.num_train_timesteps, self.ch, param_dtype=jnp.float32, name="temb.embed")(idx)
    else:
      emb = layers.sinusoidal_embedding(t, self.ch, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift)
    temb = layers.dense(temb_ch, name="temb.dense.0", **kw)(emb)
    temb = layers.dense(temb_ch, name="temb.dense.1", **kw)(nn.swish(temb))

    hs = [layers.conv(self.ch, 3, name="conv_in", **kw)(x.astype(self.dtype))]
    res = self.image_size
    for i in range(num_levels):
      for j in range(self.num_res_blocks):
        h = ResnetBlock(self.ch * self.ch_mult[i], self.dropout, name=f"down.{i}.block.{j}", **res_kw)(
            hs[-1], temb, det
        )
        if res in self.attn_resolutions:
          h = AttnBlock(self.attn_head_channels, name=f"down.{i}.attn.{j}", **attn_kw)(h)
        hs.append(h)
      if i != num_levels - 1:
        name = f"down.{i}.downsample"
        if i in self.resnet_down_levels:
          hs.append(
              ResnetBlock(hs[-1].shape[-1], self.dropout, resample="down", name=name, **res_kw)(hs[-1], temb, det)
          )
        else:
          hs.append(Downsample(self.resamp_with_conv, padding=self.downsample_padding, name=name, **kw)(hs[-1]))
        res //= 2

    c_mid = hs[-1].shape[-1]
    mid_kw = dict(res_kw, output_scale_factor=self.mid_block_scale_factor)
    h = ResnetBlock(c_mid, self.dropout, name="mid.block_1", **mid_kw)(hs[-1], temb, det)
    if self.mid_attention:
      mg = g if self.mid_attn_norm_groups < 0 else self.mid_attn_norm_groups
      h = AttnBlock(
          self.attn_head_channels,
          name="mid.attn_1",
          output_scale_factor=self.mid_block_scale_factor,
          **dict(attn_kw, groups=mg),
      )(h)
    h = ResnetBlock(c_mid, self.dropout, name="mid.block_2", **mid_kw)(h, temb, det)
    mid_h = h
    if edit_h is not None:
      h = edit_h.astype(self.dtype)

    for i in reversed(range(num_levels)):
      for j in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = ResnetBlock(self.ch * self.ch_mult[i], self.dropout, name=f"up.{i}.block.{j}", **res_kw)(h, temb, det)
        if res in self.attn_resolutions:
          h = AttnBlock(self.attn_head_channels, name=f"up.{i}.attn.{j}", **attn_kw)(h)
      if i != 0:
        name = f"up.{i}.upsample"
        if i in self.resnet_up_levels:
          h = ResnetBlock(h.shape[-1], self.dropout, resample="up", name=name, **res_kw)(h, temb, det)
        else:
          h = layers.Upsample(self.resamp_with_conv, name=name, **kw)(h)
        res *= 2
    assert not hs

    h = nn.swish(layers.apply_norm(_norm(g, e, "norm_out"), h))
    out = layers.conv(self.out_ch, 3, name="conv_out", **kw)(h).astype(jnp.float32)
    if return_mid:
      return out, mid_h.astype(jnp.float32)
    return out
