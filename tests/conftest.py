"""Test setup: 8 simulated CPU devices (set before jax is imported anywhere) and
the shared reference vectors beside the checkout."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import pytest  # noqa: E402

from tests import helpers  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: a longer end-to-end test")


@pytest.fixture(scope="session")
def vectors_available():
  if not os.path.isdir(helpers.PUBLIC):
    pytest.fail(f"reference vectors not found at {helpers.PUBLIC} (set DISCOVERY_SHARED)")
  return True
