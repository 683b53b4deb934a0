"""The base model's own features (h-space): what the typical discovery's guard sees."""

import numpy as np
import pytest

from discovery_jax import diffusion, models
from discovery_jax.metrics import features as features_lib

DEMO_MODEL = "discovery_jax/assets/demo/model"


@pytest.fixture(scope="module")
def extractor():
  module, params = models.load(DEMO_MODEL)
  return features_lib.model_extractor(diffusion.eps_fn(module, params), diffusion.DEFAULT_SCHEDULE, batch_size=8)


@pytest.mark.slow
def test_features_depend_on_the_image_alone(extractor):
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (11, 32, 32, 1)).astype(np.float32)
  whole = extractor(images)
  assert whole.shape[0] == 11 and np.isfinite(whole).all()
  np.testing.assert_allclose(extractor(images[3:4]), whole[3:4], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(extractor(images), whole)
  assert np.abs(whole[0] - whole[1]).max() > 1e-3
  assert extractor.describe()["timesteps"] == [0, 50, 150]


def test_bad_timesteps_are_refused():
  with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 1000\), got \(1000,\)"):
    features_lib.model_extractor(None, diffusion.DEFAULT_SCHEDULE, timesteps=(1000,))
