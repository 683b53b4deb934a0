"""Sharded kernels on 8 simulated CPU devices equal the single-device result."""

import jax
import numpy as np
import pytest

from convert import torch_to_flax
from discovery_jax import diffusion, discovery as geometry, models, parallel, runner as inversion
from discovery_jax.optim import trainer as training
from tests import helpers


@pytest.fixture(scope="module")
def eps(vectors_available):
  assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
  cfg = helpers.vector_model_config("iddpm")
  return diffusion.eps_fn(
      models.create_model(cfg), torch_to_flax.convert_state_dict(helpers.vector_state_dict("iddpm"), cfg)
  )


@pytest.mark.slow
def test_sharded_invert_and_generate_equal_single_device(eps):
  x = np.random.default_rng(0).uniform(-1, 1, (13, 32, 32, 3)).astype(np.float32)
  one = inversion.DDIMRunner(eps, 400, 5, batch_size=2, mesh=parallel.make_mesh(1))
  eight = inversion.DDIMRunner(eps, 400, 5, batch_size=2, mesh=parallel.make_mesh(8))
  assert eight.global_batch == 16 and one.global_batch == 2 and eight.batch_size == 2
  lat1, lat8 = one.invert(x), eight.invert(x)
  assert np.abs(lat1 - lat8).max() <= 1e-5
  key = jax.random.key(3)
  idx = np.arange(100, 113)
  gen1 = one.generate(lat1, eta=0.7, key=key, sample_index=idx)
  gen8 = eight.generate(lat1, eta=0.7, key=key, sample_index=idx)
  assert np.abs(gen1 - gen8).max() <= 1e-5
  # And the unsharded library call agrees too.
  np.testing.assert_allclose(np.asarray(diffusion.ddim_invert(eps, x, t_0=400, n_steps=5)), lat1, atol=1e-5)


def test_sharded_candidate_scoring_equals_single_device():
  rng = np.random.default_rng(1)
  d = 3 * 16 * 16
  ood = rng.normal(0.3, 1.0, (40, 16, 16, 3)).astype(np.float32)
  idb = rng.normal(-0.3, 1.0, (40, 16, 16, 3)).astype(np.float32)
  targets = geometry.compute_targets(ood, idb, num_refs=5, key=jax.random.key(0))
  candidates = rng.normal(0.2, 1.0, (300, 16, 16, 3)).astype(np.float32)
  guard = geometry.fit_guard(ood, idb)
  a = geometry.score_candidates(candidates, idb[:5], ood[:5], targets, guard=guard)
  b = geometry.score_candidates(candidates, idb[:5], ood[:5], targets, guard=guard, mesh=parallel.make_mesh(8))
  for k in ("stats", "guard_logit"):
    assert np.abs(a[k] - b[k]).max() <= 1e-5 * max(1.0, np.abs(a[k]).max()), k
  np.testing.assert_array_equal(a["accepted"], b["accepted"])
  assert d == candidates[0].size


@pytest.mark.slow
def test_data_parallel_gradients_equal_single_device():
  """The loss and its gradient on a batch sharded over 8 devices equal the
  single-device ones (what a data-parallel training step relies on)."""
  cfg = helpers.small_ddpm_config(in_channels=1, out_ch=1)
  module = models.create_model(cfg)
  params = models.init_params(module, jax.random.key(0))
  x = np.random.default_rng(2).uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32)
  idx = np.arange(16, dtype=np.uint32)
  key = jax.random.key(4)
  alphas = jax.numpy.asarray(diffusion.DEFAULT_SCHEDULE.alphas_cumprod, jax.numpy.float32)
  grad_fn = jax.jit(
      jax.value_and_grad(lambda p, x, i: training.diffusion_loss(module, p, x, i, key, alphas, 1, hflip=True))
  )
  results = []
  for n in (1, 8):
    mesh = parallel.make_mesh(n)
    loss, grads = grad_fn(
        parallel.replicate(params, mesh), parallel.shard_batch(x, mesh), parallel.shard_batch(idx, mesh)
    )
    results.append((float(loss), jax.device_get(grads)))
  (l1, g1), (l8, g8) = results
  assert abs(l1 - l8) <= 1e-5 * max(1.0, abs(l1))
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g8)):
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(a).max())

  # One full optimizer step on 8 devices runs and gives the same loss.
  tc = training.TrainOptions(steps=1, batch_size=8, learning_rate=1e-3, warmup_steps=0, grad_clip=1.0, ema_decay=0.9)
  tx = training.make_optimizer(tc)
  step = training.make_train_step(module, tx, diffusion.DEFAULT_SCHEDULE.alphas_cumprod, 1, 0.9, True)
  mesh = parallel.make_mesh(8)
  state = parallel.replicate(training.init_state(params, tx), mesh)
  state, metrics = step(state, parallel.shard_batch(x, mesh), parallel.shard_batch(idx, mesh), key)
  # The step draws with fold_in(key, step): step 0's loss on one device, unsharded.
  expected = float(training.diffusion_loss(module, params, x, idx, jax.random.fold_in(key, 0), alphas, 1, hflip=True))
  assert abs(float(metrics["loss"]) - expected) <= 1e-5 * max(1.0, abs(expected)) and int(state.step) == 1
  np.testing.assert_array_equal(np.asarray(params["conv_in"]["kernel"]).shape, (3, 3, 1, 32))  # not donated away.


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rejection", "optimize"])
def test_discovery_on_eight_devices_is_bitwise_the_single_device_result(mode):
  rng = np.random.default_rng(0)
  ood = rng.normal(0.05, 1, (40, 16, 16, 3)).astype(np.float32)
  idb = rng.normal(-0.05, 1, (40, 16, 16, 3)).astype(np.float32)
  kw = dict(num_samples=4, key=jax.random.key(1), mode=mode, opt_steps=30, num_refs=5, compare=False)
  a = geometry.discover(ood, idb, **kw)
  b = geometry.discover(ood, idb, mesh=parallel.make_mesh(8), **kw)
  assert a.num_accepted == b.num_accepted == 4
  np.testing.assert_array_equal(a.candidate_index, b.candidate_index)
  np.testing.assert_array_equal(a.latents, b.latents)
  np.testing.assert_array_equal(a.stats, b.stats)
