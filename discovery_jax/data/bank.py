"""Latent banks on disk: inverted latents x_{t_0} of a set of images, with metadata.

Layout of a bank directory::

    BANK/metadata.json   model fingerprint, t_0, n_steps, schedule, item names and
                         content hashes, shape, optional intensity transform
    BANK/latents.npy     float32 (N, H, W, C), preallocated, written row by row
    BANK/progress.json   which rows are complete (rewritten atomically)

``latents.npy`` is an ordinary .npy file opened as a memmap: a bank of 1,000
latents at 256x256x3 (0.8 GB) is written batch by batch and read back with
``np.load(..., mmap_mode='r')`` without holding a copy in RAM. Rows are flushed
before progress records them, so an interrupted run resumes where it stopped and
never trusts a row that was not fully written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging

from discovery_jax.data.inputs import InputOptions, InputSet, Item, open_inputs
from discovery_jax import fileio
from discovery_jax.fileio import atomic_write_text
from discovery_jax.progress import Progress
from discovery_jax.runner import pure_noise

FORMAT = "discovery_jax.latent_bank"
VERSION = 1
METADATA = "metadata.json"
LATENTS = "latents.npy"
PROGRESS = "progress.json"
# Fields that must agree for two banks to be combined (or a bank to be resumed).
IDENTITY_FIELDS = ("model_fingerprint", "t_0", "shape")


class BankError(ValueError):
  """A bank that is missing, incomplete, corrupt or incompatible; names it."""


class LatentBank:
  """A latent bank directory. Create with ``create``, reopen with ``open``."""

  def __init__(self, path: str, metadata: dict):
    self.path = path
    self.metadata = metadata
    self._done = None

  # ------------------------------------------------------------------ creation

  @classmethod
  def create(
      cls,
      path: str,
      items: Sequence[Item],
      shape: Sequence[int],
      *,
      model_fingerprint: str,
      t_0: int,
      n_steps: int,
      extra: dict[str, Any] | None = None,
  ) -> "LatentBank":
    """Starts a new bank (or returns the matching unfinished one at ``path``)."""
    if not items:
      raise BankError(f"{path}: a bank needs at least one item")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "count": len(items),
        "shape": [int(s) for s in shape],
        "model_fingerprint": model_fingerprint,
        "t_0": int(t_0),
        "n_steps": int(n_steps),
        "items": [{"name": it.name, "sha256": it.sha256} for it in items],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(extra or {}),
    }
    if os.path.exists(os.path.join(path, METADATA)):
      bank = cls.open(path, require_complete=False)
      bank._check_same_request(meta)
      return bank
    os.makedirs(path, exist_ok=True)
    latents = np.lib.format.open_memmap(
        os.path.join(path, LATENTS + ".tmp"), mode="w+", dtype=np.float32, shape=(len(items), *meta["shape"])
    )
    del latents  # allocated on disk; rows are written later.
    os.replace(os.path.join(path, LATENTS + ".tmp"), os.path.join(path, LATENTS))
    atomic_write_text(os.path.join(path, PROGRESS), json.dumps({"done": []}))
    atomic_write_text(os.path.join(path, METADATA), fileio.dumps(meta))
    return cls(path, meta)

  def _check_same_request(self, meta: dict) -> None:
    for key in IDENTITY_FIELDS + ("n_steps",):
      if self.metadata.get(key) != meta.get(key):
        raise BankError(
            f"{self.path} already holds a bank made with {key}={self.metadata.get(key)!r}, but this run "
            f"asks for {key}={meta.get(key)!r}; use another workdir or delete {self.path}"
        )
    old = [(i["name"], i["sha256"]) for i in self.metadata["items"]]
    new = [(i["name"], i["sha256"]) for i in meta["items"]]
    if old != new:
      first = next(i for i, (a, b) in enumerate(zip(old + [None] * len(new), new + [None] * len(old))) if a != b)
      raise BankError(
          f"{self.path} was started from a different set of files (first difference at item {first}: "
          f"{old[first] if first < len(old) else None} vs {new[first] if first < len(new) else None}); "
          f"use another workdir or delete {self.path}"
      )

  # ------------------------------------------------------------------ reading

  @classmethod
  def open(cls, path: str, require_complete: bool = True) -> "LatentBank":
    meta_path = os.path.join(path, METADATA)
    if not os.path.isfile(meta_path):
      raise BankError(
          f"{path} is not a latent bank ({METADATA} missing; build it with " "`python -m discovery_jax.invert`)"
      )
    try:
      with open(meta_path) as f:
        meta = json.load(f)
    except json.JSONDecodeError as e:
      raise BankError(f"{meta_path} is corrupt: {e}") from None
    if meta.get("format") != FORMAT:
      raise BankError(f"{meta_path} is not a discovery_jax latent bank (format={meta.get('format')!r})")
    bank = cls(path, meta)
    if require_complete and not bank.complete:
      raise BankError(
          f"{path} is incomplete ({len(bank.done_indices())}/{bank.count} latents written); "
          "rerun `python -m discovery_jax.invert` with the same config to finish it"
      )
    return bank

  @property
  def count(self) -> int:
    return int(self.metadata["count"])

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.metadata["shape"])

  @property
  def names(self) -> list[str]:
    return [i["name"] for i in self.metadata["items"]]

  def done_indices(self) -> list[int]:
    if self._done is None:
      try:
        with open(os.path.join(self.path, PROGRESS)) as f:
          self._done = sorted(set(json.load(f)["done"]))
      except (OSError, json.JSONDecodeError, KeyError):
        self._done = []  # unreadable progress: redo everything, never trust rows.
    return list(self._done)

  def pending_indices(self) -> list[int]:
    done = set(self.done_indices())
    return [i for i in range(self.count) if i not in done]

  @property
  def complete(self) -> bool:
    return len(self.done_indices()) == self.count

  def latents(self) -> np.ndarray:
    """The (N, H, W, C) latents as a read-only memmap (no copy in RAM)."""
    path = os.path.join(self.path, LATENTS)
    try:
      arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
      raise BankError(f"{path} cannot be read: {e}") from None
    if arr.shape != (self.count, *self.shape) or arr.dtype != np.float32:
      raise BankError(f"{path} holds {arr.dtype} {arr.shape}, metadata says float32 {(self.count, *self.shape)}")
    return arr

  # ------------------------------------------------------------------ writing

  def write(self, indices: Sequence[int], latents: np.ndarray) -> None:
    """Stores rows ``indices``; they count as done only after reaching the disk."""
    latents = np.asarray(latents, np.float32)
    if latents.shape != (len(indices), *self.shape):
      raise BankError(f"{self.path}: got latents of shape {latents.shape}, expected {(len(indices), *self.shape)}")
    mm = np.load(os.path.join(self.path, LATENTS), mmap_mode="r+")
    for row, i in enumerate(indices):
      mm[i] = latents[row]
    mm.flush()
    del mm
    done = sorted(set(self.done_indices()) | {int(i) for i in indices})
    atomic_write_text(os.path.join(self.path, PROGRESS), json.dumps({"done": done}))
    self._done = done

  def update_metadata(self, **fields: Any) -> None:
    self.metadata.update(fields)
    atomic_write_text(os.path.join(self.path, METADATA), fileio.dumps(self.metadata))


def check_compatible(banks: Sequence[LatentBank]) -> None:
  """Refuses to combine banks from different models, t_0 or latent shapes."""
  first = banks[0]
  for other in banks[1:]:
    for key in IDENTITY_FIELDS:
      if first.metadata.get(key) != other.metadata.get(key):
        what = {"model_fingerprint": "models", "t_0": "t_0 values", "shape": "latent shapes (image sizes)"}[key]
        raise BankError(
            f"cannot combine banks from different {what}: {first.path} has {key}={first.metadata.get(key)!r}, "
            f"{other.path} has {key}={other.metadata.get(key)!r}"
        )


# ---------------------------------------------------------------------------
# Building the banks of a run.


def invert_inputs(
    inputs: InputSet, bank_dir: str, runner, *, model_fingerprint: str, source: str = "", desc: str = "invert"
) -> LatentBank:
  """Inverts every input into the bank at ``bank_dir`` (resumes a partial bank)."""
  shape = inputs.load([0]).shape[1:]
  extra = {
      "source_folder": os.path.abspath(source) if source else "",
      "skipped": inputs.skipped,
      "input_kind": inputs.kind,
  }
  if inputs.transform is not None:
    extra.update(
        intensity_transform=inputs.transform, physical_channels=inputs.physical_channels, fields=inputs.fields_info
    )
  bank = LatentBank.create(
      bank_dir,
      inputs.items,
      shape,
      model_fingerprint=model_fingerprint,
      t_0=runner.t_0,
      n_steps=runner.n_steps,
      extra=extra,
  )
  pending = bank.pending_indices()
  if not pending:
    logging.info("%s: bank %s is already complete (%d latents)", desc, bank_dir, bank.count)
    return bank
  logging.info(
      "%s: %d inputs from %s -> %s (%d already done, %d skipped)",
      desc,
      bank.count,
      source or "memory",
      bank_dir,
      bank.count - len(pending),
      len(inputs.skipped),
  )
  progress = Progress(bank.count, "images", desc, already_done=bank.count - len(pending))
  for start in range(0, len(pending), runner.global_batch):
    idx = pending[start : start + runner.global_batch]
    bank.write(idx, runner.invert(inputs.load(idx)))
    progress.update(len(idx))
  bank.update_metadata(seconds=progress.summary()["seconds"])
  return bank


# ---------------------------------------------------------------------------
# The model's own in-domain reference bank.

ID_SOURCES = ("generate_invert", "trajectory")


def model_id_bank(
    bank_dir: str,
    runner,
    count: int,
    key: jax.Array,
    *,
    model_fingerprint: str,
    source: str = "generate_invert",
    shape: Sequence[int],
) -> LatentBank:
  """ID reference latents at t_0 made by the frozen model itself (no ID images needed).

  ``'generate_invert'`` (default): DDIM-generate ID images from pure noise
  x_T ~ N(0, I) (t: T-1 -> 0), then invert them to t_0 exactly like the OOD
  images. Both banks then come from the same inversion procedure, so a
  difference between them reflects the domains, not the procedure.
  ``'trajectory'``: the model's DDIM trajectory from pure noise stopped at t_0
  (half the cost; latents of the generative direction, not of inversion).
  Sample i draws its noise from ``fold_in(key, i)``: resumable and independent
  of batch size and device count.
  """
  if source not in ID_SOURCES:
    raise ValueError(f"discovery.id_source must be one of {ID_SOURCES}, got {source!r}")
  if count < 2:
    raise ValueError(f"discovery.num_id_latents must be >= 2, got {count}")
  items = [Item(f"model_sample_{i:06d}", f"{source}:fold_in(key,{i})") for i in range(count)]
  bank = LatentBank.create(
      bank_dir,
      items,
      shape,
      model_fingerprint=model_fingerprint,
      t_0=runner.t_0,
      n_steps=runner.n_steps,
      extra={"source": f"model:{source}"},
  )
  pending = bank.pending_indices()
  if not pending:
    return bank
  top = runner.at(runner.schedule.num_timesteps - 1)
  progress = Progress(count, "latents", f"ID bank ({source})", already_done=count - len(pending))
  for start in range(0, len(pending), runner.global_batch):
    idx = np.asarray(pending[start : start + runner.global_batch])
    noise = pure_noise(key, idx, shape)
    if source == "generate_invert":
      latents = runner.invert(top.generate(noise))
    else:
      latents = top.generate_to(noise, runner.t_0)
    bank.write(idx.tolist(), latents)
    progress.update(len(idx))
  return bank


# ---------------------------------------------------------------------------
# The banks of a run.


def bank_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, "banks", name)


@dataclasses.dataclass(frozen=True)
class BankSources:
  """Where a run's banks come from (the typed form of ``config.data`` / ``config.discovery``).

  ood_dir: the few-shot target images; id_dir: in-domain reference images (None:
  the model's own latents, ``num_id_latents`` of them made by ``id_source``).
  """

  ood_dir: str | None
  id_dir: str | None
  inputs: InputOptions
  num_id_latents: int = 64
  id_source: str = "generate_invert"


def prepare_banks(
    sources: BankSources, workdir: str, runner, *, model_fingerprint: str, key: jax.Array, need_id: bool = True
) -> dict:
  """The OOD bank and the ID reference bank of a run; every bank resumes where it
  stopped. Returns {'ood': LatentBank, 'id': LatentBank}."""
  banks = {}
  for name, folder in (("ood", sources.ood_dir), ("id", sources.id_dir)):
    if not folder:
      continue
    inputs = open_inputs(folder, sources.inputs)
    if inputs.skipped:
      logging.warning(
          "%s: skipping %d unreadable file(s): %s",
          folder,
          len(inputs.skipped),
          ", ".join(s["path"] for s in inputs.skipped[:5]),
      )
    banks[name] = invert_inputs(
        inputs,
        bank_path(workdir, name),
        runner,
        model_fingerprint=model_fingerprint,
        source=folder,
        desc=f"invert {name}",
    )
  if "ood" not in banks:
    raise ValueError("config.data.ood_dir is empty: give the folder of few-shot target-domain images")
  if need_id and "id" not in banks:
    banks["id"] = model_id_bank(
        bank_path(workdir, "id_model"),
        runner,
        sources.num_id_latents,
        key,
        model_fingerprint=model_fingerprint,
        source=sources.id_source,
        shape=banks["ood"].shape,
    )
  check_compatible(list(banks.values()))
  return banks
