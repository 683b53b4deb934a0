"""Test setup: 8 simulated CPU devices (set before jax is imported anywhere) and
the shared reference vectors beside the checkout."""

import os
import sys

import tempfile  # noqa: E402

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One compilation cache for this session, shared with the CLI subprocesses the
# end-to-end tests start: the same small networks are compiled once, not per run.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="discovery_jax_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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
