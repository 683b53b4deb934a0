r"""Why discovery misses on a domain: its first candidates, judged by the search and by the evaluation.

  python benchmarks/candidates.py [--domains=faces,terrain] [--num_candidates=256] [--seed=0]
      [--rule='{"spectral_guard": null}'] [--workdir=runs/candidates]

For each target domain of the method benchmark (the embedded demo model; ``sample``'s banks and
t_0, as ``benchmarks/selection.py`` makes them), the first N candidates that typical discovery would
examine under the default options (or ``--rule``'s ``config.discovery`` overrides) are denoised once
and judged twice: by the search's own criteria (too close, too far, off the few-shot spectra, on the
model's side) and by the evaluation's domain judge (the learned features; used here for analysis
only, the search never sees it). Prints, per strength quintile, the judge's target rate, each
criterion's rejection rate, and among the candidates the criteria pass the judge's target rate and the
evaluation's novelty (median over the bin of each one's nearest few-shot distance over the held-out
images' median, in the evaluation's features); then
how well each score the search has ranks the judge's misses (AUC of "not target": 0.5 is blind, 1
perfect), over all candidates and over those the criteria pass; and the share of REAL held-out images
the criteria would pass (not too far, not on the model's side). Ends with one JSON line.

Read it as: a criterion earns its place where its rejections rise with the judge's misses and real
images pass it; where the judge's target rate falls with strength while every criterion stays flat,
the search cannot see what the evaluation sees, and only the strengths decide the target rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from method import DOMAINS, UNTUNED_DOMAINS, parse_domains  # noqa: E402  (the same target domains)
from selection import domain_setup, rule_config  # noqa: E402  (the same banks and rules)

REJECTIONS = ("too_close", "too_far", "off_spectrum", "own_side")


def auc(score, miss) -> float | None:
  """P(score of a miss > score of a hit), ties counted half (Mann-Whitney); None without both kinds."""
  import numpy as np
  from scipy import stats

  score, miss = np.asarray(score, np.float64), np.asarray(miss, bool)
  bad, good = int(miss.sum()), int((~miss).sum())
  if not bad or not good:
    return None
  ranks = stats.rankdata(score)  # 1-based, tied scores sharing their mean rank
  return float((ranks[miss].sum() - bad * (bad + 1) / 2) / (bad * good))


def strength_quintiles(strength, flags: dict, target, passed, novelty=None, num_bins: int = 5) -> list[dict]:
  """Per strength bin (equal counts): its range and size, the mean of each boolean in ``flags``,
  the judge's ``target`` rate, and among the ``passed`` candidates the target rate and the median
  of ``novelty`` (per candidate; None where nothing passed)."""
  import numpy as np

  strength = np.asarray(strength, np.float64)
  order = np.argsort(strength, kind="stable")
  rows = []
  for part in np.array_split(order, num_bins):
    if not len(part):
      continue
    row = {"strength": [float(strength[part].min()), float(strength[part].max())], "num": int(len(part))}
    row.update({k: float(np.mean(np.asarray(v, bool)[part])) for k, v in flags.items()})
    row["target"] = float(np.mean(np.asarray(target, bool)[part]))
    kept = part[np.asarray(passed, bool)[part]]
    row["target_among_passed"] = float(np.mean(np.asarray(target, bool)[kept])) if len(kept) else None
    if novelty is not None:
      row["novelty_among_passed"] = float(np.median(np.asarray(novelty)[kept])) if len(kept) else None
    rows.append(row)
  return rows


def run_domain(name: str, overrides: dict, seed: int, num_candidates: int, workdir: str) -> dict:
  import jax
  import numpy as np

  from discovery_jax import discovery
  from discovery_jax.metrics import judge as judge_lib
  from discovery_jax.metrics import scores as metric_scores
  from discovery_jax.sample import KEY_DISCOVERY, typical_judges

  setup = domain_setup(name, workdir)
  config = rule_config(setup["config"], overrides)
  runner, ood, prior, evaluator = setup["runner"], setup["ood"], setup["prior"], setup["evaluator"]
  judges = typical_judges(config, setup["banks"], runner)
  options, step_info = discovery.resolve_step(judges["options"], ood, prior)
  z, _, strength = discovery.typical_candidates(
      ood,
      prior,
      jax.random.fold_in(jax.random.key(seed), KEY_DISCOVERY),
      np.arange(num_candidates),
      options.strength_range,
      options.partner_weight,
      options.partner_neighbours,
      num_candidates if options.strength_sweep else 0,  # the N candidates are the whole pool
      discovery.step_filter(ood, prior, options),
  )
  images = np.clip(runner.generate(z), -1.0, 1.0)
  features, guard_features = judges["features"], judges["guard_features"]
  criteria = discovery.fit_criteria(options, features, judges["fewshot_images"], judges["own_images"], guard_features)
  in_guard_space = guard_features is not None and criteria.discriminant is not None

  def judged(x):
    """The criteria's verdict on images ``x``, and the features their discriminant guard reads."""
    selection = features(x)
    guard_view = guard_features(x) if in_guard_space else None
    return criteria.judge(selection, guard_view, images=x), selection if guard_view is None else guard_view

  verdict, guard_view = judged(images)
  eval_features = evaluator.extractor(images)
  labels = evaluator.judge.verdicts(eval_features, judge_lib.pixel_contrast(images))
  # The evaluation's novelty, per candidate: its nearest few-shot distance over the held-out images' median one.
  nearest = lambda x: metric_scores.nearest_neighbours(x, evaluator.few)[0]
  novelty = nearest(eval_features) / np.median(nearest(evaluator.held))
  target = labels == judge_lib.TARGET
  passed = ~(verdict["too_close"] | verdict["too_far"] | verdict["own_side"])
  held, _ = judged(evaluator.real.heldout_ood)
  scores = {"strength": strength, "nearest_fewshot": verdict["nn_fewshot"]}
  if criteria.spectral is not None:
    scores["spectral"] = criteria.spectral.scores(images)
  if criteria.discriminant is not None:  # low scores are the model's side
    scores["guard"] = -criteria.discriminant.scores(guard_view)
  return {
      "t_0": int(runner.t_0),
      "step_power": options.step_spectrum,
      "strength_range": list(options.strength_range),
      "residual_slope": step_info.get("residual_slope"),
      "num_candidates": int(num_candidates),
      "judge_target_rate": float(target.mean()),
      "judge_in_domain_rate": float(np.mean(labels == judge_lib.IN_DOMAIN)),
      "criteria_pass_rate": float(passed.mean()),
      "target_among_passed": float(target[passed].mean()) if passed.any() else None,
      "heldout_pass_rate": float(np.mean(~(held["too_far"] | held["own_side"]))),
      "quintiles": strength_quintiles(strength, {k: verdict[k] for k in REJECTIONS}, target, passed, novelty),
      "auc_all": {k: auc(v, ~target) for k, v in scores.items()},
      "auc_passed": {k: auc(np.asarray(v)[passed], ~target[passed]) for k, v in scores.items()},
  }


def _fmt(v) -> str:
  return "-" if v is None else f"{v:.2f}"


def print_domain(name: str, r: dict) -> None:
  print(
      f"\n## {name} (t_0 = {r['t_0']}, step power {r['step_power']}, strengths {r['strength_range']}):"
      f" judge target {r['judge_target_rate']:.2f} (in-domain {r['judge_in_domain_rate']:.2f}),"
      f" criteria pass {r['criteria_pass_rate']:.2f}, target among passed {_fmt(r['target_among_passed'])},"
      f" real held-out images passed {r['heldout_pass_rate']:.2f}"
  )
  print("| strength | n | target | " + " | ".join(REJECTIONS) + " | passed: target | passed: novelty |")
  print("|---" * (len(REJECTIONS) + 5) + "|")
  for q in r["quintiles"]:
    cells = [f"{q['strength'][0]:.2f}-{q['strength'][1]:.2f}", str(q["num"]), _fmt(q["target"])]
    cells += [_fmt(q[k]) for k in REJECTIONS] + [_fmt(q["target_among_passed"]), _fmt(q["novelty_among_passed"])]
    print("| " + " | ".join(cells) + " |")
  print(
      "AUC of 'not target' (all / passed): "
      + ", ".join(f"{k} {_fmt(r['auc_all'][k])} / {_fmt(r['auc_passed'][k])}" for k in r["auc_all"])
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--domains", default=",".join(UNTUNED_DOMAINS), help=f"of {list(DOMAINS)}")
  parser.add_argument("--num_candidates", type=int, default=256)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--rule", default="{}", help="JSON object of config.discovery overrides (default: none)")
  parser.add_argument("--workdir", default=os.path.join(REPO, "runs", "candidates"))
  args = parser.parse_args()
  names = parse_domains(args.domains)
  if args.num_candidates < 10:
    raise SystemExit(f"--num_candidates: expected at least 10 (five strength bins of two), got {args.num_candidates}")
  try:
    overrides = json.loads(args.rule)
  except ValueError as e:
    raise SystemExit(f"--rule: {e}") from None
  if not isinstance(overrides, dict):
    raise SystemExit(f"--rule: expected a JSON object of config.discovery overrides, got {args.rule!r}")
  from discovery_jax import configlib

  rule_config(configlib.load_config_file(os.path.join(REPO, "configs", "demo.py")), overrides)  # fail now
  results = {}
  for name in names:
    results[name] = run_domain(name, overrides, args.seed, args.num_candidates, args.workdir)
    print_domain(name, results[name])
  print(json.dumps({"benchmark": "candidates", "seed": args.seed, "rule": overrides, "domains": results}))


if __name__ == "__main__":
  main()
