"""Evaluating generated sets against real data: which method works better.

For each generated set (discovery, its baselines, fine-tuning) on the same
feature extractor:

* target-domain hit rate: a domain classifier trained on held-out real ID vs
  held-out real OOD images; ``ood_hit_rate`` is the fraction of samples it calls
  target-domain, ``id_fallback_rate`` the fraction that fell back to the model's
  own domain (mode interference);
* Frechet distance and KID to held-out real target images; precision/recall;
* diversity: mean pairwise feature distance;
* memorization: nearest-neighbour distance to the few-shot set, compared with the
  same distance for held-out real target images (new images, not copies);
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

from discovery_jax import features as features_lib
from discovery_jax import inversion, metrics

TABLE_COLUMNS = (
    ("ood_hit_rate", "OOD hit rate", "{:.3f}"),
    ("id_fallback_rate", "ID fallback", "{:.3f}"),
    ("frechet_distance", "FD to held-out OOD", "{:.2f}"),
    ("kid_mean", "KID", "{:.4f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("diversity", "diversity", "{:.3f}"),
    ("nn_ratio", "NN dist to few-shot / held-out's", "{:.3f}"),
    ("frac_near_copies", "near copies", "{:.3f}"),
    ("id_frechet_distance", "ID FD of the model", "{:.2f}"),
)


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


def _load_all(folder: str, config: Any, transform: dict | None = None) -> tuple[np.ndarray, Any]:
  inputs = inversion.open_inputs(folder, config, transform=transform)
  return inputs.load(list(range(len(inputs)))), inputs


def load_real_data(config: Any) -> RealData:
  """The few-shot set, held-out target images and held-out ID images of ``config``."""
  ev = config.evaluate
  if not config.data.ood_dir:
    raise ValueError("evaluation needs config.data.ood_dir (the few-shot set, for memorization)")
  if not config.data.eval_dir:
    raise ValueError("evaluation needs config.data.eval_dir: held-out real target images")
  fewshot, few_inputs = _load_all(config.data.ood_dir, config)
  held, _ = _load_all(config.data.eval_dir, config, transform=few_inputs.transform)
  id_dir = ev.get("id_dir", "") or config.data.get("id_dir", "")
  heldout_id = _load_all(id_dir, config)[0] if id_dir else None
  real = RealData(fewshot, held, heldout_id, few_inputs.transform, physical_channels=few_inputs.physical_channels)
  if few_inputs.transform is not None:
    real.fewshot_physical = to_physical(fewshot, real)
    real.heldout_physical = to_physical(held, real)
  return real


def to_physical(x: np.ndarray, real: RealData) -> np.ndarray:
  from discovery_jax.data import scientific, transforms
  t = transforms.Transform.from_dict(real.transform)
  return scientific.from_model_output(x, t, channels=real.physical_channels or 1, clip=True)


class Evaluator:
  """Features of the real sets and a domain classifier, computed once."""

  def __init__(self, config: Any, real: RealData):
    ev = config.evaluate
    self.real = real
    self.extractor = features_lib.create_extractor(
        ev.features, inception_path=ev.get("inception_path", "") or None, **_extractor_kwargs(ev))
    self.few = self.extractor(real.fewshot)
    self.held = self.extractor(real.heldout_ood)
    self.id = self.extractor(real.heldout_id) if real.heldout_id is not None else None
    self.classifier = None
    self.classifier_report = None
    if self.id is not None:
      self.classifier = metrics.fit_domain_classifier(self.id, self.held, seed=int(ev.get("seed", 0)))
      self.classifier_report = self.classifier.fit_report
    self.kid_subset = int(ev.get("kid_subset_size", 100))

  def describe(self) -> dict:
    return {"features": self.extractor.describe(), "num_fewshot": len(self.few), "num_heldout_ood": len(self.held),
            "num_heldout_id": 0 if self.id is None else len(self.id), "domain_classifier": self.classifier_report}

  def reference(self) -> dict:
    """The held-out real target images scored like a method: the yardstick."""
    return self.evaluate(self.real.heldout_ood, name="real held-out OOD", is_reference=True)

  def evaluate(self, samples: np.ndarray, *, name: str, id_samples: np.ndarray | None = None,
               is_reference: bool = False) -> dict:
    samples = np.asarray(samples, np.float32)
    feats = self.extractor(samples)
    n = len(feats)
    out: dict[str, Any] = {"name": name, "num_samples": n}
    ref = self.held
    if is_reference:  # compare half of the held-out set with the other half.
      half = len(self.held) // 2
      feats, ref = self.held[:half], self.held[half:]
    out["frechet_distance"] = metrics.fid_from_features(feats, ref)
    subset = max(2, min(self.kid_subset, len(feats), len(ref)))
    kid = metrics.kid(feats, ref, num_subsets=50, subset_size=subset)
    out["kid_mean"], out["kid_std"] = kid["kid_mean"], kid["kid_std"]
    pr = metrics.precision_recall(ref, feats, k=3)
    out["precision"], out["recall"] = pr["precision"], pr["recall"]
    out["diversity"] = metrics.diversity(feats)["mean_pairwise_distance"]
    out["pixel_diversity"] = metrics.pixel_diversity(samples if not is_reference else self.real.heldout_ood[:half])[
        "mean_pairwise_rms"]
    mem = metrics.memorization(feats, self.few, None if is_reference else self.held)
    out["memorization"] = mem
    out["nn_ratio"] = mem.get("nn_median_ratio", float("nan"))
    out["frac_near_copies"] = mem.get("frac_near_copies", float("nan"))
    if self.classifier is not None:
      rates = self.classifier.rates(feats)
      out["ood_hit_rate"], out["id_fallback_rate"] = rates["ood_hit_rate"], rates["id_fallback_rate"]
      out["domain_rates"] = rates
    if id_samples is not None and self.id is not None:
      out["id_frechet_distance"] = metrics.fid_from_features(self.extractor(id_samples), self.id)
    return out

  def science(self, samples: np.ndarray, out_dir: str, name: str) -> dict | None:
    """Physical-units statistics for scientific data (None for ordinary images)."""
    if self.real.transform is None:
      return None
    from discovery_jax import science
    gen = to_physical(samples, self.real)
    scale = "log10" if float(np.min(self.real.heldout_physical)) > 0 else "asinh"
    return science.compare_fields(gen, self.real.heldout_physical, scale=scale, out_dir=out_dir,
                                  prefix=name.replace(" ", "_"), labels=(name, "held-out real"))


def _extractor_kwargs(ev: Any) -> dict:
  kwargs = {}
  if ev.features in ("random_conv", "random_projection") and "feature_seed" in ev:
    kwargs["seed"] = int(ev.feature_seed)
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


def load_generated(path: str, config: Any, transform: dict | None = None) -> np.ndarray:
  """A generated set: an .npy array (model space), a sample output folder, or image files."""
  if os.path.isdir(path) and os.path.isfile(os.path.join(path, "samples.npy")):
    path = os.path.join(path, "samples.npy")
  if path.endswith(".npy"):
    arr = np.load(path, mmap_mode="r")
    if arr.ndim != 4:
      raise ValueError(f"{path}: expected generated samples of shape (N, H, W, C), got {arr.shape}")
    return np.asarray(arr, np.float32)
  logging.info("reading generated images from %s", path)
  return _load_all(path, config, transform=transform)[0]
