"""PyTorch reference UNets written from ../shared/spec/ARCHITECTURE.md, with the
original module names, so that their ``state_dict()`` has exactly the keys of the
real checkpoints. Tests first check them against the shared reference vectors
(proving them faithful), then use them to cover configurations and seeds that the
vectors do not: random weights saved in the real format, compared with the Flax
models after conversion.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid(t, dim, flip_sin_to_cos, freq_shift, dtype=torch.float32):
  """In float32 like the originals, or float64 when the network runs in float64."""
  half = dim // 2
  freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=dtype) / (half - freq_shift))
  args = t.to(dtype)[:, None] * freqs[None]
  emb = torch.cat([torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)], dim=1)
  return F.pad(emb, (0, 1)) if dim % 2 else emb


# --------------------------------------------------------------------------- DDPM


class DDPMResnetBlock(nn.Module):

  def __init__(self, cin, cout, temb_ch):
    super().__init__()
    self.norm1 = nn.GroupNorm(32, cin, eps=1e-6)
    self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
    self.temb_proj = nn.Linear(temb_ch, cout)
    self.norm2 = nn.GroupNorm(32, cout, eps=1e-6)
    self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
    if cin != cout:
      self.nin_shortcut = nn.Conv2d(cin, cout, 1)
    self.cin, self.cout = cin, cout

  def forward(self, x, temb):
    h = self.conv1(F.silu(self.norm1(x)))
    h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
    h = self.conv2(F.silu(self.norm2(h)))
    if self.cin != self.cout:
      x = self.nin_shortcut(x)
    return x + h


class DDPMAttnBlock(nn.Module):

  def __init__(self, c, head_channels=-1):
    super().__init__()
    self.norm = nn.GroupNorm(32, c, eps=1e-6)
    self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))
    self.heads = 1 if head_channels <= 0 else c // head_channels

  def forward(self, x):
    b, c, h, w = x.shape
    hn = self.norm(x)
    d = c // self.heads
    q, k, v = (m(hn).reshape(b, self.heads, d, h * w) for m in (self.q, self.k, self.v))
    logits = torch.einsum("bhdi,bhdj->bhij", q, k) * d**-0.5
    o = torch.einsum("bhij,bhdj->bhdi", logits.softmax(-1), v).reshape(b, c, h, w)
    return x + self.proj_out(o)


class DDPMDown(nn.Module):

  def __init__(self, c, with_conv):
    super().__init__()
    if with_conv:
      self.conv = nn.Conv2d(c, c, 3, stride=2)
    self.with_conv = with_conv

  def forward(self, x):
    if self.with_conv:
      return self.conv(F.pad(x, (0, 1, 0, 1)))
    return F.avg_pool2d(x, 2, 2)


class DDPMUp(nn.Module):

  def __init__(self, c, with_conv):
    super().__init__()
    if with_conv:
      self.conv = nn.Conv2d(c, c, 3, padding=1)
    self.with_conv = with_conv

  def forward(self, x):
    x = F.interpolate(x, scale_factor=2.0, mode="nearest")
    return self.conv(x) if self.with_conv else x


class TorchDDPM(nn.Module):

  def __init__(
      self,
      image_size,
      in_channels,
      out_ch,
      ch,
      ch_mult,
      num_res_blocks,
      attn_resolutions,
      resamp_with_conv=True,
      attn_head_channels=-1,
      **unused,
  ):
    super().__init__()
    self.ch, self.nrb, self.levels = ch, num_res_blocks, len(ch_mult)
    temb_ch = 4 * ch
    self.temb = nn.Module()
    self.temb.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
    self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
    in_ch_mult = (1,) + tuple(ch_mult)
    res = image_size
    self.down = nn.ModuleList()
    self.attn_down = []
    for i in range(self.levels):
      level = nn.Module()
      level.block, level.attn = nn.ModuleList(), nn.ModuleList()
      cin = ch * in_ch_mult[i]
      for _ in range(num_res_blocks):
        level.block.append(DDPMResnetBlock(cin, ch * ch_mult[i], temb_ch))
        cin = ch * ch_mult[i]
        if res in attn_resolutions:
          level.attn.append(DDPMAttnBlock(cin, attn_head_channels))
      if i != self.levels - 1:
        level.downsample = DDPMDown(cin, resamp_with_conv)
        res //= 2
      self.down.append(level)
    self.mid = nn.Module()
    self.mid.block_1 = DDPMResnetBlock(cin, cin, temb_ch)
    self.mid.attn_1 = DDPMAttnBlock(cin, attn_head_channels)
    self.mid.block_2 = DDPMResnetBlock(cin, cin, temb_ch)
    ups = []
    for i in reversed(range(self.levels)):
      level = nn.Module()
      level.block, level.attn = nn.ModuleList(), nn.ModuleList()
      cout = ch * ch_mult[i]
      skip = ch * ch_mult[i]
      for j in range(num_res_blocks + 1):
        if j == num_res_blocks:
          skip = ch * in_ch_mult[i]
        level.block.append(DDPMResnetBlock(cin + skip, cout, temb_ch))
        cin = cout
        if res in attn_resolutions:
          level.attn.append(DDPMAttnBlock(cin, attn_head_channels))
      if i != 0:
        level.upsample = DDPMUp(cin, resamp_with_conv)
        res *= 2
      ups.insert(0, level)
    self.up = nn.ModuleList(ups)
    self.norm_out = nn.GroupNorm(32, cin, eps=1e-6)
    self.conv_out = nn.Conv2d(cin, out_ch, 3, padding=1)

  def forward(self, x, t):
    temb = sinusoid(t, self.ch, False, 1, self.conv_in.weight.dtype)
    temb = self.temb.dense[1](F.silu(self.temb.dense[0](temb)))
    hs = [self.conv_in(x)]
    for i in range(self.levels):
      for j in range(self.nrb):
        h = self.down[i].block[j](hs[-1], temb)
        if len(self.down[i].attn):
          h = self.down[i].attn[j](h)
        hs.append(h)
      if i != self.levels - 1:
        hs.append(self.down[i].downsample(hs[-1]))
    h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
    mid_h = h
    for i in reversed(range(self.levels)):
      for j in range(self.nrb + 1):
        h = self.up[i].block[j](torch.cat([h, hs.pop()], dim=1), temb)
        if len(self.up[i].attn):
          h = self.up[i].attn[j](h)
      if i != 0:
        h = self.up[i].upsample(h)
    return mid_h, self.conv_out(F.silu(self.norm_out(h)))


# --------------------------------------------------------------------------- iDDPM


class IResBlock(nn.Module):

  def __init__(self, cin, cout, emb_ch, scale_shift, up=False, down=False):
    super().__init__()
    self.in_layers = nn.Sequential(nn.GroupNorm(32, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
    self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * cout if scale_shift else cout))
    self.out_layers = nn.Sequential(
        nn.GroupNorm(32, cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1)
    )
    self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
    self.scale_shift, self.up, self.down = scale_shift, up, down

  def forward(self, x, emb):
    if self.up or self.down:
      h = self.in_layers[:-1](x)
      resample = (
          (lambda z: F.interpolate(z, scale_factor=2.0, mode="nearest"))
          if self.up
          else (lambda z: F.avg_pool2d(z, 2, 2))
      )
      h, x = resample(h), resample(x)
      h = self.in_layers[-1](h)
    else:
      h = self.in_layers(x)
    e = self.emb_layers(emb)[:, :, None, None]
    if self.scale_shift:
      scale, shift = e.chunk(2, dim=1)
      h = self.out_layers[0](h) * (1 + scale) + shift
      h = self.out_layers[1:](h)
    else:
      h = self.out_layers(h + e)
    return self.skip_connection(x) + h


class IAttention(nn.Module):

  def __init__(self, c, heads, new_order):
    super().__init__()
    self.norm = nn.GroupNorm(32, c)
    self.qkv = nn.Conv1d(c, 3 * c, 1)
    self.proj_out = nn.Conv1d(c, c, 1)
    self.heads, self.new_order = heads, new_order

  def forward(self, x):
    b, c, *spatial = x.shape
    x2 = x.reshape(b, c, -1)
    qkv = self.qkv(self.norm(x2))
    length = qkv.shape[-1]
    d = c // self.heads
    if self.new_order:
      q, k, v = qkv.chunk(3, dim=1)
      q, k, v = (z.reshape(b * self.heads, d, length) for z in (q, k, v))
    else:
      q, k, v = qkv.reshape(b * self.heads, 3 * d, length).split(d, dim=1)
    scale = 1 / math.sqrt(math.sqrt(d))
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, length)
    return (x2 + self.proj_out(a)).reshape(b, c, *spatial)


class ISeq(nn.Sequential):

  def forward(self, x, emb):
    for layer in self:
      x = layer(x, emb) if isinstance(layer, IResBlock) else layer(x)
    return x


class IDown(nn.Module):

  def __init__(self, c, use_conv):
    super().__init__()
    if use_conv:
      self.op = nn.Conv2d(c, c, 3, stride=2, padding=1)
    self.use_conv = use_conv

  def forward(self, x):
    return self.op(x) if self.use_conv else F.avg_pool2d(x, 2, 2)


class IUp(nn.Module):

  def __init__(self, c, use_conv):
    super().__init__()
    if use_conv:
      self.conv = nn.Conv2d(c, c, 3, padding=1)
    self.use_conv = use_conv

  def forward(self, x):
    x = F.interpolate(x, scale_factor=2.0, mode="nearest")
    return self.conv(x) if self.use_conv else x


class TorchIDDPM(nn.Module):
  """``attention_ds`` are downsample rates, as guided-diffusion's constructor takes."""

  def __init__(
      self,
      image_size,
      in_channels,
      model_channels,
      out_channels,
      num_res_blocks,
      attention_ds,
      channel_mult,
      num_heads=1,
      num_head_channels=-1,
      num_heads_upsample=-1,
      use_scale_shift_norm=False,
      resblock_updown=False,
      use_new_attention_order=False,
      conv_resample=True,
  ):
    super().__init__()
    if num_heads_upsample == -1:
      num_heads_upsample = num_heads
    emb_ch = 4 * model_channels
    self.mc = model_channels
    self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

    def heads(c, up):
      return c // num_head_channels if num_head_channels != -1 else (num_heads_upsample if up else num_heads)

    ch = model_channels
    self.input_blocks = nn.ModuleList([ISeq(nn.Conv2d(in_channels, ch, 3, padding=1))])
    chans, ds = [ch], 1
    for level, mult in enumerate(channel_mult):
      for _ in range(num_res_blocks):
        layers = [IResBlock(ch, mult * model_channels, emb_ch, use_scale_shift_norm)]
        ch = mult * model_channels
        if ds in attention_ds:
          layers.append(IAttention(ch, heads(ch, False), use_new_attention_order))
        self.input_blocks.append(ISeq(*layers))
        chans.append(ch)
      if level != len(channel_mult) - 1:
        self.input_blocks.append(
            ISeq(
                IResBlock(ch, ch, emb_ch, use_scale_shift_norm, down=True)
                if resblock_updown
                else IDown(ch, conv_resample)
            )
        )
        chans.append(ch)
        ds *= 2
    self.middle_block = ISeq(
        IResBlock(ch, ch, emb_ch, use_scale_shift_norm),
        IAttention(ch, heads(ch, False), use_new_attention_order),
        IResBlock(ch, ch, emb_ch, use_scale_shift_norm),
    )
    self.output_blocks = nn.ModuleList()
    for level, mult in list(enumerate(channel_mult))[::-1]:
      for i in range(num_res_blocks + 1):
        layers = [IResBlock(ch + chans.pop(), model_channels * mult, emb_ch, use_scale_shift_norm)]
        ch = model_channels * mult
        if ds in attention_ds:
          layers.append(IAttention(ch, heads(ch, True), use_new_attention_order))
        if level and i == num_res_blocks:
          layers.append(
              IResBlock(ch, ch, emb_ch, use_scale_shift_norm, up=True) if resblock_updown else IUp(ch, conv_resample)
          )
          ds //= 2
        self.output_blocks.append(ISeq(*layers))
    self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

  def forward(self, x, t):
    emb = self.time_embed(sinusoid(t, self.mc, True, 0, self.out[2].weight.dtype))
    hs, h = [], x
    for blk in self.input_blocks:
      h = blk(h, emb)
      hs.append(h)
    h = self.middle_block(h, emb)
    mid_h = h
    for blk in self.output_blocks:
      h = blk(torch.cat([h, hs.pop()], dim=1), emb)
    return mid_h, self.out(h)


def randomize_(model: nn.Module, seed: int) -> None:
  """Random weights as the vectors' generator describes (every layer non-zero):
  GroupNorm weight 1 + 0.1 N(0,1), biases 0.05 N(0,1), weights N(0,1)/sqrt(fan_in)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and name.endswith("weight"):
        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
      elif name.endswith("bias"):
        p.copy_(0.05 * torch.randn(p.shape, generator=g))
      else:
        fan_in = p[0].numel()
        p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def from_model_config(cfg: dict) -> nn.Module:
  """A reference network for a (validated) discovery_jax model config."""
  if cfg["arch"] == "ddpm":
    return TorchDDPM(
        **{
            k: cfg[k]
            for k in (
                "image_size",
                "in_channels",
                "out_ch",
                "ch",
                "ch_mult",
                "num_res_blocks",
                "attn_resolutions",
                "resamp_with_conv",
                "attn_head_channels",
            )
        }
    )
  return TorchIDDPM(
      image_size=cfg["image_size"],
      in_channels=cfg["in_channels"],
      model_channels=cfg["num_channels"],
      out_channels=cfg["out_channels"],
      num_res_blocks=cfg["num_res_blocks"],
      attention_ds=tuple(cfg["image_size"] // r for r in cfg["attention_resolutions"]),
      channel_mult=cfg["channel_mult"],
      num_heads=cfg["num_heads"],
      num_head_channels=cfg["num_head_channels"],
      num_heads_upsample=cfg["num_heads_upsample"],
      use_scale_shift_norm=cfg["use_scale_shift_norm"],
      resblock_updown=cfg["resblock_updown"],
      use_new_attention_order=cfg["use_new_attention_order"],
      conv_resample=cfg["conv_resample"],
  )
