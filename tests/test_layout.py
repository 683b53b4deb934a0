"""The house rules that the package's layout promises: no side effects at import, no
oversized modules, no entry point beside a library of nearly the same name."""

import os
import subprocess
import sys

from tests import helpers

PACKAGE = os.path.join(helpers.REPO, "discovery_jax")


def test_importing_the_cli_sets_no_xla_flags():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  code = "import os, discovery_jax.cli, discovery_jax.sample; print(os.environ.get('XLA_FLAGS'))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=helpers.REPO)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "None"


def test_no_module_over_700_lines():
  long = []
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        with open(os.path.join(root, f)) as fh:
          n = sum(1 for _ in fh)
        if n > 700:
          long.append((os.path.relpath(os.path.join(root, f), PACKAGE), n))
  assert not long, long


def test_no_entry_library_name_pairs_at_the_top_level():
  names = {os.path.splitext(n)[0] for n in os.listdir(PACKAGE) if not n.startswith(("_", "."))}
  stems = {}
  for n in names:
    stems.setdefault(n[:5], []).append(n)
  pairs = [v for v in stems.values() if len(v) > 1]
  assert not pairs, pairs
