"""Flax UNets of the two checkpoint families (no I/O here except ``load``,
which delegates to ``discovery_jax.checkpoint``)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from discovery_jax.models import layers
from discovery_jax.models.config import DDPM_OPTIONAL, DTYPES, ModelConfigError, eps_channels, validate
from discovery_jax.models.ddpm import DDPMUNet
from discovery_jax.models.iddpm import IDDPMUNet

__all__ = [
    "DDPMUNet",
    "IDDPMUNet",
    "ModelConfigError",
    "create_model",
    "eps_channels",
    "init_params",
    "load",
    "param_shapes",
    "validate",
]


def create_model(model_config: Any) -> nn.Module:
  """Builds the Flax module that a model config describes.

  ``module.apply({'params': params}, x, t)`` takes NHWC ``x`` in [-1, 1] and
  timesteps ``t`` of shape (N,) and returns the NHWC network output in float32.
  """
  cfg = validate(model_config)
  common = dict(
      image_size=cfg["image_size"],
      in_channels=int(cfg["in_channels"]),
      num_res_blocks=int(cfg["num_res_blocks"]),
      dropout=float(cfg["dropout"]),
      dtype=DTYPES[cfg["dtype"]],
      precision=layers.resolve_precision(cfg["precision"], DTYPES[cfg["dtype"]]),
  )
  if cfg["arch"] == "ddpm":
    return DDPMUNet(
        out_ch=int(cfg["out_ch"]),
        ch=cfg["ch"],
        ch_mult=cfg["ch_mult"],
        attn_resolutions=cfg["attn_resolutions"],
        resamp_with_conv=bool(cfg["resamp_with_conv"]),
        attn_head_channels=int(cfg["attn_head_channels"]),
        **{k: cfg[k] for k in DDPM_OPTIONAL if k != "attn_head_channels"},
        **common,
    )
  return IDDPMUNet(
      model_channels=cfg["num_channels"],
      out_channels=int(cfg["out_channels"]),
      attention_ds=tuple(cfg["image_size"] // r for r in cfg["attention_resolutions"]),
      channel_mult=cfg["channel_mult"],
      num_heads=int(cfg["num_heads"]),
      num_head_channels=int(cfg["num_head_channels"]),
      num_heads_upsample=int(cfg["num_heads_upsample"]),
      use_scale_shift_norm=bool(cfg["use_scale_shift_norm"]),
      resblock_updown=bool(cfg["resblock_updown"]),
      use_new_attention_order=bool(cfg["use_new_attention_order"]),
      conv_resample=bool(cfg["conv_resample"]),
      **common,
  )


def _dummy_inputs(module: nn.Module, batch: int = 1):
  x = jnp.zeros((batch, module.image_size, module.image_size, module.in_channels), jnp.float32)
  return x, jnp.zeros((batch,), jnp.float32)


def init_params(module: nn.Module, rng: jax.Array) -> dict:
  """Fresh float32 parameters for ``module``."""
  return module.init(rng, *_dummy_inputs(module))["params"]


def param_shapes(module: nn.Module) -> dict:
  """The parameter tree as ``jax.ShapeDtypeStruct`` leaves, without computing anything."""
  return jax.eval_shape(lambda: init_params(module, jax.random.PRNGKey(0)))


def load(checkpoint_dir: str):
  """Returns ``(module, params)`` from a checkpoint written by ``convert``/``train``."""
  from discovery_jax import checkpoint  # local: keeps models/ free of I/O at import.

  return checkpoint.load_model(checkpoint_dir)
