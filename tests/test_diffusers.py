"""diffusers folders (issue 15): diffusers' own defaults for missing config fields,
every supported UNet2DModel knob against diffusers' forward (random weights, small
sizes), refusals by name, the scheduler config (schedules, prediction types), and
what a converted folder records."""

import inspect
import os
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from convert import diffusers_format, torch_to_flax
from convert.writer import convert_checkpoint
from discovery_jax import checkpoint, diffusion, models
from tests import helpers
from tests.helpers import nchw, nhwc

diffusers = pytest.importorskip("diffusers")
CheckpointError = torch_to_flax.CheckpointError
# diffusers' own forward and schedulers as the reference: importing diffusers alone takes half a
# minute here, so these run in the full tier only.
pytestmark = pytest.mark.slow
TOL = 1e-4

SMALL = dict(
    sample_size=16,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)


def _unet(seed=0, **kw):
  """A diffusers UNet2DModel built with ``kw`` (diffusers' defaults otherwise), with
  non-trivial norm scales and biases."""
  torch.manual_seed(seed)
  net = diffusers.UNet2DModel(**kw)
  with torch.no_grad():
    for name, p in net.named_parameters():
      if p.ndim == 1 and "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.05 * torch.randn_like(p))
  return net.eval()


def _parity(net, folder, t=(3.0, 998.0), seed=0):
  """Max |flax - diffusers| of the folder's conversion (diffusers in float64)."""
  state, cfg, _ = diffusers_format.read_folder(str(folder))
  params = torch_to_flax.convert_state_dict(state, cfg)
  module = models.create_model(cfg)
  size = cfg["image_size"]
  x = np.random.default_rng(seed).standard_normal((len(t), cfg["in_channels"], size, size))
  t = np.asarray(t)
  with torch.no_grad():
    ref = net.double()(torch.from_numpy(x), torch.from_numpy(t).long()).sample.numpy()
  out = module.apply({"params": params}, jnp.asarray(nhwc(x), jnp.float32), jnp.asarray(t, jnp.float32))
  return float(np.abs(nchw(out) - ref).max()), cfg


# Each knob of docs/diffusers.md, at a small size, against diffusers' own forward.
KNOBS = {
    # UNet2DModel's own defaults: flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
    # norm_eps=1e-5, attention_head_dim=8 (multi-head).
    "diffusers_defaults": dict(SMALL),
    "google_ddpm_layout": dict(
        SMALL, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6, attention_head_dim=None
    ),
    "scale_shift": dict(SMALL, resnet_time_scale_shift="scale_shift"),
    "scale_shift_attn_groups": dict(SMALL, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=8),
    "resnet_up_down_blocks": dict(
        SMALL,
        block_out_channels=(32, 32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"),
        up_block_types=("ResnetUpsampleBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        downsample_type="resnet",
        upsample_type="resnet",
    ),
    "norm_groups_16": dict(SMALL, norm_num_groups=16, block_out_channels=(16, 48)),
    "learned_time_embedding": dict(SMALL, time_embedding_type="learned", num_train_timesteps=1000),
    "temb_dim_mid_scale_no_mid_attn": dict(
        SMALL, time_embedding_dim=96, mid_block_scale_factor=2**0.5, add_attention=False, attention_head_dim=16
    ),
    "learned_variance_out6": dict(SMALL, out_channels=6, freq_shift=1),
}


@pytest.mark.slow
@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_knob_matches_diffusers_forward(knob, tmp_path):
  net = _unet(1, **KNOBS[knob])
  net.save_pretrained(tmp_path / "unet")
  err, _ = _parity(net, tmp_path / "unet")
  print(f"PARITY {knob}: {err:.2e}")
  assert err <= TOL, err


@pytest.mark.slow
def test_unconditional_training_example_model(tmp_path):
  """The model of diffusers' examples/unconditional_image_generation/train_unconditional.py
  (all its channels and blocks, UNet2DModel's defaults otherwise) at sample_size 32."""
  net = _unet(
      2,
      sample_size=32,
      in_channels=3,
      out_channels=3,
      layers_per_block=2,
      block_out_channels=(128, 128, 256, 256, 512, 512),
      down_block_types=(
          "DownBlock2D",
          "DownBlock2D",
          "DownBlock2D",
          "DownBlock2D",
          "AttnDownBlock2D",
          "DownBlock2D",
      ),
      up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
  )
  net.save_pretrained(tmp_path / "unet")
  err, cfg = _parity(net, tmp_path / "unet", t=(500.0,))
  print(f"PARITY train_unconditional default: {err:.2e}")
  assert cfg["attn_resolutions"] == (2,) and cfg["flip_sin_to_cos"] and cfg["downsample_padding"] == 1
  assert err <= TOL, err


def test_defaults_table_is_diffusers_signature():
  sig = inspect.signature(diffusers.UNet2DModel.__init__).parameters
  installed = {k: p.default for k, p in sig.items() if k != "self"}
  assert installed == diffusers_format.UNET2D_DEFAULTS
  for cls in (diffusers.DDPMScheduler, diffusers.DDIMScheduler):
    sig = inspect.signature(cls.__init__).parameters
    for key, value in diffusers_format.SCHEDULER_DEFAULTS.items():
      assert sig[key].default == value, (cls.__name__, key)


def test_missing_fields_take_diffusers_defaults(tmp_path):
  """Issue 15 case 8: a trimmed hub-style config.json means diffusers' defaults."""
  net = _unet(3, **SMALL)
  net.save_pretrained(tmp_path / "unet")
  path = tmp_path / "unet" / "config.json"
  full = json.loads(path.read_text())
  keep = ("_class_name", "sample_size", "block_out_channels", "layers_per_block", "down_block_types", "up_block_types")
  path.write_text(json.dumps({k: full[k] for k in keep}))
  err, cfg = _parity(net, tmp_path / "unet")
  assert err <= TOL, err
  assert cfg["flip_sin_to_cos"] is True and cfg["freq_shift"] == 0 and cfg["downsample_padding"] == 1
  assert cfg["norm_eps"] == 1e-5 and cfg["attn_head_channels"] == 8


REFUSED = {
    "time_embedding_type": (dict(time_embedding_type="fourier"), "time_embedding_type='fourier' is not supported"),
    "center_input_sample": (dict(center_input_sample=True), "center_input_sample=True is not supported"),
    "act_fn": (dict(act_fn="gelu"), "act_fn='gelu' is not supported"),
    "class_embed": (dict(num_class_embeds=10), "num_class_embeds=10 is not supported"),
    "mid_block_type": (dict(mid_block_type=None), "mid_block_type=None is not supported"),
    "out_channels": (dict(out_channels=4), "out_channels=4 is not supported"),
    "padding": (dict(downsample_padding=2), "downsample_padding=2 is not supported"),
    "spatial": (dict(resnet_time_scale_shift="spatial"), "resnet_time_scale_shift='spatial' is not supported"),
    "unknown": (dict(num_head_channels=64), r"unknown UNet2DModel field\(s\) \['num_head_channels'\]"),
    "asymmetric_attention": (
        dict(up_block_types=("UpBlock2D", "UpBlock2D")),
        r"up_block_types\[0\]='UpBlock2D' does not mirror down_block_types\[1\]='AttnDownBlock2D'",
    ),
    "sample_size": (dict(sample_size=None), "config.json: field sample_size is missing"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_fields_are_refused_by_name(case):
  change, message = REFUSED[case]
  raw = {"_class_name": "UNet2DModel", **SMALL, **change}
  with pytest.raises(CheckpointError, match=message) as info:
    diffusers_format.config_from_diffusers(raw, "x/config.json")
  assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedules_match_diffusers(kind):
  ref = diffusers.DDPMScheduler(beta_schedule=kind, beta_start=1e-4, beta_end=0.02).alphas_cumprod.double().numpy()
  ours = diffusion.Schedule.from_betas(diffusion.beta_schedule(kind, 1000, 1e-4, 0.02)).alphas_cumprod
  np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_step_honours_prediction_type(prediction_type):
  """One deterministic DDIM step from the model's output equals diffusers' DDIMScheduler
  (clip_sample off) for eps, v and x0 predicting networks under squaredcos_cap_v2."""
  cfg = helpers.small_ddpm_config(
      image_size=8, attn_resolutions=(), prediction_type=prediction_type, beta_schedule="squaredcos_cap_v2"
  )
  module = models.create_model(cfg)
  params = models.init_params(module, jax.random.PRNGKey(0))
  fn = diffusion.eps_fn(module, params)
  x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
  sched = diffusers.DDIMScheduler(
      beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=True
  )
  sched.set_timesteps(10)  # 'leading' spacing: t = 900, 800, ..., 0.
  t, t_prev = 600, 500
  raw = np.asarray(module.apply({"params": params}, jnp.asarray(x), jnp.full((2,), t, jnp.float32)))
  ref = sched.step(torch.from_numpy(nchw(raw)).double(), t, torch.from_numpy(nchw(x)).double(), eta=0.0)
  sch = fn.schedule if fn.schedule is not None else diffusion.Schedule.from_config({"beta_schedule": "cosine"})
  eps = fn(jnp.asarray(x), jnp.full((2,), t))
  ours, _ = diffusion.ddim_step(jnp.asarray(x), eps, sch.alpha_bar(t), sch.alpha_bar(t_prev))
  np.testing.assert_allclose(nchw(ours), ref.prev_sample.numpy(), atol=2e-5, rtol=0)


def test_learned_variance_takes_the_first_half_as_eps():
  cfg = helpers.small_ddpm_config(image_size=8, attn_resolutions=(), out_ch=6)
  module = models.create_model(cfg)
  params = models.init_params(module, jax.random.PRNGKey(0))
  x = jnp.ones((1, 8, 8, 3))
  assert diffusion.eps_fn(module, params)(x, jnp.array([5])).shape == (1, 8, 8, 3)
  assert models.eps_channels(cfg) == 3


def _pipeline(tmp_path, scheduler: dict | None, **unet_kw):
  net = _unet(4, **{**SMALL, **unet_kw})
  net.save_pretrained(tmp_path / "pipe" / "unet")
  if scheduler is not None:
    diffusers.DDPMScheduler(**scheduler).save_pretrained(tmp_path / "pipe" / "scheduler")
  return net, tmp_path / "pipe"


def test_pipeline_scheduler_is_read_and_stored(tmp_path):
  """Issue 15 case 10: the scheduler's schedule and prediction type reach the checkpoint."""
  _, pipe = _pipeline(tmp_path, dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"))
  out = tmp_path / "ckpt"
  summary = convert_checkpoint(str(pipe), str(out), diffusers=True)
  assert summary["prediction_type"] == "v_prediction"
  stored = checkpoint.read_model_config(str(out))
  assert stored["beta_schedule"] == "squaredcos_cap_v2" and stored["prediction_type"] == "v_prediction"
  meta = checkpoint.read_metadata(str(out))
  assert meta["diffusers"]["scheduler_config"].endswith("scheduler/scheduler_config.json")
  assert len(meta["source_sha256"]) == 64  # issue 15 case 11: no longer empty.
  weights = pipe / "unet" / "diffusion_pytorch_model.safetensors"
  import hashlib

  assert meta["source_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
  module, params = models.load(str(out))
  fn = diffusion.eps_fn(module, params)
  assert fn.prediction_type == "v_prediction"
  np.testing.assert_allclose(
      fn.schedule.alphas_cumprod,
      diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double().numpy(),
      rtol=2e-5,
  )


@pytest.mark.parametrize(
    "scheduler, message",
    [
        (dict(beta_schedule="sigmoid"), "beta_schedule='sigmoid' is not supported"),
        (dict(rescale_betas_zero_snr=True), "rescale_betas_zero_snr=True is not supported"),
        (dict(trained_betas=[0.1] * 1000), "trained_betas"),
    ],
)
def test_unsupported_scheduler_is_refused(tmp_path, scheduler, message):
  _, pipe = _pipeline(tmp_path, scheduler)
  with pytest.raises(CheckpointError, match=message):
    diffusers_format.read_folder(str(pipe))


def test_prediction_type_sample_refuses_unknown(tmp_path):
  _, pipe = _pipeline(tmp_path, None)
  sched = pipe / "scheduler"
  sched.mkdir()
  (sched / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler", "prediction_type": "flow"}))
  with pytest.raises(CheckpointError, match="prediction_type='flow' is not supported"):
    diffusers_format.read_folder(str(pipe))


# --------------------------------------------------------------------------- loading (issue 15 cases 11, 12)


@pytest.fixture(scope="module")
def cosine_v_checkpoint(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("cosine_v")
  _, pipe = _pipeline(tmp, dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"))
  out = tmp / "ckpt"
  convert_checkpoint(str(pipe), str(out), diffusers=True)
  return str(out)


def _run_config(ckpt, model=None, diffusion_section=None):
  import ml_collections

  c = ml_collections.ConfigDict()
  c.checkpoint = ckpt
  if model is not None:
    c.model = model
  if diffusion_section is not None:
    c.diffusion = ml_collections.ConfigDict(diffusion_section)
  return c


COSINE = dict(beta_schedule="cosine", beta_start=1e-4, beta_end=0.02, num_timesteps=1000)


def test_load_model_uses_the_checkpoints_model_config(cosine_v_checkpoint):
  import ml_collections

  from discovery_jax import cli

  for model in (None, ml_collections.ConfigDict(), ml_collections.ConfigDict({"dtype": "float32"})):
    loaded = cli.load_model(_run_config(cosine_v_checkpoint, model, COSINE))
    assert loaded.model_config["image_size"] == 16 and loaded.model_config["flip_sin_to_cos"] is True
    assert loaded.eps.prediction_type == "v_prediction"
  # diffusers' name for the same schedule is accepted too.
  cli.load_model(_run_config(cosine_v_checkpoint, None, dict(COSINE, beta_schedule="squaredcos_cap_v2")))


def test_load_model_refuses_another_schedule(cosine_v_checkpoint):
  from discovery_jax import cli

  with pytest.raises(CheckpointError) as info:
    cli.load_model(_run_config(cosine_v_checkpoint, None, dict(COSINE, beta_schedule="linear")))
  msg = str(info.value)
  assert "was trained with diffusion.beta_schedule='cosine'" in msg
  assert "pass --config.diffusion.beta_schedule=cosine" in msg and "\n" not in msg
  with pytest.raises(CheckpointError, match="config.diffusion.beta_schedule='linear'"):
    cli.load_model(_run_config(cosine_v_checkpoint))  # no diffusion section: DDIM's linear default.


def test_load_model_mismatch_message_leads_with_the_key(cosine_v_checkpoint):
  import ml_collections

  from discovery_jax import cli

  iddpm = ml_collections.ConfigDict(helpers.small_iddpm_config())
  with pytest.raises(CheckpointError) as info:
    cli.load_model(_run_config(cosine_v_checkpoint, iddpm, COSINE))
  msg = str(info.value)
  assert msg.startswith(f"checkpoint {cosine_v_checkpoint} was converted for arch='ddpm' but config.model.arch='iddpm'")
  assert len(msg) < 300 + len(cosine_v_checkpoint), msg
  stored = checkpoint.read_model_config(cosine_v_checkpoint)
  other = ml_collections.ConfigDict({**stored, "ch": 64, "ch_mult": [1, 1]})
  with pytest.raises(CheckpointError, match="does not match config.model: ch: checkpoint has 32, config has 64"):
    cli.load_model(_run_config(cosine_v_checkpoint, other, COSINE))


def test_load_model_empty_checkpoint_names_both_converters():
  from discovery_jax import cli

  with pytest.raises(CheckpointError) as info:
    cli.load_model(_run_config(""))
  assert "--torch_checkpoint=FILE" in str(info.value) and "--diffusers=FOLDER" in str(info.value)


def test_load_model_fills_an_empty_model_section(cosine_v_checkpoint):
  """A run config without a model section (None, empty) reads image size and channels
  from the checkpoint afterwards (settings.image_options reads config.model)."""
  import ml_collections

  from discovery_jax import cli, settings

  for model in (None, ml_collections.ConfigDict()):
    config = _run_config(cosine_v_checkpoint, model, COSINE)
    config.lock()
    cli.load_model(config)
    assert settings.image_options(config).image_size == 16


def test_unrecorded_schedule_is_not_checked(tmp_path):
  """A checkpoint that records no schedule (PyTorch conversions, `train`) runs under any
  config.diffusion, as before; v / x0 prediction needs a recorded one."""
  from discovery_jax import cli

  cfg = helpers.small_ddpm_config()
  module = models.create_model(cfg)
  params = models.init_params(module, jax.random.PRNGKey(0))
  out = checkpoint.save_model(str(tmp_path / "ckpt"), params, cfg)
  assert checkpoint.read_model_config(out)["beta_schedule"] is None
  loaded = cli.load_model(_run_config(out, None, COSINE))
  assert loaded.eps.prediction_type == "epsilon"
  with pytest.raises(models.ModelConfigError, match="prediction_type='v_prediction' needs model.beta_schedule"):
    models.validate({**cfg, "prediction_type": "v_prediction"})


def test_finetune_refuses_a_v_prediction_model(cosine_v_checkpoint, tmp_path):
  """The trainer's loss is the eps loss: fine-tuning a v-prediction network on it is refused."""
  from discovery_jax import configlib, finetune

  config = configlib.load_config_file(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "base.py"))
  config.checkpoint = cosine_v_checkpoint
  config.diffusion.beta_schedule = "cosine"
  config.data.ood_dir = str(tmp_path)
  with pytest.raises(ValueError, match="finetune trains with the eps loss, but .* predicts 'v_prediction'"):
    finetune.main(config, str(tmp_path / "w"))
