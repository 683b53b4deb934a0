r"""The public method benchmark: which method gives new, diverse, target-domain samples?

  python benchmarks/method.py [--domains=first,digits,...] [--num_samples=128] [--workdir=runs/method]
      [--seeds=0,1,2] [--override=discovery.balance=fewshot ...]

For the embedded demo base model (a DDPM trained on Animal-MNIST silhouettes) and every
target domain (the demo's FIRST radio galaxies and the offline domains under
``benchmarks/domains``: 32 few-shot images and a disjoint held-out set each, built by
``benchmarks/domains/prepare.py``), it runs, with default settings and equal N. The default
``--domains`` are the six the defaults were chosen on; ``--domains=faces,china,flower,garage,terrain,mri,portrait``
runs the seven added afterwards, which nobody tuned anything to:

* ``python -m discovery_jax.sample`` with methods discovery, gaussian, renoise;
* renoise again at other strengths and discovery again at other strength ranges (each
  method's own knob), for the fidelity/novelty frontier (a knob run that fails, e.g.
  discovery's pool running out at that setting, is reported and left out);
* ``python -m discovery_jax.finetune`` (vanilla fine-tuning on the 32 images);
* ``python -m discovery_jax.evaluate`` on all of them (the learned feature network,
  the k-NN domain judge, held-out ID silhouettes for mode interference),

then prints one table per domain, which acceptance targets discovery meets, writes
``WORKDIR/frontier.png`` (Frechet distance against novelty per method across its knob)
and ends with one JSON line. Every run resumes: rerunning skips finished work.

``--seeds=0,1,2``: the samplers' seed noise is as large as the differences between
methods, so every sampling run is repeated with ``config.seed`` = each seed, on the
SAME banks (seed 0's, copied) and with the same evaluation seed; tables, verdicts and
the JSON then report the mean over seeds (with each number's standard deviation as
``<key>_sd`` and the per-seed FDs). Fine-tuning runs once (seed 0) and is its rival row
at every seed.

``--override=discovery.KEY=VALUE`` (repeatable; ``sampling.`` keys too) runs every
``sample`` with that setting, so a candidate default is measured against the same rivals;
a workdir remembers its overrides and refuses to resume under others.

``--fewshot_size=K`` runs every domain on K of its few-shot images, evenly spaced over the
sorted file names (``fewshot_subset``; e.g. 10, the paper's lower end), held-out set unchanged:
how the methods fare with fewer examples. A workdir remembers it like an override.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(REPO, "discovery_jax", "assets", "demo")
DOMAINS_DIR = os.path.join(REPO, "benchmarks", "domains")
DOMAINS = {"first": (os.path.join(ASSETS, "ood_fewshot"), os.path.join(ASSETS, "ood_heldout"))}
# Domains added after discovery's defaults were chosen, never used to choose them: run with --domains.
UNTUNED_DOMAINS = ("faces", "china", "flower", "garage", "terrain", "mri", "portrait")
for _name in ("digits", "deep_field", "textures", "histology", "retina") + UNTUNED_DOMAINS:
  DOMAINS[_name] = (os.path.join(DOMAINS_DIR, _name, "fewshot"), os.path.join(DOMAINS_DIR, _name, "heldout"))
DEFAULT_DOMAINS = tuple(d for d in DOMAINS if d not in UNTUNED_DOMAINS)
METHODS = ("discovery", "gaussian", "renoise", "vanilla fine-tuning")
# Each method's knob for the frontier: (config override, value) runs beside the default. Discovery's is
# the range its candidates' step toward the prior is drawn from (the default: (0.2, 0.9)).
KNOBS = {
    "renoise": ("discovery.renoise_strength", (0.3, 0.7)),
    "discovery": ("discovery.strength_range", ((0.2, 0.7), (0.3, 1.0))),
}


def knob_label(value) -> str:
  """A knob value as it names a run: '0.3', or '0.1-0.5' for a range (no commas: they separate
  ``evaluate.generated``'s sets)."""
  return "-".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def knob_override(field: str, value) -> str:
  """The command-line override that sets ``field`` to ``value`` (a range as '(low,high)')."""
  text = "(" + ",".join(str(v) for v in value) + ")" if isinstance(value, tuple) else str(value)
  return f"--config.{field}={text}"


def _run(args: list[str], log: str, required: bool = True) -> float | None:
  """Seconds the command took; a failure stops the benchmark, or (``required=False``) is
  reported and returns None."""
  start = time.time()
  with open(log, "a") as f:
    proc = subprocess.run([sys.executable, "-m"] + args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
  if proc.returncode:
    if required:
      raise SystemExit(f"{' '.join(args[:2])} failed (exit {proc.returncode}); see {log}")
    return None
  return time.time() - start


def _common(fewshot: str, heldout: str, num_samples: int) -> list[str]:
  return [
      "--config=configs/demo.py",
      f"--config.data.ood_dir={fewshot}",
      f"--config.data.eval_dir={heldout}",
      f"--config.evaluate.id_dir={os.path.join(ASSETS, 'id_heldout')}",
      f"--config.sample.num_samples={num_samples}",
      f"--config.finetune.num_samples={num_samples}",
      "--config.sample.evaluate=False",
  ]


def sampler_overrides(pairs: list[str]) -> list[str]:
  """``--override KEY=VALUE`` (repeatable): config overrides for every ``sample`` run, as
  ``--config.KEY=VALUE``; KEY must be a ``discovery.`` or ``sampling.`` key."""
  out = []
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not key.startswith(("discovery.", "sampling.")) or not value:
      raise SystemExit(f"--override: expected discovery.KEY=VALUE or sampling.KEY=VALUE, got {pair!r}")
    out.append(f"--config.{key}={value}")
  return out


def _check_overrides(root: str, overrides: list[str]) -> None:
  """A workdir holds one setting: resuming it under other overrides would mix their results."""
  path = os.path.join(root, "overrides.json")
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    if before != overrides:
      raise SystemExit(f"{path}: this workdir was run with overrides {before}, not {overrides}; use another --workdir")
    return
  with open(path + ".tmp", "w") as f:
    json.dump(overrides, f)
  os.replace(path + ".tmp", path)


def fewshot_subset(folder: str, size: int, dest: str) -> str:
  """``size`` of ``folder``'s images, evenly spaced over the sorted names (first and last
  included), copied into ``dest`` (made once; a later call checks it holds the same files)."""
  import numpy as np

  from discovery_jax.data.images import list_files

  files = list_files(folder)
  if not 1 <= size <= len(files):
    raise SystemExit(f"--fewshot_size: {folder} holds {len(files)} images; expected 1..{len(files)}, got {size}")
  chosen = [files[i] for i in np.round(np.linspace(0, len(files) - 1, size)).astype(int)]
  names = [os.path.relpath(f, folder).replace(os.sep, "__") for f in chosen]
  if os.path.isdir(dest):
    if sorted(os.listdir(dest)) != sorted(names):
      raise SystemExit(f"--fewshot_size: {dest} holds another subset; use another --workdir")
    return dest
  tmp = dest + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  for src, name in zip(chosen, names):
    shutil.copyfile(src, os.path.join(tmp, name))
  os.replace(tmp, dest)
  return dest


def run_domain(
    name: str,
    work: str,
    num_samples: int,
    finetune: bool,
    seed: int = 0,
    overrides: list[str] | None = None,
    fewshot_size: int | None = None,
) -> dict:
  fewshot, heldout = DOMAINS[name]
  first = os.path.join(work, name)
  root = first if seed == 0 else os.path.join(first, f"seed{seed}")
  os.makedirs(root, exist_ok=True)
  extra = list(overrides or [])
  _check_overrides(root, extra + ([f"fewshot_size={fewshot_size}"] if fewshot_size else []))
  if fewshot_size:
    fewshot = fewshot_subset(fewshot, fewshot_size, os.path.join(first, f"fewshot_{fewshot_size}"))
  log = os.path.join(root, "log.txt")
  common = _common(fewshot, heldout, num_samples)
  if seed:
    common.append(f"--config.seed={seed}")
    if not os.path.isdir(f"{root}/main/banks"):
      if not os.path.isdir(f"{first}/main/banks"):
        raise SystemExit(f"--seeds: seed {seed} reuses seed 0's banks; run seed 0 first (no {first}/main/banks)")
      shutil.copytree(f"{first}/main/banks", f"{root}/main/banks")  # same banks: only the samplers' keys change
  seconds = {
      "sample": _run(
          ["discovery_jax.sample"]
          + common
          + [f"--workdir={root}/main", "--config.sample.methods=discovery,gaussian,renoise"]
          + extra,
          log,
      )
  }
  sets = {m: f"{root}/main/samples/{m}/samples.npy" for m in ("discovery", "gaussian", "renoise")}
  skipped: dict[str, str] = {}
  for method, (field, values) in KNOBS.items():
    for value in values:
      tag = f"{method}@{knob_label(value)}"
      out = f"{root}/{method}_{knob_label(value)}"
      if not os.path.isdir(f"{out}/banks") and os.path.isdir(f"{root}/main/banks"):
        shutil.copytree(f"{root}/main/banks", f"{out}/banks")  # same banks: no second inversion.
      took = _run(
          ["discovery_jax.sample"]
          + common
          + [f"--workdir={out}", f"--config.sample.methods={method}", knob_override(field, value)]
          + extra,
          log,
          required=False,
      )
      if took is None:  # e.g. discovery's pool running out at this setting: a knob point, not the verdict
        print(f"{name}: {tag} failed and is left out of the table and the frontier; see {log}", flush=True)
        skipped[tag] = log
        continue
      seconds[tag] = took
      sets[tag] = f"{out}/samples/{method}/samples.npy"
  evaluate = (
      ["discovery_jax.evaluate"]
      + common
      + [f"--workdir={root}/main", "--config.evaluate.generated=" + ",".join(f"{k}={v}" for k, v in sets.items())]
  )
  if finetune:
    if not seed:
      seconds["finetune"] = _run(["discovery_jax.finetune"] + common + [f"--workdir={root}/finetune"], log)
    evaluate.append(f"--config.evaluate.finetune_dir={first}/finetune")
  seconds["evaluate"] = _run(evaluate, log)
  with open(f"{root}/main/evaluation/report.json") as f:
    report = json.load(f)
  return {
      "rows": report["rows"],
      "seconds": {k: round(v, 1) for k, v in seconds.items()},
      "setup": report["setup"],
      "failed_knobs": sorted(skipped),
  }


MEANED = (
    "ood_hit_rate",
    "id_fallback_rate",
    "neither_rate",
    "frechet_distance",
    "kid_mean",
    "coverage",
    "density",
    "nn_ratio",
    "frac_near_copies",
    "near_duplicate_rate",
)


def mean_rows(per_seed: list[list[dict]]) -> list[dict]:
  """One row per method: the mean over seeds of each number (null where any seed has
  none), its standard deviation as ``<key>_sd`` and the per-seed FDs."""
  import numpy as np

  out = []
  for row in per_seed[0]:
    same = [next((r for r in rows if r["name"] == row["name"]), None) for rows in per_seed]
    merged = {"name": row["name"], "num_seeds": len(per_seed)}
    for key in MEANED:
      values = [None if r is None else r.get(key) for r in same]
      ok = all(isinstance(v, (int, float)) for v in values)
      merged[key] = float(np.mean(values)) if ok else None
      merged[f"{key}_sd"] = float(np.std(values, ddof=1)) if ok and len(values) > 1 else None
    merged["frechet_distance_per_seed"] = [None if r is None else r.get("frechet_distance") for r in same]
    out.append(merged)
  return out


def verdict(rows: list[dict]) -> dict:
  """The acceptance targets for discovery at default settings on one domain."""
  by = {r["name"]: r for r in rows}
  d = by.get("discovery", {})
  # Reports write null for a number that could not be computed: that target is not met.
  value = lambda row, key, missing: missing if row.get(key) is None else row[key]
  rivals = {m: value(by[m], "frechet_distance", float("inf")) for m in METHODS[1:] if m in by}
  return {
      "target_rate>=0.9": value(d, "ood_hit_rate", 0) >= 0.9,
      "distinct>=0.9": 1 - value(d, "near_duplicate_rate", 1) >= 0.9,
      "novelty>=1": value(d, "nn_ratio", 0) >= 1.0,
      "lowest_fd": all(value(d, "frechet_distance", float("inf")) < v for v in rivals.values()),
      "fd": d.get("frechet_distance"),
      "rival_fd": rivals,
  }


def frontier_figure(results: dict, path: str) -> None:
  from discovery_jax import plots

  names = list(results)
  fig = plots.new_figure((3.2 * len(names), 3.0), dpi=100)
  colors = {"discovery": "C0", "renoise": "C1", "gaussian": "C2", "vanilla fine-tuning": "C3"}
  for i, name in enumerate(names):
    ax = fig.add_subplot(1, len(names), i + 1)
    for r in results[name]["rows"]:
      base = r["name"].split("@")[0]
      if base not in colors:
        continue
      ax.scatter(
          r.get("nn_ratio"),
          r.get("frechet_distance"),
          color=colors[base],
          marker="o" if "@" not in r["name"] else "x",
          label=base if "@" not in r["name"] else None,
      )
    ax.axvline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("novelty (NN ratio)", fontsize=8)
    ax.set_ylabel("Frechet distance", fontsize=8)
    ax.set_yscale("log")
    if i == 0:
      ax.legend(fontsize=7)
  plots.save_figure(fig, path)


def parse_domains(arg: str) -> list[str]:
  """``--domains``: comma-separated names of DOMAINS."""
  names = [d.strip() for d in arg.split(",") if d.strip()]
  unknown = [d for d in names if d not in DOMAINS]
  if unknown:
    raise SystemExit(f"--domains: unknown {unknown}; choose from {list(DOMAINS)}")
  return names


def parse_seeds(arg: str) -> list[int]:
  """``--seeds``: comma-separated integers >= 0, sorted, each once."""
  try:
    seeds = sorted({int(v) for v in arg.split(",") if v.strip()})
  except ValueError:
    raise SystemExit(f"--seeds: expected comma-separated integers, got {arg!r}") from None
  if not seeds or seeds[0] < 0:
    raise SystemExit(f"--seeds: expected integers >= 0, got {arg!r}")
  return seeds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--domains", default=",".join(DEFAULT_DOMAINS), help=f"of {list(DOMAINS)}")
  parser.add_argument("--num_samples", type=int, default=64)
  parser.add_argument("--workdir", default=os.path.join(REPO, "runs", "method"))
  parser.add_argument("--skip_finetune", action="store_true")
  parser.add_argument("--seeds", default="0", help="comma-separated sampler seeds; results are their means")
  parser.add_argument(
      "--override",
      action="append",
      default=[],
      help="discovery.KEY=VALUE or sampling.KEY=VALUE for every sample run (repeatable; use a fresh --workdir)",
  )
  parser.add_argument(
      "--fewshot_size", type=int, default=None, help="use this many of each domain's few-shot images, evenly spaced"
  )
  args = parser.parse_args()
  names, seeds = parse_domains(args.domains), parse_seeds(args.seeds)
  overrides = sampler_overrides(args.override)
  results = {}
  for name in names:
    t = time.time()
    # Seed 0 always runs first: the other seeds copy its banks (and use its fine-tuning).
    by_seed = {
        s: run_domain(name, args.workdir, args.num_samples, not args.skip_finetune, s, overrides, args.fewshot_size)
        for s in dict.fromkeys([0] + seeds)
    }
    runs = [by_seed[s] for s in seeds]
    results[name] = (
        dict(runs[0])
        if len(runs) == 1
        else {
            "rows": mean_rows([r["rows"] for r in runs]),
            "seconds": [r["seconds"] for r in runs],
            "setup": runs[0]["setup"],
            "seeds": seeds,
            "failed_knobs": sorted({k for r in runs for k in r["failed_knobs"]}),
        }
    )
    print(f"\n## {name} ({time.time() - t:.0f} s{'' if len(runs) == 1 else f'; means over seeds {seeds}'})")
    cols = (
        "ood_hit_rate",
        "neither_rate",
        "frechet_distance",
        "kid_mean",
        "coverage",
        "nn_ratio",
        "frac_near_copies",
        "near_duplicate_rate",
    )
    print("| method | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for r in results[name]["rows"]:
      print(
          f"| {r['name']} | "
          + " | ".join(f"{r[c]:.3f}" if isinstance(r.get(c), (int, float)) else "-" for c in cols)
          + " |"
      )
    if len(runs) > 1:
      for r in results[name]["rows"]:
        per = ", ".join("-" if v is None else f"{v:.1f}" for v in r["frechet_distance_per_seed"])
        print(f"  {r['name']}: FD per seed {per}")
    results[name]["verdict"] = verdict(results[name]["rows"])
    print("discovery targets:", {k: v for k, v in results[name]["verdict"].items() if k not in ("rival_fd",)})
  frontier_figure(results, os.path.join(args.workdir, "frontier.png"))
  summary = {
      name: {
          "verdict": r["verdict"],
          "failed_knobs": r["failed_knobs"],
          "rows": {
              row["name"]: {
                  k: row.get(k)
                  for k in (
                      "ood_hit_rate",
                      "frechet_distance",
                      "nn_ratio",
                      "near_duplicate_rate",
                      "frac_near_copies",
                      "coverage",
                      "frechet_distance_sd",
                      "frechet_distance_per_seed",
                  )
                  if k in row or not k.startswith("frechet_distance_")
              }
              for row in r["rows"]
          },
      }
      for name, r in results.items()
  }
  with open(os.path.join(args.workdir, "method.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print(f"frontier figure: {os.path.join(args.workdir, 'frontier.png')}")
  print(
      json.dumps(
          {
              "benchmark": "method",
              "num_samples": args.num_samples,
              "seeds": seeds,
              "overrides": args.override,
              "fewshot_size": args.fewshot_size,
              "domains": summary,
          }
      )
  )


if __name__ == "__main__":
  main()
