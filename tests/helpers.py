"""Shared test utilities: reference vectors, small model configs, torch checkpoints."""

from __future__ import annotations

import json
import math
import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("DISCOVERY_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
VECTORS = os.path.join(SHARED, "vectors")
PUBLIC = os.path.join(VECTORS, "public")


def vector_model_config(family: str) -> dict:
  """The discovery_jax model config of a public test-vector network."""
  with open(os.path.join(PUBLIC, f"{family}_small_config.json")) as f:
    c = json.load(f)["config"]
  if family == "ddpm":
    return dict(arch="ddpm", image_size=c["data"]["image_size"], **c["model"])
  return dict(
      arch="iddpm",
      image_size=c["image_size"],
      in_channels=c["in_channels"],
      num_channels=c["model_channels"],
      num_res_blocks=c["num_res_blocks"],
      channel_mult=tuple(c["channel_mult"]),
      attention_resolutions=tuple(c["image_size"] // d for d in c["attention_resolutions"]),
      num_head_channels=c["num_head_channels"],
      num_heads=c["num_heads"],
      learn_sigma=c["out_channels"] == 2 * c["in_channels"],
      use_scale_shift_norm=c["use_scale_shift_norm"],
      resblock_updown=c["resblock_updown"],
      use_new_attention_order=c["use_new_attention_order"],
      dropout=c["dropout"],
  )


def vector_state_dict(family: str) -> str:
  return os.path.join(PUBLIC, f"{family}_small_state_dict.pt")


def load_vectors(family: str, kind: str) -> dict:
  with np.load(os.path.join(PUBLIC, f"{family}_small_{kind}.npz")) as z:
    return {k: z[k] for k in z.files}


def nchw(x) -> np.ndarray:
  return np.asarray(x).transpose(0, 3, 1, 2)


def nhwc(x) -> np.ndarray:
  return np.asarray(x).transpose(0, 2, 3, 1)


def small_ddpm_config(**overrides) -> dict:
  cfg = dict(
      arch="ddpm",
      image_size=16,
      in_channels=3,
      out_ch=3,
      ch=32,
      ch_mult=(1, 2),
      num_res_blocks=1,
      attn_resolutions=(8,),
      dropout=0.0,
      resamp_with_conv=True,
  )
  cfg.update(overrides)
  return cfg


def small_iddpm_config(**overrides) -> dict:
  cfg = dict(
      arch="iddpm",
      image_size=16,
      in_channels=3,
      num_channels=32,
      num_res_blocks=1,
      channel_mult=(1, 2),
      attention_resolutions=(8,),
      num_head_channels=16,
      num_heads=4,
      learn_sigma=True,
      use_scale_shift_norm=True,
      resblock_updown=True,
      use_new_attention_order=False,
      dropout=0.0,
  )
  cfg.update(overrides)
  return cfg


def save_random_torch_checkpoint(model_config: dict, path: str, seed: int = 0, legacy: bool = False):
  """Builds the torch reference network for ``model_config``, randomises it and
  saves its state dict in the real format; returns the torch module."""
  import torch
  from discovery_jax import models
  from tests import torch_reference

  net = torch_reference.from_model_config(models.validate(model_config))
  torch_reference.randomize_(net, seed)
  net.eval()
  torch.save(net.state_dict(), path, _use_new_zipfile_serialization=not legacy)
  return net


# Settings small enough for end-to-end CLI runs in the test suite.
TINY_RUN = {
    "sampling.t_0": 300,
    "sampling.n_steps": 4,
    "discovery.num_id_latents": 12,
    "discovery.num_refs": 4,
    "discovery.opt_steps": 50,
    "output.shard_size": 2,
}


def write_config(path, base: str, family: str, checkpoint: str, settings: dict) -> str:
  """Writes a config file for the entry points: ``configs/<base>`` with the reference-vector
  model of ``family`` (converted to ``checkpoint``), TINY_RUN, then ``settings``
  ({'a.b': value}); returns its path."""
  lines = [f"  c.{key} = {value!r}" for key, value in {**TINY_RUN, **settings}.items()]
  text = "\n".join(
      [
          "import ml_collections",
          "from discovery_jax import configlib",
          "def get_config():",
          f"  c = configlib.load_config_file({os.path.join(REPO, 'configs', base)!r})",
          f"  c.model = ml_collections.ConfigDict({vector_model_config(family)!r})",
          f"  c.checkpoint = {str(checkpoint)!r}",
          *lines,
          "  return c",
          "",
      ]
  )
  with open(path, "w") as f:
    f.write(text)
  return str(path)


def criteria_numpy(candidate: np.ndarray, id_refs: np.ndarray, ood_refs: np.ndarray) -> np.ndarray:
  """The three criteria computed directly in float64 (reference implementation)."""
  c = np.asarray(candidate, np.float64).ravel()
  idr = np.asarray(id_refs, np.float64).reshape(len(id_refs), -1)
  oor = np.asarray(ood_refs, np.float64).reshape(len(ood_refs), -1)
  ang = lambda a, b: math.degrees(math.acos(max(-1.0, min(1.0, a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))))
  dist = np.mean([np.linalg.norm(c - r) for r in idr])
  ang0 = np.mean([ang(c, r) for r in oor])
  vecs = oor - c
  angv = np.mean([ang(vecs[j], vecs[k]) for j in range(len(oor)) for k in range(j + 1, len(oor))])
  return np.array([dist, ang0, angv])
