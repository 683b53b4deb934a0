r"""The public method benchmark: which method gives new, diverse, target-domain samples?

  python benchmarks/method.py [--domains=first,digits,...] [--num_samples=128] [--workdir=runs/method]

For the embedded demo base model (a DDPM trained on Animal-MNIST silhouettes) and every
target domain (the demo's FIRST radio galaxies and the offline domains under
``benchmarks/domains``: 32 few-shot images and a disjoint held-out set each, built by
``benchmarks/domains/prepare.py``), it runs, with default settings and equal N:

* ``python -m discovery_jax.sample`` with methods discovery, gaussian, renoise;
* renoise again at other strengths, for the fidelity/novelty frontier;
* ``python -m discovery_jax.finetune`` (vanilla fine-tuning on the 32 images);
* ``python -m discovery_jax.evaluate`` on all of them (the learned feature network,
  the k-NN domain judge, held-out ID silhouettes for mode interference),

then prints one table per domain, which acceptance targets discovery meets, writes
``WORKDIR/frontier.png`` (Frechet distance against novelty per method across its knob)
and ends with one JSON line. Every run resumes: rerunning skips finished work.
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
for _name in ("digits", "deep_field", "textures", "histology", "retina"):
  DOMAINS[_name] = (os.path.join(DOMAINS_DIR, _name, "fewshot"), os.path.join(DOMAINS_DIR, _name, "heldout"))
METHODS = ("discovery", "gaussian", "renoise", "vanilla fine-tuning")
# Each method's knob for the frontier: (config override, value) runs beside the default.
KNOBS = {"renoise": ("discovery.renoise_strength", (0.3, 0.7))}


def _run(args: list[str], log: str) -> float:
  start = time.time()
  with open(log, "a") as f:
    proc = subprocess.run([sys.executable, "-m"] + args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
  if proc.returncode:
    raise SystemExit(f"{' '.join(args[:2])} failed (exit {proc.returncode}); see {log}")
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


def run_domain(name: str, work: str, num_samples: int, finetune: bool) -> dict:
  fewshot, heldout = DOMAINS[name]
  root = os.path.join(work, name)
  os.makedirs(root, exist_ok=True)
  log = os.path.join(root, "log.txt")
  common = _common(fewshot, heldout, num_samples)
  seconds = {
      "sample": _run(
          ["discovery_jax.sample"]
          + common
          + [f"--workdir={root}/main", "--config.sample.methods=discovery,gaussian,renoise"],
          log,
      )
  }
  sets = {m: f"{root}/main/samples/{m}/samples.npy" for m in ("discovery", "gaussian", "renoise")}
  for method, (field, values) in KNOBS.items():
    for value in values:
      tag = f"{method}@{value}"
      out = f"{root}/{method}_{str(value).replace(',', '_').strip('()')}"
      if not os.path.isdir(f"{out}/banks") and os.path.isdir(f"{root}/main/banks"):
        shutil.copytree(f"{root}/main/banks", f"{out}/banks")  # same banks: no second inversion.
      seconds[tag] = _run(
          ["discovery_jax.sample"]
          + common
          + [f"--workdir={out}", f"--config.sample.methods={method}", f"--config.{field}={value}"],
          log,
      )
      sets[tag] = f"{out}/samples/{method}/samples.npy"
  evaluate = (
      ["discovery_jax.evaluate"]
      + common
      + [f"--workdir={root}/main", "--config.evaluate.generated=" + ",".join(f"{k}={v}" for k, v in sets.items())]
  )
  if finetune:
    seconds["finetune"] = _run(["discovery_jax.finetune"] + common + [f"--workdir={root}/finetune"], log)
    evaluate.append(f"--config.evaluate.finetune_dir={root}/finetune")
  seconds["evaluate"] = _run(evaluate, log)
  with open(f"{root}/main/evaluation/report.json") as f:
    report = json.load(f)
  return {"rows": report["rows"], "seconds": {k: round(v, 1) for k, v in seconds.items()}, "setup": report["setup"]}


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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--domains", default=",".join(DOMAINS))
  parser.add_argument("--num_samples", type=int, default=64)
  parser.add_argument("--workdir", default=os.path.join(REPO, "runs", "method"))
  parser.add_argument("--skip_finetune", action="store_true")
  args = parser.parse_args()
  names = [d.strip() for d in args.domains.split(",") if d.strip()]
  unknown = [d for d in names if d not in DOMAINS]
  if unknown:
    raise SystemExit(f"--domains: unknown {unknown}; choose from {list(DOMAINS)}")
  results = {}
  for name in names:
    t = time.time()
    results[name] = run_domain(name, args.workdir, args.num_samples, not args.skip_finetune)
    print(f"\n## {name} ({time.time() - t:.0f} s)")
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
    results[name]["verdict"] = verdict(results[name]["rows"])
    print("discovery targets:", {k: v for k, v in results[name]["verdict"].items() if k not in ("rival_fd",)})
  frontier_figure(results, os.path.join(args.workdir, "frontier.png"))
  summary = {
      name: {
          "verdict": r["verdict"],
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
                  )
              }
              for row in r["rows"]
          },
      }
      for name, r in results.items()
  }
  with open(os.path.join(args.workdir, "method.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print(f"frontier figure: {os.path.join(args.workdir, 'frontier.png')}")
  print(json.dumps({"benchmark": "method", "num_samples": args.num_samples, "domains": summary}))


if __name__ == "__main__":
  main()
