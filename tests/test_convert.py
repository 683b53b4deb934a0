"""The converter: real file formats, refusals, mismatch reports, atomic output,
loading without torch, and diffusers folders against diffusers' own UNet2DModel."""

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from convert import diffusers_format, torch_to_flax
from convert.writer import convert_checkpoint
from discovery_jax import checkpoint, models
from tests import helpers
from tests.helpers import nchw, nhwc

CheckpointError = torch_to_flax.CheckpointError


def _write_config_file(path, model_config):
  path.write_text(textwrap.dedent(f"""
      import ml_collections
      def get_config():
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict({dict(model_config)!r})
        return c
      """))
  return str(path)


def _run(args, **kw):
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=helpers.REPO, **kw)


@pytest.mark.slow
def test_cli_converts_and_loads_without_torch(tmp_path, vectors_available):
  cfg_file = _write_config_file(tmp_path / "small.py", helpers.vector_model_config("iddpm"))
  out = tmp_path / "ckpt"
  proc = _run(
      [
          "-m",
          "convert",
          f"--torch_checkpoint={helpers.vector_state_dict('iddpm')}",
          f"--config={cfg_file}",
          f"--output={out}",
      ]
  )
  assert proc.returncode == 0, proc.stderr
  assert "converted 142 tensors" in proc.stdout
  assert sorted(os.listdir(out)) == ["metadata.json", "model_config.json", "params"]
  meta = json.loads((out / "metadata.json").read_text())
  assert meta["num_params"] == 1405958 and len(meta["source_sha256"]) == 64

  # A fresh process in which torch cannot be imported loads and runs the model.
  code = textwrap.dedent(f"""
      import sys
      sys.modules['torch'] = None
      import numpy as np, jax.numpy as jnp
      from discovery_jax import models
      module, params = models.load({str(out)!r})
      v = np.load({os.path.join(helpers.PUBLIC, 'iddpm_small_forward.npz')!r})
      out = module.apply({{'params': params}}, jnp.asarray(v['x'].transpose(0, 2, 3, 1)), jnp.asarray(v['t']))
      err = np.abs(np.asarray(out).transpose(0, 3, 1, 2) - v['out_f64']).max()
      assert 'torch' not in sys.modules or sys.modules['torch'] is None
      print('MAXERR', err)
      """)
  proc = _run(["-c", code])
  assert proc.returncode == 0, proc.stderr
  err = float(proc.stdout.split("MAXERR")[1])
  assert err <= 1e-4


def test_wrapped_and_prefixed_state_dicts(tmp_path, vectors_available):
  cfg = helpers.vector_model_config("ddpm")
  state = torch.load(helpers.vector_state_dict("ddpm"), weights_only=True)
  reference = torch_to_flax.convert_state_dict(helpers.vector_state_dict("ddpm"), cfg)
  wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "step": 10, "epoch": 3}
  path = tmp_path / "wrapped.ckpt"
  torch.save(wrapped, path)
  params = torch_to_flax.convert_state_dict(str(path), cfg)
  np.testing.assert_array_equal(params["conv_in"]["kernel"], reference["conv_in"]["kernel"])
  np.testing.assert_array_equal(params["mid.attn_1"]["q"]["kernel"], reference["mid.attn_1"]["q"]["kernel"])


class _Exploit:
  """Unpickling this calls open(marker, 'w'): code execution that must never happen."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def test_refuses_pickles_that_execute_code(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pt"
  torch.save({"weight": torch.zeros(2), "payload": _Exploit(str(marker))}, path)
  with pytest.raises(CheckpointError, match="refused as unsafe: unpickling this file would execute code"):
    torch_to_flax.convert_state_dict(str(path), helpers.small_ddpm_config())
  assert not marker.exists()


def test_corrupt_files_are_not_reported_as_unsafe(tmp_path):
  """Issue 15 case 5: random bytes and a truncated download are corrupt, not attacks."""
  noise = tmp_path / "noise.pt"
  noise.write_bytes(np.random.default_rng(0).bytes(5000))
  good = tmp_path / "good.pt"
  torch.save({"weight": torch.zeros(64)}, good)
  truncated = tmp_path / "truncated.pt"
  truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
  for path in (noise, truncated):
    with pytest.raises(CheckpointError) as info:
      torch_to_flax.load_torch_file(str(path))
    msg = str(info.value)
    assert msg.startswith(f"corrupt or not a PyTorch checkpoint: {path} (")
    assert "unsafe" not in msg and "execute code" not in msg and "\n" not in msg


def test_refuses_files_that_are_not_checkpoints(tmp_path):
  text = tmp_path / "notes.pt"
  text.write_text("these are not weights\n")
  with pytest.raises(CheckpointError, match="not a PyTorch checkpoint|not a readable PyTorch checkpoint"):
    torch_to_flax.convert_state_dict(str(text), helpers.small_ddpm_config())
  with pytest.raises(CheckpointError, match="no such file"):
    torch_to_flax.convert_state_dict(str(tmp_path / "missing.pt"), helpers.small_ddpm_config())
  torch.save([torch.zeros(3)], tmp_path / "list.pt")
  with pytest.raises(CheckpointError, match="expected a state dict"):
    torch_to_flax.convert_state_dict(str(tmp_path / "list.pt"), helpers.small_ddpm_config())


def test_mismatches_name_the_offending_keys(vectors_available):
  cfg = helpers.vector_model_config("ddpm")
  state = torch.load(helpers.vector_state_dict("ddpm"), weights_only=True)
  broken = dict(state)
  del broken["mid.attn_1.q.weight"]
  broken["mid.attn_1.extra.weight"] = torch.zeros(3)
  broken["conv_out.weight"] = torch.zeros(3, 64, 1, 1)
  with pytest.raises(CheckpointError) as info:
    torch_to_flax.convert_state_dict(broken, cfg)
  msg = str(info.value)
  assert "missing keys: mid.attn_1.q.weight (64, 64, 1, 1)" in msg
  assert "unexpected keys: mid.attn_1.extra.weight (3,)" in msg
  assert "conv_out.weight has (3, 64, 1, 1), config expects (3, 64, 3, 3)" in msg
  with pytest.raises(CheckpointError, match="is a ddpm checkpoint .* model.arch='iddpm'"):
    torch_to_flax.convert_state_dict(state, helpers.vector_model_config("iddpm"))


def test_failed_conversion_writes_nothing(tmp_path, vectors_available):
  out = tmp_path / "out"
  cfg = {**helpers.vector_model_config("ddpm"), "ch": 128}
  with pytest.raises(CheckpointError):
    convert_checkpoint(helpers.vector_state_dict("ddpm"), str(out), cfg)
  assert os.listdir(tmp_path) == []
  convert_checkpoint(helpers.vector_state_dict("ddpm"), str(out), helpers.vector_model_config("ddpm"))
  with pytest.raises(checkpoint.CheckpointError, match="already exists"):
    convert_checkpoint(helpers.vector_state_dict("ddpm"), str(out), helpers.vector_model_config("ddpm"))
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_cli_reports_errors_without_traceback(tmp_path, vectors_available):
  cfg_file = _write_config_file(tmp_path / "c.py", helpers.vector_model_config("iddpm"))
  proc = _run(
      [
          "-m",
          "convert",
          f"--torch_checkpoint={helpers.vector_state_dict('ddpm')}",
          f"--config={cfg_file}",
          f"--output={tmp_path / 'o'}",
      ]
  )
  assert proc.returncode == 1
  assert "convert: error:" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- diffusers


def _diffusers_unet(seed, **kw):
  from diffusers import UNet2DModel

  torch.manual_seed(seed)
  args = dict(
      sample_size=16,
      block_out_channels=(32, 64),
      layers_per_block=1,
      down_block_types=("DownBlock2D", "AttnDownBlock2D"),
      up_block_types=("AttnUpBlock2D", "UpBlock2D"),
      downsample_padding=0,
      flip_sin_to_cos=False,
      freq_shift=1,
      norm_eps=1e-6,
      attention_head_dim=None,
  )
  args.update(kw)
  net = UNet2DModel(**args)
  with torch.no_grad():  # non-trivial values everywhere (diffusers zero-inits nothing, but be sure).
    for name, p in net.named_parameters():
      if p.ndim == 1 and "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.05 * torch.randn_like(p))
  return net.eval()


@pytest.mark.slow  # diffusers as the reference: its import alone takes half a minute here
@pytest.mark.parametrize("variant", ["safetensors", "bin-deprecated-names", "multihead"])
def test_diffusers_folder_matches_diffusers_unet(variant, tmp_path):
  net = _diffusers_unet(7, attention_head_dim=16 if variant == "multihead" else None)
  folder = tmp_path / "unet"
  net.save_pretrained(folder, safe_serialization=variant != "bin-deprecated-names")
  if variant == "bin-deprecated-names":  # how the 2022 google/ddpm-* files name attention.
    path = folder / "diffusion_pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for k, v in state.items():
      for new, dep in old.items():
        k = k.replace(f".{new}.", f".{dep}.")
      renamed[k] = v
    torch.save(renamed, path)
  out_dir = tmp_path / "converted"
  summary = convert_checkpoint(str(folder), str(out_dir), diffusers=True)
  assert summary["arch"] == "ddpm"
  module, params = models.load(str(out_dir))
  x = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
  t = np.array([3.0, 998.0])
  with torch.no_grad():
    ref = net.double()(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()
  out = module.apply({"params": params}, jnp.asarray(nhwc(x), jnp.float32), jnp.asarray(t))
  np.testing.assert_allclose(nchw(out), ref, atol=1e-4, rtol=0)


def test_diffusers_unsupported_config_is_named(tmp_path):
  net = _diffusers_unet(0, downsample_padding=2)
  net.save_pretrained(tmp_path / "unet")
  with pytest.raises(CheckpointError, match="downsample_padding=2 is not supported"):
    diffusers_format.read_folder(str(tmp_path / "unet"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="no config.json"):
    diffusers_format.read_folder(str(tmp_path / "empty"))


def test_diffusers_config_disagreeing_with_model_config(tmp_path):
  _diffusers_unet(0).save_pretrained(tmp_path / "unet")
  with pytest.raises(CheckpointError, match="different network"):
    diffusers_format.read_folder(str(tmp_path / "unet"), helpers.small_ddpm_config(ch=64))
