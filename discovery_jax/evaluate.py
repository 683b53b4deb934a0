r"""Scores generated sets against held-out real data and writes a comparison table.

  python -m discovery_jax.evaluate --config=configs/demo.py --workdir=runs/demo

Generated sets: ``config.evaluate.generated`` ("name=path,name=path"; a path is a
``samples.npy``, a sample output folder or a folder of images), by default every
``WORKDIR/samples/<method>/`` that ``sample`` wrote; plus the fine-tuning
baseline from ``config.evaluate.finetune_dir`` (a ``finetune`` workdir), whose
``samples.npy`` come from the fine-tuned model and ``base_samples.npy`` from the
unchanged base model with the same noise. Real data: ``config.data.ood_dir``
(few-shot), ``config.data.eval_dir`` (held-out target), ``config.evaluate.id_dir``
or ``config.data.id_dir`` (held-out in-domain, for the domain classifier).

Writes ``WORKDIR/evaluation/report.json`` and ``comparison.md`` (and physical-unit
plots for scientific data).
"""

from __future__ import annotations

import glob
import os

import ml_collections
import numpy as np
from absl import logging

from discovery_jax import cli, fileio, plots, settings
from discovery_jax.data import images
from discovery_jax.metrics import evaluator as evaluation


def generated_sets(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, str]]:
  spec = config.evaluate.get("generated") or ""
  if spec:
    sets = []
    for part in spec.split(","):
      if "=" not in part:
        raise ValueError(f"config.evaluate.generated: {part!r} is not name=path")
      name, path = part.split("=", 1)
      sets.append((name.strip(), path.strip()))
    return sets
  found = sorted(glob.glob(os.path.join(workdir, "samples", "*", "samples.npy")))
  found = [p for p in found if ".superseded-" not in os.path.basename(os.path.dirname(p))]  # older runs' outputs
  for partial in sorted(glob.glob(os.path.join(workdir, "samples", "*", "samples.npy.partial"))):
    if ".superseded-" not in partial and partial[: -len(".partial")] not in found:
      logging.warning(
          "%s: not evaluated: its sampling run did not finish (rerun `python -m discovery_jax.sample` on %s to "
          "resume it)",
          os.path.dirname(partial),
          workdir,
      )
  return [(os.path.basename(os.path.dirname(p)), p) for p in found]


def save_comparison_figure(path: str, panels: list[tuple[str, np.ndarray]], per_row: int = 12) -> None:
  """One labelled row of the first ``per_row`` images of each set (real sets first): the
  comparison a person reads at a glance, next to the table."""
  if not panels or per_row < 1:
    return
  fig = plots.new_figure((per_row * 0.8 + 1.6, len(panels) * 0.95 + 0.2), dpi=110)
  for i, (name, x) in enumerate(panels):
    ax = fig.add_subplot(len(panels), 1, i + 1)
    grid = images.to_uint8(images.make_grid(np.asarray(x[:per_row], np.float32), ncol=per_row))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
  plots.save_figure(fig, path)


def evaluation_options(config: ml_collections.ConfigDict) -> evaluation.EvaluationOptions:
  ev = config.evaluate
  seed = ev.get("feature_seed")
  return evaluation.EvaluationOptions(
      features=ev.features,
      inception_path=settings.path_or_none(ev.get("inception_path")),
      feature_seed=None if seed is None else int(seed),
      kid_subset_size=int(ev.get("kid_subset_size") or 100),
      seed=int(ev.get("seed") or 0),
  )


def check_options(config: ml_collections.ConfigDict) -> evaluation.EvaluationOptions:
  """``config.evaluate`` checked before any work (a bad name fails now, not after sampling)."""
  from discovery_jax.metrics import features

  options = evaluation_options(config)
  if options.features not in features.EXTRACTORS:
    raise ValueError(f"config.evaluate.features={options.features!r}: choose from {list(features.EXTRACTORS)}")
  if options.features == "inception" and not (options.inception_path and os.path.isdir(options.inception_path)):
    raise ValueError(
        f"config.evaluate.features='inception' needs config.evaluate.inception_path, a folder written by "
        f"`python -m convert.inception` (got {options.inception_path!r}); use 'random_conv' where no weights exist"
    )
  return options


def run_evaluation(
    config: ml_collections.ConfigDict, workdir: str, extra_sets: list[tuple[str, np.ndarray]] | None = None
) -> dict:
  """Evaluates every generated set; returns the report (also written to disk)."""
  out_dir = os.path.join(workdir, "evaluation")
  os.makedirs(out_dir, exist_ok=True)
  inputs = settings.input_options(config)
  real = evaluation.load_real_data(
      settings.path_or_none(config.data.ood_dir),
      settings.path_or_none(config.data.get("eval_dir")),
      settings.path_or_none(config.evaluate.get("id_dir")) or settings.path_or_none(config.data.get("id_dir")),
      inputs,
  )
  ev = evaluation.Evaluator(evaluation_options(config), real)
  finetune_dir = settings.path_or_none(config.evaluate.get("finetune_dir"))
  base_samples = None
  if finetune_dir and os.path.isfile(os.path.join(finetune_dir, "base_samples.npy")):
    base_samples = np.load(os.path.join(finetune_dir, "base_samples.npy"))
  rows = [ev.reference()]
  science = {}
  sets = [(n, evaluation.load_generated(p, inputs, real.transform)) for n, p in generated_sets(config, workdir)]
  sets += list(extra_sets or [])
  if not sets and not finetune_dir:
    raise ValueError(
        f"nothing to evaluate: no {workdir}/samples/*/samples.npy and config.evaluate.generated is "
        "empty (run `python -m discovery_jax.sample` first)"
    )
  for name, samples in sets:
    # Tuning-free methods leave the model unchanged: its ID quality is the base model's.
    rows.append(ev.evaluate(samples, name=name, id_samples=base_samples))
    science[name] = ev.science(samples, out_dir, name)
  if finetune_dir:
    tuned = os.path.join(finetune_dir, "samples.npy")
    if not os.path.isfile(tuned):
      raise ValueError(
          f"config.evaluate.finetune_dir={finetune_dir!r} has no samples.npy "
          "(run `python -m discovery_jax.finetune` into it first)"
      )
    tuned_samples = np.load(tuned)
    rows.append(ev.evaluate(tuned_samples, name="vanilla fine-tuning", id_samples=tuned_samples))
    science["vanilla fine-tuning"] = ev.science(tuned_samples, out_dir, "vanilla_fine-tuning")
    sets.append(("vanilla fine-tuning", tuned_samples))
  panels = [("few-shot (real)", real.fewshot), ("held-out (real)", real.heldout_ood)] + sets
  save_comparison_figure(os.path.join(out_dir, "comparison.png"), panels, per_row=int(config.evaluate.figure_samples))
  table = evaluation.comparison_table(rows)
  report = {
      "setup": ev.describe(),
      "rows": rows,
      "table_markdown": table,
      "science": {k: v for k, v in science.items() if v is not None} or None,
      "notes": {
          "ood_hit_rate": "fraction of samples a classifier trained on held-out real ID vs OOD calls OOD",
          "nn_ratio": "median NN distance of samples to the few-shot set / the same for held-out real "
          "target images (>= 1: as far from the few-shot set as new real images)",
          "id_frechet_distance": "the model's own unconditional samples vs held-out ID images (model "
          "quality in its own domain after the method)",
          "features": ev.extractor.describe(),
      },
  }
  cli.write_json(os.path.join(out_dir, "report.json"), report)
  fileio.atomic_write_text(os.path.join(out_dir, "comparison.md"), table + "\n")
  return report


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  check_options(config)
  cli.prepare_workdir(workdir, config, "evaluate")
  report = run_evaluation(config, workdir)
  print(report["table_markdown"])
  print(f"-> {os.path.join(workdir, 'evaluation')}")


if __name__ == "__main__":
  cli.run(main, "evaluate")
