"""Reading a folder of inputs (images, or FITS/.npy/.npz physical fields) into
model-space arrays, validated and hashed, with unreadable files reported."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import numpy as np
from absl import logging

from discovery_jax import fileio
from discovery_jax.data import images, scientific, transforms

FORMATS = ("auto", "image", "scientific")
BAD_FILE_POLICIES = ("skip", "error")


@dataclasses.dataclass(frozen=True)
class Item:
  """One input: its name (path relative to the folder) and content hash."""

  name: str
  sha256: str


@dataclasses.dataclass(frozen=True)
class InputOptions:
  """How a folder is read (the typed form of ``config.data``).

  format: 'auto' (by extension), 'image' or 'scientific'; on_bad_file: 'skip'
  (report and go on) or 'error'; max_files: the first N files only (None: all);
  transform: ``transforms.fit_transform`` keywords for scientific data.
  """

  image: images.ImageOptions
  scientific: scientific.ScientificOptions
  transform: dict = dataclasses.field(default_factory=dict)
  format: str = "auto"
  on_bad_file: str = "skip"
  max_files: int | None = None

  def __post_init__(self):
    if self.format not in FORMATS:
      raise ValueError(f"data.format must be one of {FORMATS}, got {self.format!r}")
    if self.on_bad_file not in BAD_FILE_POLICIES:
      raise ValueError(f"data.on_bad_file must be one of {BAD_FILE_POLICIES}, got {self.on_bad_file!r}")
    if self.max_files is not None and int(self.max_files) < 1:
      raise ValueError(f"data.max_files must be >= 1 or None (all files), got {self.max_files}")


def load_all(folder: str, options: InputOptions, transform: dict | None = None) -> tuple[np.ndarray, "InputSet"]:
  """Every usable input of ``folder`` as one (N, H, W, C) array, and the InputSet."""
  inputs = open_inputs(folder, options, transform=transform)
  return inputs.load(list(range(len(inputs)))), inputs


@dataclasses.dataclass
class InputSet:
  """The usable inputs of a folder as model-space arrays, and the files skipped.

  ``kind='image'``: ordinary image files, decoded lazily batch by batch.
  ``kind='scientific'``: FITS/.npy/.npz physical fields, resized in physical
  units and mapped to [-1, 1] by an intensity transform fitted on this set (or
  the one given, e.g. the few-shot set's for held-out data); ``transform`` is its
  JSON form, stored with the bank so generated samples go back to physical units.
  """

  kind: str
  items: list[Item]
  skipped: list[dict]
  load: Callable[[Sequence[int]], np.ndarray]
  paths: list[str]
  transform: dict | None = None
  physical_channels: int | None = None
  fields_info: list[dict] | None = None

  def __len__(self) -> int:
    return len(self.items)


def _folder_kind(folder: str, wanted: str) -> str:
  if wanted in ("image", "scientific"):
    return wanted
  if wanted != "auto":
    raise ValueError(f"data.format must be 'auto', 'image' or 'scientific', got {wanted!r}")
  files = images.list_files(folder, images.IMAGE_EXTENSIONS + scientific.SCIENTIFIC_EXTENSIONS)
  sci = [f for f in files if scientific.is_scientific_file(f)]
  if sci and len(sci) != len(files):
    raise images.InputError(
        f"{folder} mixes scientific files ({os.path.basename(sci[0])}) and images "
        f"({os.path.basename(next(f for f in files if f not in sci))}); "
        "use one kind per folder or set data.format"
    )
  return "scientific" if sci else "image"


def open_inputs(folder: str, options: InputOptions, *, transform: dict | None = None) -> InputSet:
  """Lists, validates and hashes the inputs of ``folder`` (images or scientific files).

  A file that cannot be read is skipped and reported (``on_bad_file='skip'``) or
  stops the run naming it (``'error'``). Item names are paths relative to
  ``folder`` (plus ``[plane]`` for cube slices). ``transform``: the intensity
  transform of scientific data to apply (None: fit one on this set).
  """
  kind = _folder_kind(folder, options.format)
  if kind == "image":
    return open_image_folder(folder, options.image, options.on_bad_file, options.max_files)
  return _open_scientific(folder, options, transform)


def open_image_folder(
    folder: str, options: images.ImageOptions, on_bad_file: str = "skip", max_files: int | None = None
) -> InputSet:
  """An image folder as an InputSet (decoded lazily)."""
  files = images.list_files(folder)
  if max_files is not None:
    files = files[:max_files]
  paths, items, skipped = [], [], []
  for path in files:
    try:
      images.load_image(path, options)
    except images.InputError as e:
      if on_bad_file == "error":
        raise
      logging.warning("skipping %s", e)
      skipped.append({"path": path, "reason": str(e)})
      continue
    paths.append(path)
    items.append(Item(os.path.relpath(path, folder), fileio.sha256_file(path)))
  if not paths:
    raise images.InputError(
        f"no readable input in {folder}: all {len(files)} files were skipped " f"(first: {skipped[0]['reason']})"
    )
  load = lambda idx: np.stack([images.load_image(paths[i], options) for i in idx]).astype(np.float32)
  return InputSet("image", items, skipped, load, paths)


def _open_scientific(folder: str, inputs: InputOptions, transform: dict | None) -> InputSet:
  options, on_bad_file = inputs.scientific, inputs.on_bad_file
  files = scientific.list_scientific_files(folder)
  if inputs.max_files is not None:
    files = files[: inputs.max_files]
  good, skipped = [], []
  for path in files:
    try:
      scientific.read_fields(path, dataclasses.replace(options, image_size=None))
      good.append(path)
    except images.InputError as e:
      if on_bad_file == "error":
        raise
      logging.warning("skipping %s", e)
      skipped.append({"path": path, "reason": str(e)})
  if not good:
    raise images.InputError(
        f"no readable input in {folder}: all {len(files)} files were skipped " f"(first: {skipped[0]['reason']})"
    )
  fields = scientific.load_field_set(good, options)
  if transform is None:
    fitted = transforms.fit_transform(arrays=[f.data for f in fields], **inputs.transform)
  else:
    fitted = transforms.Transform.from_dict(transform)
  model = np.stack([scientific.to_model_input(f.data, fitted, options.channels, name=f.info["label"]) for f in fields])
  hashes = {p: fileio.sha256_file(p) for p in good}
  items = []
  for f in fields:
    suffix = f.name[len(os.path.basename(f.info["source"])) :]  # "[plane]" for cube slices, else "".
    items.append(Item(os.path.relpath(f.info["source"], folder) + suffix, hashes[f.info["source"]] + suffix))
  nonfinite = sum(int(f.info.get("n_nonfinite", 0)) for f in fields)
  if nonfinite:
    logging.info("%s: filled %d NaN/Inf pixels (data.fill=%r)", folder, nonfinite, options.fill)
  return InputSet(
      "scientific",
      items,
      skipped,
      lambda idx: model[np.asarray(idx)],
      [f.info["source"] for f in fields],
      fitted.to_dict(),
      int(fields[0].data.shape[-1]),
      [
          {
              k: v
              for k, v in f.info.items()
              if k in ("name", "source", "hdu", "extname", "planes", "n_nonfinite", "cards")
          }
          for f in fields
      ],
  )
