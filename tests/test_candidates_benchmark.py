"""benchmarks/candidates.py's arithmetic: the AUC that says whether a search-side score sees the
evaluation judge's misses, the per-strength table, and its refusals of bad arguments."""

import os
import sys

import numpy as np
import pytest

from tests import helpers

sys.path.insert(0, os.path.join(helpers.REPO, "benchmarks"))

import candidates  # noqa: E402  (benchmarks/candidates.py)


def test_auc_is_one_when_every_miss_scores_higher_zero_when_lower_and_half_when_blind():
  miss = np.array([True, True, False, False, False])
  assert candidates.auc([5.0, 4.0, 1.0, 2.0, 3.0], miss) == 1.0
  assert candidates.auc([0.0, 1.0, 2.0, 3.0, 4.0], miss) == 0.0
  assert candidates.auc(np.ones(5), miss) == 0.5  # one score for all: blind, ties counted half
  assert candidates.auc([3.0, 1.0, 3.0, 0.0, 2.0], miss) == pytest.approx(
      (0.5 + 1 + 1 + 0 + 1 + 0) / 6
  )  # misses 3 and 1 against 3, 0, 2
  assert candidates.auc([1.0, 2.0], [True, True]) is None  # no hits to rank against


def test_auc_matches_the_pairwise_count_on_random_scores_with_ties():
  rng = np.random.default_rng(0)
  score = rng.integers(0, 6, 200).astype(float)
  miss = rng.random(200) < 0.3
  bad, good = score[miss], score[~miss]
  pairwise = np.mean(bad[:, None] > good[None, :]) + 0.5 * np.mean(bad[:, None] == good[None, :])
  assert candidates.auc(score, miss) == pytest.approx(pairwise)


def test_strength_quintiles_count_each_bin_and_read_the_target_rate_among_the_passed_only():
  strength = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
  far = strength > 0.6
  target = strength < 0.4
  passed = ~far
  rows = candidates.strength_quintiles(strength, {"too_far": far}, target, passed, num_bins=3)
  assert [r["num"] for r in rows] == [2, 2, 2]
  assert [r["strength"] for r in rows] == [[0.1, 0.2], [0.3, 0.5], [0.7, 0.9]]
  assert [r["too_far"] for r in rows] == [0.0, 0.0, 1.0]
  assert [r["target"] for r in rows] == [1.0, 0.5, 0.0]
  assert rows[1]["target_among_passed"] == 0.5 and rows[2]["target_among_passed"] is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--domains=nowhere"], "nowhere"),
        (["--num_candidates=4"], "at least 10"),
        (["--rule=[1]"], "JSON object"),
        (['--rule={"partner_weight": 0.5}'], "change the candidates"),
        (['--rule={"no_such_key": 1}'], "no key 'no_such_key'"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(monkeypatch, argv, message):
  monkeypatch.setattr(sys, "argv", ["candidates.py", *argv])
  with pytest.raises(SystemExit, match=message):
    candidates.main()


def test_the_quintiles_report_the_median_novelty_of_the_passed_candidates():
  strength = np.array([0.1, 0.2, 0.3, 0.4])
  passed = np.array([True, False, True, True])
  rows = candidates.strength_quintiles(strength, {}, passed, passed, novelty=[5.0, 99.0, 1.0, 3.0], num_bins=2)
  assert [r["novelty_among_passed"] for r in rows] == [5.0, 2.0]  # 99 did not pass
