"""DDIM: reference vectors of both families, an official-style torch loop on other
configurations / t_0 / step counts, and properties of the sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from convert import torch_to_flax
from discovery_jax import diffusion, models
from tests import helpers
from tests.helpers import nchw, nhwc

FAMILIES = ("ddpm", "iddpm")


@pytest.fixture(scope="module", params=FAMILIES)
def family_eps(request, vectors_available):
  family = request.param
  cfg = helpers.vector_model_config(family)
  params = torch_to_flax.convert_state_dict(helpers.vector_state_dict(family), cfg)
  return family, diffusion.eps_fn(models.create_model(cfg), params), helpers.load_vectors(family, "ddim")


def test_schedule_and_time_grid_match_official(vectors_available):
  v = helpers.load_vectors("ddpm", "ddim")
  np.testing.assert_allclose(diffusion.beta_schedule(), v["betas"], rtol=0, atol=0)
  np.testing.assert_allclose(diffusion.DEFAULT_SCHEDULE.alphas_cumprod, v["alphas_cumprod_f64"], atol=1e-12)
  for prefix in ("", "b_"):
    t_0, n = int(v[prefix + "t_0"]), int(v[prefix + "n_steps"])
    assert diffusion.ddim_timesteps(t_0, n) == v[prefix + "seq_inv"].tolist()
    np.testing.assert_array_equal(np.stack(diffusion.inversion_pairs(t_0, n), 1), v[prefix + "inv_pairs"])
    np.testing.assert_array_equal(np.stack(diffusion.generation_pairs(t_0, n), 1), v[prefix + "gen_pairs"])
  assert 699 in diffusion.ddim_timesteps(900, 10)  # int truncation, not rounding.


def test_single_steps(family_eps):
  _, fn, v = family_eps
  x = jnp.asarray(nhwc(v["step_x"]))
  for k in range(v["step_t"].shape[0]):
    t, t_next = v["step_t"][k], v["step_t_next"][k]
    eps = fn(x, jnp.asarray(t))
    s = diffusion.DEFAULT_SCHEDULE
    x_next, x0 = diffusion.ddim_step(x, eps, s.alpha_bar(t), s.alpha_bar(t_next))
    np.testing.assert_allclose(nchw(x_next), v["step_xt_next_f64"][k], atol=1e-4, rtol=0)
    # x0 = (x - sqrt(1-a) eps) / sqrt(a) amplifies float32 rounding 63x at t=900 (|x0| up
    # to 268; torch float32 itself is 2.3e-4 from float64 there): 1e-4 relative to |x0|.
    bound = 1e-4 * max(1.0, np.abs(v["step_x0_t_f64"][k]).max())
    np.testing.assert_allclose(nchw(x0), v["step_x0_t_f64"][k], atol=bound, rtol=0)


@pytest.mark.slow
def test_main_loop_and_b_loop(family_eps):
  _, fn, v = family_eps
  x0 = nhwc(v["x0"])
  lat, inv = diffusion.ddim_invert(fn, x0, t_0=900, n_steps=10, outputs=("x",))
  np.testing.assert_allclose(nchw(lat), v["x_lat_f64"], atol=5e-3, rtol=0)
  np.testing.assert_allclose(np.asarray(inv["x"]).transpose(0, 1, 4, 2, 3), v["inv_traj_f32"], atol=5e-3, rtol=0)
  rec, gen = diffusion.ddim_generate(fn, lat, t_0=900, n_steps=10, outputs=("x",))
  bound = 2e-2 * np.abs(v["x_rec_f64"]).max()
  np.testing.assert_allclose(nchw(rec), v["x_rec_f64"], atol=bound, rtol=0)
  assert gen["x"].shape[0] == 10

  b_lat = diffusion.ddim_invert(fn, x0, t_0=500, n_steps=7)
  np.testing.assert_allclose(nchw(b_lat), v["b_x_lat_f64"], atol=1e-4, rtol=0)
  b_rec = diffusion.ddim_generate(fn, b_lat, t_0=500, n_steps=7)
  np.testing.assert_allclose(nchw(b_rec), v["b_x_rec_f64"], atol=1e-2, rtol=0)


def _official_loop_torch(net, x, pairs, learn_sigma, alphas):
  """``denoising_step`` of utils/diffusion_utils.py (eta = 0) applied over pairs, float64."""
  a = torch.from_numpy(alphas)
  with torch.no_grad():
    for t, t_next in pairs:
      n = x.shape[0]
      _, et = net(x, torch.full((n,), float(t), dtype=torch.float64))
      if learn_sigma:
        et = et[:, : et.shape[1] // 2]
      at = a[t]
      at_next = torch.tensor(1.0, dtype=torch.float64) if t_next == -1 else a[t_next]
      x0_t = (x - et * (1 - at).sqrt()) / at.sqrt()
      x = at_next.sqrt() * x0_t + (1 - at_next).sqrt() * et
  return x


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        dict(cfg=helpers.small_ddpm_config(ch_mult=(1, 2, 2), attn_resolutions=(16,)), t_0=300, n=5, schedule="linear"),
        dict(cfg=helpers.small_iddpm_config(attention_resolutions=(16, 8)), t_0=999, n=4, schedule="linear"),
        dict(cfg=helpers.small_iddpm_config(learn_sigma=False), t_0=37, n=38, schedule="cosine"),
    ],
)
def test_loops_match_official_on_other_configs(case, tmp_path):
  cfg = case["cfg"]
  path = str(tmp_path / "m.pt")
  net = helpers.save_random_torch_checkpoint(cfg, path, seed=5).double()
  fn = diffusion.eps_fn(models.create_model(cfg), torch_to_flax.convert_state_dict(path, cfg))
  schedule = diffusion.Schedule.from_betas(diffusion.beta_schedule(case["schedule"]))
  x0 = np.random.default_rng(1).uniform(-1, 1, (2, 3, 16, 16))
  learn_sigma = models.validate(cfg).get("learn_sigma", False)
  t_0, n = case["t_0"], case["n"]
  lat_ref = _official_loop_torch(
      net, torch.from_numpy(x0), np.stack(diffusion.inversion_pairs(t_0, n), 1), learn_sigma, schedule.alphas_cumprod
  )
  rec_ref = _official_loop_torch(
      net, lat_ref, np.stack(diffusion.generation_pairs(t_0, n), 1), learn_sigma, schedule.alphas_cumprod
  )
  lat = diffusion.ddim_invert(fn, nhwc(x0), t_0=t_0, n_steps=n, schedule=schedule)
  rec = diffusion.ddim_generate(fn, lat, t_0=t_0, n_steps=n, schedule=schedule)
  scale = max(1.0, float(np.abs(rec_ref.numpy()).max()))
  np.testing.assert_allclose(nchw(lat), lat_ref.numpy(), atol=5e-3 * scale, rtol=0)
  np.testing.assert_allclose(nchw(rec), rec_ref.numpy(), atol=2e-2 * scale, rtol=0)


def _point_mass_eps(target):
  """The exact eps of data concentrated at ``target``: DDIM is then exact."""
  a = jnp.asarray(diffusion.DEFAULT_SCHEDULE.alphas_cumprod, jnp.float32)

  def eps(x, t):
    at = a[jnp.asarray(t, jnp.int32)][:, None, None, None]
    return (x - jnp.sqrt(at) * target) / jnp.sqrt(1 - at)

  return eps


@pytest.mark.slow
def test_exact_denoiser_reconstructs_and_lands_on_data():
  target = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 3)), jnp.float32)
  eps = _point_mass_eps(target)
  lat = diffusion.ddim_invert(eps, target, t_0=600, n_steps=13)
  rec = diffusion.ddim_generate(eps, lat, t_0=600, n_steps=13)
  np.testing.assert_allclose(np.asarray(rec), np.asarray(target), atol=1e-4)
  # From arbitrary noise, every trajectory ends on the data point, with or without eta.
  noise = jax.random.normal(jax.random.key(0), target.shape)
  for eta in (0.0, 1.0):
    out = diffusion.ddim_generate(eps, noise, t_0=999, n_steps=20, eta=eta, key=jax.random.key(3))
    np.testing.assert_allclose(np.asarray(out), np.asarray(target), atol=1e-3)


@pytest.mark.slow
def test_eta_noise_depends_on_global_index_only():
  eps = lambda x, t: 0.1 * x  # any deterministic network.
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  key = jax.random.key(42)
  full = diffusion.ddim_generate(eps, x, t_0=500, n_steps=6, eta=0.7, key=key, sample_index=jnp.arange(10, 14))
  part = diffusion.ddim_generate(eps, x[2:], t_0=500, n_steps=6, eta=0.7, key=key, sample_index=jnp.array([12, 13]))
  np.testing.assert_allclose(np.asarray(full[2:]), np.asarray(part), atol=1e-6)
  reordered = diffusion.ddim_generate(
      eps, x[::-1], t_0=500, n_steps=6, eta=0.7, key=key, sample_index=jnp.arange(13, 9, -1)
  )
  np.testing.assert_allclose(np.asarray(reordered[::-1]), np.asarray(full), atol=1e-6)
  other = diffusion.ddim_generate(
      eps, x, t_0=500, n_steps=6, eta=0.7, key=jax.random.key(43), sample_index=jnp.arange(10, 14)
  )
  assert np.abs(np.asarray(other) - np.asarray(full)).min() > 0
  det = diffusion.ddim_generate(eps, x, t_0=500, n_steps=6)
  assert not np.allclose(np.asarray(det), np.asarray(full))


def test_per_step_outputs(family_eps):
  _, fn, v = family_eps
  x0 = nhwc(v["x0"])
  lat, out = diffusion.ddim_invert(fn, x0, t_0=200, n_steps=5, outputs=("x", "x0", "mid"))
  assert out["x"].shape == (4,) + x0.shape
  np.testing.assert_allclose(np.asarray(out["x"][-1]), np.asarray(lat))
  assert out["mid"].shape[:2] == (4, 2)
  # The first inversion step starts at t = 0, where the x0 prediction is ~ x0 itself.
  assert np.abs(np.asarray(out["x0"][0]) - x0).max() < 0.2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(t_0=0), "t_0 must be an integer in 1..999"),
        (dict(t_0=1000), "t_0 must be an integer in 1..999"),
        (dict(n_steps=1), "n_steps must be an integer >= 2"),
        (dict(t_0=10, n_steps=12), "larger than t_0 \\+ 1"),
        (dict(eta=-0.1), "eta must be >= 0"),
        (dict(eta=0.5), "needs a random key"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match=message):
    diffusion.ddim_generate(lambda x, t: x, x, **kwargs)


def test_beta_schedules():
  for kind in ("linear", "quadratic", "cosine"):
    b = diffusion.beta_schedule(kind)
    assert b.shape == (1000,) and np.all(np.diff(diffusion.Schedule.from_betas(b).alphas_cumprod) < 0)
  with pytest.raises(ValueError, match="beta_schedule"):
    diffusion.beta_schedule("sigmoid")
