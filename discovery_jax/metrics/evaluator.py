"""Evaluating generated sets against real data: which method works better.

For each generated set (discovery, its baselines, fine-tuning), on one feature space:

* where the samples land (``metrics.judge``): target domain, the model's own domain
  (mode interference) or neither, by a k-NN realism test against real images, so a
  blank, constant or noise image is never a target hit;
* Frechet distance and KID to held-out real target images; precision/recall and
  coverage/density;
* novelty: nearest-neighbour distance to the few-shot set over that of held-out real
  target images; copies of the few-shot set; near-duplicates among the samples;
* for scientific data, pixel histograms and power spectra in physical units;
* for a model that was changed (fine-tuning), its in-domain quality: the
  Frechet distance of its own unconditional samples to held-out ID images.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from absl import logging

from discovery_jax.data import images as images_lib
from discovery_jax.data.inputs import InputOptions, InputSet, load_all
from discovery_jax.metrics import features as features_lib
from discovery_jax.metrics import judge as judge_lib
from discovery_jax.metrics import scores as metrics

TABLE_COLUMNS = (
    ("ood_hit_rate", "target (judge)", "{:.3f}"),
    ("id_fallback_rate", "in-domain", "{:.3f}"),
    ("neither_rate", "neither", "{:.3f}"),
    ("frechet_distance", "FD to held-out OOD", "{:.2f}"),
    ("kid_mean", "KID", "{:.4f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("diversity", "diversity", "{:.3f}"),
    ("coverage", "coverage", "{:.3f}"),
    ("density", "density", "{:.3f}"),
    ("nn_ratio", "novelty (NN ratio)", "{:.3f}"),
    ("frac_near_copies", "copies", "{:.3f}"),
    ("near_duplicate_rate", "near-dups", "{:.3f}"),
    ("id_frechet_distance", "ID FD of the model", "{:.2f}"),
)


@dataclasses.dataclass(frozen=True)
class EvaluationOptions:
  """How generated sets are scored (the typed form of ``config.evaluate``).

  features: 'inception' (FID; needs inception_path), 'random_conv' or 'pixels'.
  """

  features: str = "inception"
  inception_path: str | None = None
  feature_seed: int | None = None
  feature_net_path: str | None = None
  kid_subset_size: int = 100
  seed: int = 0
  judge_k: int = 3
  judge_coverage: float = 0.98
  copy_quantile: float = 0.05
  duplicate_quantile: float = 0.05


SAME_DOMAIN = 0.5  # fewer few-shot images inside the held-out manifold than this: warn, two domains
MIN_HELDOUT = 8  # the judge's reference, calibration and test splits each need a few images.


@dataclasses.dataclass
class RealData:
  """Real images in model space (physical arrays too for scientific data)."""

  fewshot: np.ndarray
  heldout_ood: np.ndarray
  heldout_id: np.ndarray | None
  transform: dict | None = None
  fewshot_physical: np.ndarray | None = None
  heldout_physical: np.ndarray | None = None
  physical_channels: int | None = None
  fewshot_dir: str | None = None  # where they were read from, for messages
  eval_dir: str | None = None


def load_real_data(fewshot_dir: str | None, eval_dir: str | None, id_dir: str | None, inputs: InputOptions) -> RealData:
  """The few-shot set, held-out target images and (optional) held-out ID images."""
  if not fewshot_dir:
    raise ValueError("evaluation needs config.data.ood_dir (the few-shot set, for memorization)")
  if not eval_dir:
    raise ValueError("evaluation needs config.data.eval_dir: held-out real target images")
  fewshot, few_inputs = load_all(fewshot_dir, inputs)
  held, held_inputs = load_all(eval_dir, inputs, transform=few_inputs.transform)
  check_heldout_size(eval_dir, held_inputs, few_inputs, inputs.image.image_size)
  heldout_id = load_all(id_dir, inputs)[0] if id_dir else None
  real = RealData(
      fewshot,
      held,
      heldout_id,
      few_inputs.transform,
      physical_channels=few_inputs.physical_channels,
      fewshot_dir=fewshot_dir,
      eval_dir=eval_dir,
  )
  if few_inputs.transform is not None:
    real.fewshot_physical = to_physical(fewshot, real)
    real.heldout_physical = to_physical(held, real)
  return real


def native_sizes(inputs: InputSet) -> dict[tuple[int, int], int]:
  """(width, height) -> number of files, as stored on disk (image folders; empty otherwise)."""
  if inputs.kind != "image":
    return {}
  from PIL import Image

  sizes: dict[tuple[int, int], int] = {}
  for path in inputs.paths:
    with Image.open(path) as img:  # reads the header only.
      sizes[img.size] = sizes.get(img.size, 0) + 1
  return sizes


def check_heldout_size(eval_dir: str, held: InputSet, fewshot: InputSet, model_size: int) -> None:
  """Refuses held-out images whose stored size differs from the few-shot images' one size:
  both are resized to the model's size, and a different source size changes the scale of
  what the images show, so every score would measure the resize, not the method."""
  few, other = native_sizes(fewshot), native_sizes(held)
  if len(few) != 1 or not other or set(other) == set(few):
    return  # few-shot images of mixed sizes (resizing is then the user's intent), or a match.
  ((fw, fh),) = few
  shown = ", ".join(f"{w}x{h} ({n} files)" for (w, h), n in sorted(other.items(), key=lambda kv: -kv[1])[:3])
  raise images_lib.InputError(
      f"config.data.eval_dir={eval_dir} holds images of {shown}, but the few-shot images "
      f"(config.data.ood_dir) are {fw}x{fh} and the model's are {model_size}x{model_size}: held-out "
      f"images of another size would be resized and scored on the resize; use held-out images of {fw}x{fh}"
  )


def to_physical(x: np.ndarray, real: RealData) -> np.ndarray:
  from discovery_jax.data import scientific, transforms

  t = transforms.Transform.from_dict(real.transform)
  return scientific.from_model_output(x, t, channels=real.physical_channels or 1, clip=True)


class Evaluator:
  """Features of the real sets and the domain judge, computed once.

  The held-out target images are split once (seeded): half joins the few-shot set
  as the judge's reference, a quarter calibrates its radii, and the last quarter is
  never seen by the judge: the "real held-out" row's hit rate is measured on it.
  """

  def __init__(self, options: EvaluationOptions, real: RealData):
    self.real = real
    self.options = options
    self.extractor = features_lib.create_extractor(
        options.features,
        inception_path=options.inception_path,
        feature_net_path=options.feature_net_path,
        image_shape=real.fewshot.shape[1:],
        **_extractor_kwargs(options),
    )
    self.few = self.extractor(real.fewshot)
    self.held = self.extractor(real.heldout_ood)
    self.id = self.extractor(real.heldout_id) if real.heldout_id is not None else None
    n = len(self.held)
    if n < MIN_HELDOUT:
      raise ValueError(
          f"evaluation needs at least {MIN_HELDOUT} held-out target images in config.data.eval_dir, " f"got {n}"
      )
    perm = np.random.default_rng(options.seed).permutation(n)
    quarter = n // 4
    self.split = {
        "reference": np.sort(perm[2 * quarter :]),
        "calibration": np.sort(perm[:quarter]),
        "test": np.sort(perm[quarter : 2 * quarter]),
    }
    reference = np.concatenate([self.few, self.held[self.split["reference"]]])
    contrast = judge_lib.pixel_contrast(
        np.concatenate(
            [real.fewshot, real.heldout_ood[self.split["reference"]], real.heldout_ood[self.split["calibration"]]]
        )
    )
    self.judge = judge_lib.DomainJudge.fit(
        reference,
        self.held[self.split["calibration"]],
        self.id,
        k=options.judge_k,
        coverage=options.judge_coverage,
        target_contrast=contrast,
    )
    self.kid_subset = options.kid_subset_size
    # Are the two folders one domain? A config whose data.ood_dir was changed but not data.eval_dir
    # (the demo's points at the galaxies) would judge every method against another domain's images.
    self.fewshot_in_heldout = float(np.mean(judge_lib.Manifold.fit(self.held, None).score(self.few) <= 1.0))
    if self.fewshot_in_heldout < SAME_DOMAIN:
      logging.warning(
          "evaluation: only %.0f%% of the few-shot images lie inside the held-out images' manifold (real images of "
          "one domain: 91-100%% in the benchmark); are data.ood_dir (%s) and data.eval_dir (%s) the same domain?",
          100 * self.fewshot_in_heldout,
          real.fewshot_dir,
          real.eval_dir,
      )

  def describe(self) -> dict:
    return {
        "features": self.extractor.describe(),
        "num_fewshot": len(self.few),
        "num_heldout_ood": len(self.held),
        "num_heldout_id": 0 if self.id is None else len(self.id),
        "domain_judge": self.judge.describe(),
        "heldout_split": {k: int(len(v)) for k, v in self.split.items()},
        "fewshot_inside_heldout": self.fewshot_in_heldout,
    }

  def reference(self) -> dict:
    """The held-out real target images scored like a method: the yardstick (FD half
    against half; the judge on the quarter it never saw)."""
    return self.evaluate(self.real.heldout_ood, name="real held-out OOD", is_reference=True)

  def evaluate(
      self, samples: np.ndarray, *, name: str, id_samples: np.ndarray | None = None, is_reference: bool = False
  ) -> dict:
    samples = np.asarray(samples, np.float32)
    feats = self.extractor(samples)
    n = len(feats)
    out: dict[str, Any] = {"name": name, "num_samples": n}
    ref = self.held
    pixels = samples
    if is_reference:  # compare half of the held-out set with the other half.
      half = len(self.held) // 2
      feats, ref, pixels = self.held[:half], self.held[half:], self.real.heldout_ood[:half]
      out["num_samples"] = half
    out["frechet_distance"] = metrics.fid_from_features(feats, ref)
    subset = max(2, min(self.kid_subset, len(feats), len(ref)))
    kid = metrics.kid(feats, ref, num_subsets=50, subset_size=subset)
    out["kid_mean"], out["kid_std"] = kid["kid_mean"], kid["kid_std"]
    if len(feats) > 3:
      pr = metrics.precision_recall(ref, feats, k=3)
      out["precision"], out["recall"] = pr["precision"], pr["recall"]
    if len(ref) > 5:
      out.update(judge_lib.coverage_density(ref, feats, k=5))
    out["diversity"] = metrics.diversity(feats)["mean_pairwise_distance"] if len(feats) > 1 else float("nan")
    out["pixel_diversity"] = metrics.pixel_diversity(pixels)["mean_pairwise_rms"] if len(pixels) > 1 else float("nan")
    mem = metrics.memorization(feats, self.few, None if is_reference else self.held)
    out["memorization"] = mem
    out["nn_ratio"] = mem.get("nn_median_ratio", float("nan"))
    if not is_reference:
      copies = judge_lib.copy_flags(feats, self.few, self.held, quantile=self.options.copy_quantile)
      out["frac_near_copies"] = copies["copy_rate"]
      out["copy_threshold"] = copies["copy_threshold"]
      if len(feats) > 1:
        dups = judge_lib.near_duplicate_rate(feats, self.held, quantile=self.options.duplicate_quantile)
        out["near_duplicate_rate"] = dups["near_duplicate_rate"]
    if is_reference:
      judged, contrast = self.held[self.split["test"]], self.real.heldout_ood[self.split["test"]]
    else:
      judged, contrast = feats, samples
    rates = self.judge.rates(judged, judge_lib.pixel_contrast(contrast))
    out["ood_hit_rate"], out["id_fallback_rate"] = rates["ood_hit_rate"], rates["id_fallback_rate"]
    out["neither_rate"] = rates["neither_rate"]
    out["domain_rates"] = rates
    if id_samples is not None and self.id is not None:
      out["id_frechet_distance"] = metrics.fid_from_features(self.extractor(id_samples), self.id)
    return out

  def science(self, samples: np.ndarray, out_dir: str, name: str) -> dict | None:
    """Physical-units statistics for scientific data (None for ordinary images)."""
    if self.real.transform is None:
      return None
    from discovery_jax.metrics import physics as science

    gen = to_physical(samples, self.real)
    scale = "log10" if float(np.min(self.real.heldout_physical)) > 0 else "asinh"
    return science.compare_fields(
        gen,
        self.real.heldout_physical,
        scale=scale,
        out_dir=out_dir,
        prefix=name.replace(" ", "_"),
        labels=(name, "held-out real"),
    )


def _extractor_kwargs(options: EvaluationOptions) -> dict:
  kwargs = {}
  if options.features in ("random_conv", "random_projection") and options.feature_seed is not None:
    kwargs["seed"] = int(options.feature_seed)
  return kwargs


def comparison_table(rows: list[dict]) -> str:
  """A markdown table of the headline numbers (missing values as '-')."""
  header = "| method | n | " + " | ".join(label for _, label, _ in TABLE_COLUMNS) + " |"
  lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
  for r in rows:
    cells = []
    for key, _, fmt in TABLE_COLUMNS:
      v = r.get(key)
      cells.append(fmt.format(v) if isinstance(v, (int, float)) and np.isfinite(v) else "-")
    lines.append(f"| {r['name']} | {r['num_samples']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def load_generated(path: str, inputs: InputOptions, transform: dict | None = None) -> np.ndarray:
  """A generated set: an .npy array (model space), a sample output folder, or image files."""
  if os.path.isdir(path) and os.path.isfile(os.path.join(path, "samples.npy")):
    path = os.path.join(path, "samples.npy")
  elif os.path.isdir(path) and os.path.isfile(os.path.join(path, "samples.npy.partial")):
    path = os.path.join(path, "samples.npy")
  if path.endswith(".npy") and not os.path.isfile(path) and os.path.isfile(path + ".partial"):
    raise ValueError(
        f"{path} is not finished: only {os.path.basename(path)}.partial exists (its sampling run stopped "
        "before every sample was denoised); rerun `python -m discovery_jax.sample` on that workdir to resume"
    )
  if path.endswith(".npy"):
    arr = np.load(path, mmap_mode="r")
    if arr.ndim != 4:
      raise ValueError(f"{path}: expected generated samples of shape (N, H, W, C), got {arr.shape}")
    return np.asarray(arr, np.float32)
  logging.info("reading generated images from %s", path)
  return load_all(path, inputs, transform=transform)[0]
