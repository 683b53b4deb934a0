r"""Typical discovery's selection rules compared on the SAME candidates.

  python benchmarks/selection.py [--domains=first,histology] [--num_samples=64] [--seeds=0,1]
      [--rules='{"default": {}, "check": {"standardized_check": 0.0}}'] [--workdir=runs/selection]

A candidate of typical discovery depends on its index and the key only, so rules that
judge the denoised candidates differently (``config.discovery`` keys: band,
selection_shrinkage, standardized_check, guard_quantile, ...) can be compared on exactly
the same pool: each batch of candidates is denoised once per domain (memoised by the bytes
of its latents), and every rule's samples are scored by the evaluation (learned features,
the k-NN domain judge) beside renoise at its default strength. Banks and t_0 are what
``sample`` makes for the embedded demo model (``sampling.t_0='auto'``; seed 0's banks for
every seed); seed s keys discovery and renoise as ``sample --config.seed=s`` does.
Prints one table per domain and seed, then each rule's FD over the default's and over
renoise's, and ends with one JSON line. It is how docs/method.md's selection tables
were measured. A rule that changes the strengths (strength_range, strength_sweep) draws its
own candidates from the same keys (more images to denoise, the same noise per candidate
index); partner_weight and the mode are refused: compare those with ``benchmarks/method.py``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from method import ASSETS, DEFAULT_DOMAINS, DOMAINS, parse_domains, parse_seeds  # noqa: E402  (the same target domains)

# Keys that change which candidates exist (not how they are judged).
CANDIDATE_KEYS = ("partner_weight", "partner_neighbours", "mode")
COLUMNS = (
    "frechet_distance",
    "ood_hit_rate",
    "id_fallback_rate",
    "neither_rate",
    "nn_ratio",
    "near_duplicate_rate",
    "coverage",
)


def _memoised(fn, cache: dict | None = None, prefix: str = ""):
  """``fn`` of an array, memoised in ``cache`` by ``prefix`` and the array's bytes."""
  cache = {} if cache is None else cache

  def call(x):
    import numpy as np

    x = np.ascontiguousarray(np.asarray(x))
    k = prefix + hashlib.sha1(x.tobytes() + str(x.shape).encode()).hexdigest()
    if k not in cache:
      cache[k] = np.asarray(fn(x))
    return cache[k]

  call.cache = cache
  return call


class _MemoisedRunner:
  """``runner`` with ``generate`` memoised: every rule's judges make the model's own images."""

  def __init__(self, runner):
    self._runner = runner
    self.generate = _memoised(runner.generate)

  def __getattr__(self, name):
    return getattr(self._runner, name)


def domain_setup(name: str, workdir: str) -> dict:
  """What ``sample`` makes for domain ``name`` with the demo config (banks in ``workdir/name``, seed 0's
  keys) and the evaluation of the method benchmark: config, runner, banks, evaluator, ood, prior."""
  import jax

  from discovery_jax import cli, configlib, discovery, parallel, settings
  from discovery_jax.evaluate import evaluation_options
  from discovery_jax.data.bank import prepare_banks
  from discovery_jax.metrics import evaluator as ev_lib
  from discovery_jax.sample import KEY_ID_BANK

  fewshot_dir, heldout_dir = DOMAINS[name]
  config = configlib.load_config_file(os.path.join(REPO, "configs", "demo.py"))
  config.data.ood_dir, config.data.eval_dir = fewshot_dir, heldout_dir
  model = cli.load_model(config)
  runner = cli.make_runner(config, model, parallel.make_mesh())
  banks = prepare_banks(
      settings.bank_sources(config),
      os.path.join(workdir, name),
      runner,
      model_fingerprint=model.fingerprint,
      key=jax.random.fold_in(jax.random.key(0), KEY_ID_BANK),
  )
  inputs = settings.input_options(config)
  config.evaluate.id_dir = os.path.join(ASSETS, "id_heldout")
  evaluator = ev_lib.Evaluator(
      evaluation_options(config), ev_lib.load_real_data(fewshot_dir, heldout_dir, config.evaluate.id_dir, inputs)
  )
  ood = banks["ood"].latents()
  return {
      "config": config,
      "runner": runner,
      "banks": banks,
      "evaluator": evaluator,
      "ood": ood,
      "prior": discovery.fit_prior(ood),
  }


def run_domain(name: str, rules: dict, seeds: list[int], num_samples: int, workdir: str) -> dict:
  import jax
  import numpy as np

  from discovery_jax import discovery
  from discovery_jax.sample import KEY_BASELINE, KEY_DISCOVERY, typical_judges

  setup = domain_setup(name, workdir)
  config, runner, banks, evaluator = setup["config"], setup["runner"], setup["banks"], setup["evaluator"]
  ood, prior = setup["ood"], setup["prior"]
  denoise = _memoised(lambda z: np.clip(runner.generate(z), -1.0, 1.0))
  memo_runner = _MemoisedRunner(runner)
  feature_cache: dict = {}  # extractor description + image bytes -> features, shared by the rules
  out = {"t_0": int(runner.t_0), "seeds": {}}
  for seed in seeds:
    root = jax.random.key(seed)
    renoise = denoise(
        discovery.renoise_baseline(
            ood,
            num_samples,
            jax.random.fold_in(root, KEY_BASELINE),
            float(config.discovery.renoise_strength),
            prior=prior,
        )
    )
    rows = {"renoise": {k: evaluator.evaluate(renoise, name="renoise").get(k) for k in COLUMNS}}
    for rule, overrides in rules.items():
      t = time.time()
      judges = typical_judges(rule_config(config, overrides), banks, memo_runner)  # as `sample` judges
      for k in ("features", "guard_features"):
        if judges[k] is not None:
          judges[k] = _memoised(judges[k], feature_cache, json.dumps(judges[k].describe(), sort_keys=True))
      result = discovery.discover_typical(
          ood,
          num_samples=num_samples,
          key=jax.random.fold_in(root, KEY_DISCOVERY),
          denoise=denoise,
          prior=prior,
          **judges,
      )
      row = evaluator.evaluate(result.images, name=rule) if result.num_accepted > 1 else {}
      rows[rule] = {k: row.get(k) for k in COLUMNS} | {
          "num_accepted": result.num_accepted,
          "num_candidates": result.num_candidates,
          "mean_strength": float(np.mean(result.strength)) if result.num_accepted else None,
          "fewshot_cells_used": result.summary()["fewshot_cells"]["used"],
          "num_near_misses": result.summary()["num_near_misses"],
          "seconds": round(time.time() - t, 1),
      }
      print(
          f"{name} seed {seed} {rule}: {result.num_accepted}/{num_samples} from {result.num_candidates} candidates,"
          f" {time.time() - t:.0f} s",
          file=sys.stderr,
          flush=True,
      )
    out["seeds"][seed] = rows
    print(
        f"\n## {name} (t_0 = {runner.t_0}), seed {seed}: {sum(len(v) for v in denoise.cache.values())} images denoised for all rules"
    )
    print(
        "| rule | FD | target | in-domain | neither | novelty | near-dups | coverage | found (near misses) | candidates |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rule, r in rows.items():
      found = f"{r.get('num_accepted', num_samples)}" + (
          f" ({r['num_near_misses']})" if r.get("num_near_misses") else ""
      )
      cells = [r.get(k) for k in COLUMNS] + [found, r.get("num_candidates", "-")]
      print(f"| {rule} | " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
  return out


def rule_config(config, overrides: dict):
  """A copy of ``config`` with ``overrides`` applied to ``config.discovery``, checked as
  ``sample`` checks it."""
  from discovery_jax import settings

  bad = sorted(set(overrides) & set(CANDIDATE_KEYS))
  if bad:
    raise SystemExit(f"--rules: {bad} change the candidates themselves; compare them with benchmarks/method.py")
  c = copy.deepcopy(config)  # overrides go in before the references resolve: a FieldReference of
  # field_type object (step_spectrum: 'auto' or a number) takes either, its resolved copy only its first type
  for k, v in overrides.items():
    if k not in c.discovery:
      raise SystemExit(f"--rules: config.discovery has no key {k!r}")
    c.discovery[k] = tuple(v) if isinstance(v, list) else v
  c = c.copy_and_resolve_references()
  try:
    settings.typical_options(c)
  except ValueError as e:
    raise SystemExit(f"--rules: {e}") from None
  return c


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--domains", default=",".join(DEFAULT_DOMAINS), help=f"of {list(DOMAINS)}")
  parser.add_argument("--num_samples", type=int, default=64)
  parser.add_argument("--seeds", default="0")
  parser.add_argument(
      "--rules",
      default=json.dumps(
          {"default": {}, "check": {"standardized_check": 0.0}, "zscores": {"selection_shrinkage": 0.0}}
      ),
      help="JSON object: rule name -> config.discovery overrides; the first is the baseline of the ratios",
  )
  parser.add_argument("--workdir", default=os.path.join(REPO, "runs", "selection"))
  args = parser.parse_args()
  names, seeds = parse_domains(args.domains), parse_seeds(args.seeds)
  try:
    rules = json.loads(args.rules)
  except ValueError as e:
    raise SystemExit(f"--rules: {e}") from None
  if not isinstance(rules, dict) or not rules or not all(isinstance(v, dict) for v in rules.values()):
    raise SystemExit(f"--rules: expected a JSON object of rule name -> overrides, got {args.rules!r}")
  from discovery_jax import configlib

  demo = configlib.load_config_file(os.path.join(REPO, "configs", "demo.py"))
  for overrides in rules.values():  # a bad rule fails now, not after the first domain's banks
    rule_config(demo, overrides)
  results = {name: run_domain(name, rules, seeds, args.num_samples, args.workdir) for name in names}
  base = next(iter(rules))
  ratios = {}
  print(f"\nFD ratios (mean over seeds {seeds}): rule / {base}, rule / renoise")
  for name, res in results.items():
    for rule in rules:
      fd = [res["seeds"][s][rule]["frechet_distance"] for s in seeds]
      fb = [res["seeds"][s][base]["frechet_distance"] for s in seeds]
      fr = [res["seeds"][s]["renoise"]["frechet_distance"] for s in seeds]
      if any(v is None for v in fd + fb):
        continue
      ratios[f"{name}/{rule}"] = {
          "vs_" + base: round(sum(fd) / sum(fb), 4),
          "vs_renoise": round(sum(fd) / sum(fr), 4),
      }
      print(
          f"  {name:11s} {rule:12s} {ratios[f'{name}/{rule}']['vs_' + base]:.3f}  {ratios[f'{name}/{rule}']['vs_renoise']:.3f}"
      )
  print(
      json.dumps(
          {
              "benchmark": "selection",
              "num_samples": args.num_samples,
              "seeds": seeds,
              "rules": rules,
              "ratios": ratios,
              "domains": results,
          },
          default=float,
      )
  )


if __name__ == "__main__":
  main()
