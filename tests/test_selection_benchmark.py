"""benchmarks/selection.py's rules: every ``config.discovery`` key a rule names is applied as
``sample --config.discovery.<key>=`` would apply it, or refused with the key's name."""

import os
import sys

import pytest

from discovery_jax import configlib
from tests import helpers

sys.path.insert(0, os.path.join(helpers.REPO, "benchmarks"))

import selection  # noqa: E402  (benchmarks/selection.py)


def _demo_config():
  return configlib.load_config_file(os.path.join(helpers.REPO, "configs", "demo.py"))


def test_a_rule_may_set_the_step_spectrum_to_a_number_although_the_default_is_auto():
  config = _demo_config()
  assert config.discovery.step_spectrum == "auto"
  filtered = selection.rule_config(config, {"step_spectrum": -1.0, "strength_range": [0.1, 0.5]})
  assert filtered.discovery.step_spectrum == -1.0 and tuple(filtered.discovery.strength_range) == (0.1, 0.5)
  assert selection.rule_config(config, {}).discovery.step_spectrum == "auto"
  assert config.discovery.step_spectrum == "auto"  # the rule changed a copy


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"partner_weight": 0.5}, "change the candidates"),
        ({"no_such_key": 1}, "no key 'no_such_key'"),
        ({"step_spectrum": 7.0}, "step_spectrum"),
    ],
)
def test_a_rule_that_cannot_be_judged_on_shared_candidates_or_is_invalid_is_refused(overrides, message):
  with pytest.raises(SystemExit, match=message):
    selection.rule_config(_demo_config(), overrides)
