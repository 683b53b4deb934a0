"""Flax UNets: parity with the PyTorch reference vectors and with the torch
reference networks on configurations and seeds outside the vectors."""

import json
import os

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from convert import torch_to_flax
from discovery_jax import configlib, models
from tests import helpers, torch_reference
from tests.helpers import nchw, nhwc

FAMILIES = ("ddpm", "iddpm")
TEMB_LAYER = {"ddpm": "temb.dense.1", "iddpm": "time_embed.2"}


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, vectors_available):
  family = request.param
  cfg = helpers.vector_model_config(family)
  params = torch_to_flax.convert_state_dict(helpers.vector_state_dict(family), cfg)
  return family, cfg, models.create_model(cfg), params


def test_forward_matches_reference_vectors(family_model):
  family, _, module, params = family_model
  v = helpers.load_vectors(family, "forward")
  x, t = jnp.asarray(nhwc(v["x"])), jnp.asarray(v["t"])
  (out, mid), state = module.apply(
      {"params": params}, x, t, return_mid=True, capture_intermediates=lambda mdl, _: mdl.name == TEMB_LAYER[family]
  )
  np.testing.assert_allclose(nchw(out), v["out_f64"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(nchw(mid), v["mid_h_f64"], atol=1e-4, rtol=0)
  temb = state["intermediates"][TEMB_LAYER[family]]["__call__"][0]
  np.testing.assert_allclose(np.asarray(temb), v["temb_mlp_f64"], atol=1e-4, rtol=0)
  out_edit = module.apply({"params": params}, x, t, edit_h=jnp.asarray(nhwc(v["edit_h"])))
  np.testing.assert_allclose(nchw(out_edit), v["out_edit_f64"], atol=1e-4, rtol=0)
  if family == "iddpm":
    assert out.shape[-1] == 6  # eps (3) + learned variance (3).


@pytest.mark.parametrize("family", FAMILIES)
def test_sinusoid_matches_reference_vectors(family, vectors_available):
  v = helpers.load_vectors(family, "forward")
  cfg = models.validate(helpers.vector_model_config(family))
  dim = cfg["ch"] if family == "ddpm" else cfg["num_channels"]
  emb = models.layers.sinusoidal_embedding(
      jnp.asarray(v["t"]), dim, flip_sin_to_cos=family == "iddpm", freq_shift=1 if family == "ddpm" else 0
  )
  # float32 rounding of t * freq (t up to 999) moves sin/cos by ~3e-5 (torch float32: ~5e-5).
  np.testing.assert_allclose(np.asarray(emb), v["temb_sinusoid_f64"], atol=1e-4, rtol=0)


def test_integer_timesteps_equal_float(family_model):
  family, _, module, params = family_model
  v = helpers.load_vectors(family, "forward")
  x = jnp.asarray(nhwc(v["x"]))
  a = module.apply({"params": params}, x, jnp.asarray(v["t"]).astype(jnp.int32))
  b = module.apply({"params": params}, x, jnp.asarray(v["t"]))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_reference_reproduces_vectors(family, vectors_available):
  """The reference networks used below are themselves faithful to the original code."""
  cfg = models.validate(helpers.vector_model_config(family))
  net = torch_reference.from_model_config(cfg).double().eval()
  state = torch.load(helpers.vector_state_dict(family), weights_only=True)
  net.load_state_dict(state, strict=True)
  v = helpers.load_vectors(family, "forward")
  with torch.no_grad():
    mid, out = net(torch.from_numpy(v["x"]).double(), torch.from_numpy(v["t"]).double())
  np.testing.assert_allclose(out.numpy(), v["out_f64"], atol=1e-9)
  np.testing.assert_allclose(mid.numpy(), v["mid_h_f64"], atol=1e-9)


# Configurations that the vectors do not cover: other depths and widths, attention
# at the full input resolution and at several levels, other head sizes, every
# boolean switch of both families.
OTHER_CONFIGS = [
    helpers.small_ddpm_config(),
    helpers.small_ddpm_config(ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16, 4), image_size=16),
    helpers.small_ddpm_config(resamp_with_conv=False, attn_resolutions=(), out_ch=6),
    helpers.small_ddpm_config(attn_head_channels=16, attn_resolutions=(16, 8), in_channels=1, out_ch=1),
    helpers.small_iddpm_config(),
    helpers.small_iddpm_config(
        channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(16, 4), num_head_channels=32
    ),
    helpers.small_iddpm_config(
        use_scale_shift_norm=False,
        resblock_updown=False,
        learn_sigma=False,
        num_head_channels=-1,
        num_heads=2,
        num_heads_upsample=4,
    ),
    helpers.small_iddpm_config(
        resblock_updown=False, conv_resample=False, use_new_attention_order=True, attention_resolutions=(16, 8)
    ),
]


# The two largest configurations run in the full tier only.
@pytest.mark.parametrize(
    "index", [pytest.param(i, marks=pytest.mark.slow) if i in (1, 5) else i for i in range(len(OTHER_CONFIGS))]
)
def test_conversion_parity_on_other_configs(index, tmp_path):
  cfg = OTHER_CONFIGS[index]
  seed = 100 + index
  path = str(tmp_path / "model.pt")
  net = helpers.save_random_torch_checkpoint(cfg, path, seed=seed, legacy=index % 2 == 1)
  params = torch_to_flax.convert_state_dict(path, cfg)
  module = models.create_model(cfg)
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, cfg["in_channels"], cfg["image_size"], cfg["image_size"]))
  t = np.array([0.0, 999.0])
  with torch.no_grad():
    mid_ref, out_ref = net.double()(torch.from_numpy(x), torch.from_numpy(t))
  out, mid = module.apply({"params": params}, jnp.asarray(nhwc(x), jnp.float32), jnp.asarray(t), return_mid=True)
  assert out.shape == nhwc(out_ref.numpy()).shape
  np.testing.assert_allclose(nchw(out), out_ref.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(nchw(mid), mid_ref.numpy(), atol=1e-4, rtol=0)


SHAPE_FILES = {
    "afhq": "iddpm_afhq256_state_dict_shapes.json",
    "celeba": "ddpm256_state_dict_shapes.json",
    "church": "ddpm256_state_dict_shapes.json",
    "bedroom": "ddpm256_state_dict_shapes.json",
}


@pytest.mark.parametrize("name", sorted(SHAPE_FILES))
def test_full_configs_build_exactly_the_checkpoint_tensors(name, vectors_available):
  config = configlib.load_config_file(os.path.join(helpers.REPO, "configs", f"{name}.py"))
  with open(os.path.join(helpers.VECTORS, SHAPE_FILES[name])) as f:
    ref = json.load(f)
  expected = torch_to_flax.expected_state_dict(config.model)
  assert {k: list(v[1]) for k, v in expected.items()} == ref["state_dict_shapes"]
  assert len(expected) == ref["num_tensors"]
  assert sum(int(np.prod(s)) for _, s in expected.values()) == ref["num_params"]


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params(family_model):
  family, cfg, module, params = family_model
  bf16 = models.create_model({**cfg, "dtype": "bfloat16"})
  v = helpers.load_vectors(family, "forward")
  x, t = jnp.asarray(nhwc(v["x"])), jnp.asarray(v["t"])
  fresh = bf16.init(jax.random.PRNGKey(0), x, t)["params"]
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(fresh)} == {jnp.dtype(jnp.float32)}
  out32 = np.asarray(module.apply({"params": params}, x, t))
  out16 = bf16.apply({"params": params}, x, t)
  assert out16.dtype == jnp.float32
  rel = np.abs(np.asarray(out16) - out32).max() / np.abs(out32).max()
  assert 0 < rel < 0.1, rel  # bf16 differs, but stays close.


@pytest.mark.slow
def test_middle_feature_has_bottleneck_shape(family_model):
  family, cfg, module, params = family_model
  x = jnp.zeros((3, cfg["image_size"], cfg["image_size"], 3))
  out, mid = module.apply({"params": params}, x, jnp.full((3,), 500), return_mid=True)
  levels = len(cfg["ch_mult" if family == "ddpm" else "channel_mult"])
  assert mid.shape[:3] == (3, cfg["image_size"] // 2 ** (levels - 1), cfg["image_size"] // 2 ** (levels - 1))


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"arch": "unet"}, "model.arch"),
        ({"ch": 48}, "not divisible by the 32 GroupNorm groups"),
        ({"attn_resolutions": (5,)}, "not a resolution of this network"),
        ({"image_size": 18, "ch_mult": (1, 2, 2)}, "image_size=18"),
        ({"extra_field": 1}, "unknown field"),
        ({"dtype": "float64"}, "model.dtype"),
    ],
)
def test_invalid_configs_name_the_field(bad, message):
  with pytest.raises(models.ModelConfigError, match=message):
    models.create_model(helpers.small_ddpm_config(**bad))


def test_missing_field_is_named():
  cfg = helpers.small_iddpm_config()
  del cfg["learn_sigma"]
  with pytest.raises(models.ModelConfigError, match="learn_sigma"):
    models.create_model(cfg)


def test_parameter_tree_mirrors_torch_names():
  module = models.create_model(helpers.small_iddpm_config())
  flat = flax.traverse_util.flatten_dict(models.param_shapes(module))
  assert ("input_blocks.3.1", "qkv", "kernel") in flat
  assert ("output_blocks.1.2", "in_layers.0", "scale") in flat  # the up ResBlock after attention


@pytest.mark.parametrize("shape,offset", [((2, 8, 8, 64), 0.0), ((3, 5, 7, 96), 0.0), ((2, 4, 4, 32), 300.0)])
def test_group_norm_matches_torch(shape, offset):
  """The hand-written GroupNorm (row sums, two passes) against torch.nn.GroupNorm and
  float64, including a large common offset where a one-pass E[x^2] - E[x]^2 variance
  breaks (torch's own channels-last kernel is off by 0.27 there; its NCHW one is not)."""
  rng = np.random.default_rng(0)
  x = (rng.normal(size=shape) * 0.5 + offset).astype(np.float32)
  scale = rng.normal(1.0, 0.1, shape[-1]).astype(np.float32)
  bias = rng.normal(0.0, 0.1, shape[-1]).astype(np.float32)
  norm = models.layers.GroupNorm(num_groups=32, epsilon=1e-5)
  got = norm.apply({"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}}, jnp.asarray(x))
  ref = torch.nn.GroupNorm(32, shape[-1], eps=1e-5)
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(scale))
    ref.bias.copy_(torch.from_numpy(bias))
    want = ref(torch.from_numpy(np.ascontiguousarray(nchw(x)))).numpy()
  np.testing.assert_allclose(nchw(np.asarray(got)), want, atol=5e-4, rtol=0)
  groups = x.astype(np.float64).reshape(shape[0], -1, 32, shape[-1] // 32)
  exact = (groups - groups.mean(axis=(1, 3), keepdims=True)) / np.sqrt(groups.var(axis=(1, 3), keepdims=True) + 1e-5)
  exact = exact.reshape(shape) * scale + bias
  np.testing.assert_allclose(np.asarray(got), exact, atol=2e-4, rtol=0)


def test_group_norm_refuses_channels_not_divisible_by_groups():
  with pytest.raises(ValueError, match="48 channels are not divisible by 32 groups"):
    models.layers.GroupNorm(num_groups=32, epsilon=1e-5).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 48)))
