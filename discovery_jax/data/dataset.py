"""Synthesized datasets on disk: sharded, resumable, written by many hosts at once,
read back by tensorflow-datasets WITHOUT TensorFlow.

The global sample index ``i`` in ``[0, N)`` decides everything: the caller's
generator makes sample ``i`` from ``i`` alone (its noise key, its latent), so
who writes it, and when, never changes it. Samples are grouped in shards of
``K``: shard ``s`` holds ``[s*K, min((s+1)*K, N))`` and is written by host
``s % process_count``. Any number of hosts -- and a different number on resume --
covers every shard exactly once, and hosts never talk to each other.

Layout of a dataset directory::

    DIR/discovery_dataset.json   identity: name, N, K, feature spec, caller metadata.
                                 Written first; a resumed run must match it.
    DIR/NAME-train.array_record-SSSSS-of-TTTTT
                                 shard S: serialized tf.Example records (tfds layout)
    DIR/_shards/SSSSS.json       completion record of shard S (count, bytes, sha256),
                                 written after the shard is renamed into place
    DIR/images/IIIIIIII.png      optional: one PNG per sample
    DIR/dataset_info.json, DIR/features.json
                                 tfds metadata (``finalize``)
    DIR/manifest.json            N, K, shard files with sha256 and counts, metadata

A shard is written under a temporary name, fsynced and renamed, then recorded;
a shard without a matching record is redone. ``finalize`` (process 0, after all
hosts, or alone later) reads every shard back, deletes and reports the broken
ones so a rerun regenerates exactly those, and only then writes the metadata::

    builder = tfds.builder_from_directory(DIR)
    source = builder.as_data_source(split="train")   # len(source) == N
    source[i]  # {'image': uint8 (H, W, C), 'index': i, 'latent': ..., ...}
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import errno
import glob
import json
import os
import re
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import logging

from discovery_jax import fileio
from discovery_jax.data.dataset_format import (  # noqa: F401 (features_spec: part of this module's interface)
    DatasetError,
    encode_png,
    features_spec,
    open_record_writer,
    read_records,
    tfds_features,
    validate_features_spec,
)

FORMAT = "discovery_jax.dataset"
VERSION = 1
SPLIT = "train"
IDENTITY_FILE = "discovery_dataset.json"
MANIFEST = "manifest.json"
RECORDS_DIR = "_shards"
IMAGES_DIR = "images"
TFDS_FILES = ("dataset_info.json", "features.json")
# Caller metadata keys that must agree for a run to resume into an existing directory.
DEFAULT_IDENTITY_KEYS = ("model_fingerprint", "seed")


def _metadata_changes(
    stored: Mapping[str, Any], requested: Mapping[str, Any], keys: Sequence[str]
) -> list[tuple[str, Any, Any]]:
  """(key, stored, requested) for each of ``keys`` that either side sets and the two disagree on."""
  return [
      (k, stored.get(k), requested.get(k))
      for k in keys
      if (k in stored or k in requested) and stored.get(k) != requested.get(k)
  ]


def metadata_changes(
    directory: str, metadata: Mapping[str, Any], keys: Sequence[str] | None = None
) -> list[tuple[str, Any, Any]] | None:
  """How the caller metadata of the dataset in ``directory`` differs from ``metadata``
  on ``keys`` (default: all of ``metadata``'s): the test ``DatasetWriter`` applies before
  resuming, without raising. None when ``directory`` holds no dataset yet."""
  path = os.path.join(directory, IDENTITY_FILE)
  if not os.path.isfile(path):
    return None
  try:
    stored = _read_json(path).get("metadata") or {}
  except (OSError, json.JSONDecodeError) as e:
    raise DatasetError(f"{path} cannot be read ({e}); delete the directory or restore the file") from None
  metadata = _jsonable(dict(metadata))
  return _metadata_changes(stored, metadata, tuple(metadata) if keys is None else keys)


class ShardWriteError(OSError):
  """A shard could not be written (disk full, I/O error). Nothing complete was lost."""


from discovery_jax.data.shard_files import fsync_dir as _fsync_dir
from discovery_jax.data.shard_files import jsonable as _jsonable
from discovery_jax.data.shard_files import read_json as _read_json
from discovery_jax.data.shard_files import remove as _remove
from discovery_jax.data.shard_files import tmp_name as _tmp_name
from discovery_jax.data.shard_files import write_json as _write_json

_sha256 = fileio.sha256_file

# --------------------------------------------------------------------------- reports


@dataclasses.dataclass
class FinalizeReport:
  """What ``finalize`` found. ``complete``: every shard verified and the tfds metadata written."""

  directory: str
  num_samples: int
  num_shards: int
  complete: bool = False
  missing: list[int] = dataclasses.field(default_factory=list)  # never finished (e.g. a host died)
  repaired: dict[int, str] = dataclasses.field(default_factory=dict)  # deleted as broken -> why
  removed_temp: list[str] = dataclasses.field(default_factory=list)  # leftovers of killed writes

  def summary(self) -> str:
    if self.complete:
      return f"{self.directory}: complete, {self.num_samples} samples in {self.num_shards} shards"
    parts = [f"{self.directory}: INCOMPLETE"]
    if self.missing:
      parts.append(f"{len(self.missing)} shard(s) missing {_short(self.missing)}")
    if self.repaired:
      parts.append(
          f"{len(self.repaired)} broken shard(s) deleted: "
          + "; ".join(f"{s}: {why}" for s, why in sorted(self.repaired.items())[:10])
      )
    parts.append("rerun the same command (any number of hosts) to regenerate exactly these shards")
    return ", ".join(parts)


def _short(items: Sequence[int], limit: int = 20) -> str:
  items = sorted(items)
  return str(items if len(items) <= limit else items[:limit] + ["..."])


# --------------------------------------------------------------------------- the writer


class DatasetWriter:
  """Writes this host's shards of a dataset of ``num_samples`` samples into ``directory``.

  >>> w = DatasetWriter(d, "synth", 10_000, 500, features_spec((64, 64, 3)),
  ...                   jax.process_index(), jax.process_count(), {"seed": 0})
  >>> for s in w.pending_shards():
  ...   w.write_shard(s, generate(np.asarray(w.shard_range(s))))
  >>> parallel.sync_hosts("dataset")
  >>> if jax.process_index() == 0: print(w.finalize().summary())
  """

  def __init__(
      self,
      directory: str,
      name: str,
      num_samples: int,
      shard_size: int,
      features_spec: Mapping[str, Any],
      process_index: int = 0,
      process_count: int = 1,
      metadata: Mapping[str, Any] | None = None,
      *,
      write_images: bool = False,
      identity_keys: Sequence[str] = DEFAULT_IDENTITY_KEYS,
      encode_threads: int = 4,
  ):
    if not re.fullmatch(r"[a-zA-Z]\w*", name or ""):
      raise DatasetError(
          f"dataset name {name!r} must start with a letter and hold only letters, digits, _ "
          "(tfds reads it from the file names)"
      )
    if int(num_samples) < 1 or int(shard_size) < 1:
      raise DatasetError(f"num_samples={num_samples} and shard_size={shard_size} must be >= 1")
    if int(process_count) < 1 or not 0 <= int(process_index) < int(process_count):
      raise DatasetError(f"process_index={process_index} is not in [0, process_count={process_count})")
    self.directory = os.path.abspath(directory)
    self.name = name
    self.num_samples = int(num_samples)
    self.shard_size = int(shard_size)
    self.spec = validate_features_spec(features_spec)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.metadata = _jsonable(dict(metadata)) if metadata is not None else None
    self.write_images = bool(write_images)
    self.identity_keys = tuple(identity_keys)
    self.encode_threads = max(1, int(encode_threads))
    self.pending_reasons: dict[int, str] = {}  # shard -> why ``pending_shards`` redoes it (if not just missing)
    self._features = None
    self._serializer = None
    os.makedirs(os.path.join(self.directory, RECORDS_DIR), exist_ok=True)
    if self.write_images:
      os.makedirs(os.path.join(self.directory, IMAGES_DIR), exist_ok=True)
    self._claim_directory()

  @classmethod
  def open(cls, directory: str, process_index: int = 0, process_count: int = 1, **kwargs: Any) -> "DatasetWriter":
    """Reopens an existing dataset directory from its identity file (e.g. to finalize it alone)."""
    path = os.path.join(directory, IDENTITY_FILE)
    if not os.path.isfile(path):
      raise DatasetError(f"{directory} is not a discovery_jax dataset ({IDENTITY_FILE} missing)")
    ident = _read_json(path)
    return cls(
        directory,
        ident["name"],
        ident["num_samples"],
        ident["shard_size"],
        ident["features"],
        process_index,
        process_count,
        None,
        write_images=ident.get("write_images", False),
        **kwargs,
    )

  # ------------------------------------------------------------------ identity

  def _identity(self) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": self.name,
        "num_samples": self.num_samples,
        "shard_size": self.shard_size,
        "num_shards": self.num_shards,
        "features": self.spec,
        "write_images": self.write_images,
        "metadata": self.metadata or {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }

  def _claim_directory(self) -> None:
    """Writes the identity file, or checks that this run matches the one that wrote it."""
    path = os.path.join(self.directory, IDENTITY_FILE)
    if not os.path.exists(path):
      strays = glob.glob(os.path.join(self.directory, "*.array_record-*"))
      if strays:
        raise DatasetError(
            f"{self.directory} holds shard files ({os.path.basename(strays[0])}, ...) but no "
            f"{IDENTITY_FILE}; it was not written by this tool: use an empty directory"
        )
      _write_json(path, self._identity())  # hosts racing here write the same identity.
    try:
      old = _read_json(path)
    except (OSError, json.JSONDecodeError) as e:
      raise DatasetError(f"{path} cannot be read ({e}); delete the directory or restore the file") from None
    if old.get("format") != FORMAT:
      raise DatasetError(f"{path} is not a discovery_jax dataset (format={old.get('format')!r})")
    mine = self._identity()
    checks = [(k, old.get(k), mine[k]) for k in ("name", "num_samples", "shard_size", "features", "write_images")]
    if self.metadata is not None:
      checks += [
          (f"metadata.{k}", was, now)
          for k, was, now in _metadata_changes(old.get("metadata") or {}, self.metadata, self.identity_keys)
      ]
    for key, was, now in checks:
      if was != now:
        raise DatasetError(
            f"{self.directory} holds a dataset made with {key}={was!r}, but this run asks for {key}={now!r}; "
            f"it cannot resume into it: use another output directory or delete {self.directory}"
        )

  # ------------------------------------------------------------------ layout

  @property
  def num_shards(self) -> int:
    return -(-self.num_samples // self.shard_size)

  def shard_range(self, shard: int) -> range:
    """The global sample indices of ``shard``."""
    if not 0 <= shard < self.num_shards:
      raise DatasetError(f"shard {shard} is not in [0, {self.num_shards})")
    return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_samples))

  def shard_file(self, shard: int) -> str:
    return f"{self.name}-{SPLIT}.array_record-{shard:05d}-of-{self.num_shards:05d}"

  def shard_path(self, shard: int) -> str:
    return os.path.join(self.directory, self.shard_file(shard))

  def _record_path(self, shard: int) -> str:
    return os.path.join(self.directory, RECORDS_DIR, f"{shard:05d}.json")

  def image_path(self, index: int) -> str:
    return os.path.join(self.directory, IMAGES_DIR, f"{index:0{max(8, len(str(self.num_samples - 1)))}d}.png")

  def host_shards(self) -> list[int]:
    """Every shard this host is responsible for: ``s % process_count == process_index``."""
    return list(range(self.process_index, self.num_shards, self.process_count))

  # ------------------------------------------------------------------ progress

  def _quick_check(self, shard: int) -> str | None:
    """Why ``shard`` is not complete, from file sizes and its record (no reading); None if it is."""
    path, record_path = self.shard_path(shard), self._record_path(shard)
    if not os.path.exists(path):
      return "missing"
    try:
      record = _read_json(record_path)
    except FileNotFoundError:
      return "no completion record (interrupted between rename and record)"
    except (OSError, json.JSONDecodeError) as e:
      return f"unreadable completion record {record_path}: {e}"
    size = os.path.getsize(path)
    if record.get("count") != len(self.shard_range(shard)):
      return f"record says {record.get('count')} samples, expected {len(self.shard_range(shard))}"
    if record.get("bytes") != size:
      return f"truncated or changed: {size} bytes on disk, {record.get('bytes')} written"
    return None

  def pending_shards(self) -> list[int]:
    """This host's shards that are not complete (missing, truncated, unrecorded), in order."""
    pending = []
    for shard in self.host_shards():
      why = self._quick_check(shard)
      if why is None:
        continue
      pending.append(shard)
      if why != "missing":
        self.pending_reasons[shard] = why
        logging.warning("%s: shard %d will be regenerated: %s", self.directory, shard, why)
    return pending

  # ------------------------------------------------------------------ writing

  def _check_examples(self, shard: int, examples: Mapping[str, Any]) -> dict[str, np.ndarray]:
    rows = self.shard_range(shard)
    n = len(rows)
    where = f"{self.directory} shard {shard} (samples {rows.start}..{rows.stop - 1})"
    unknown = sorted(set(examples) - set(self.spec))
    missing = sorted(set(self.spec) - set(examples) - {"index"})
    if unknown or missing:
      raise DatasetError(
          f"{where}: examples have unknown features {unknown} / lack {missing}; " f"the spec has {sorted(self.spec)}"
      )
    out = {}
    for key, entry in self.spec.items():
      if key == "index" and key not in examples:
        out[key] = np.arange(rows.start, rows.stop, dtype=np.int64)
        continue
      value = np.asarray(examples[key])
      shape = (n, *entry.get("shape", ()))
      if value.shape != shape:
        raise DatasetError(f"{where}: feature {key!r} has shape {value.shape}, expected {shape}")
      if entry["type"] == "image" and value.dtype != np.uint8:
        raise DatasetError(f"{where}: 'image' must be uint8 (0..255), got {value.dtype}")
      out[key] = value.astype(entry["dtype"], copy=False)
    if not np.array_equal(out["index"], np.arange(rows.start, rows.stop)):
      raise DatasetError(f"{where}: 'index' does not match the shard's global indices {rows.start}..{rows.stop - 1}")
    return out

  def _serialize(self, arrays: dict[str, np.ndarray], pngs: list[bytes]) -> list[bytes]:
    from tensorflow_datasets.core import example_serializer

    if self._features is None:
      self._features = tfds_features(self.spec)
      self._serializer = example_serializer.ExampleSerializer(self._features.get_serialized_info())
    records = []
    for row, png in enumerate(pngs):
      example = {k: (png if k == "image" else v[row]) for k, v in arrays.items()}
      proto = self._serializer.get_tf_example(self._features.encode_example(example))
      # Sorted map keys: the same samples give the same bytes in any process (hash seeds differ).
      records.append(proto.SerializeToString(deterministic=True))
    return records

  def write_shard(self, shard: int, examples: Mapping[str, Any]) -> dict:
    """Writes shard ``shard`` from per-sample arrays (leading axis = the shard's samples).

    ``examples``: 'image' uint8 (n, H, W, C), optional 'index' (checked against
    ``shard_range``), 'latent' and scalars as in the spec. Returns its record.
    Raises ``ShardWriteError`` on I/O failure (disk full...): the temporary file is
    removed, and no complete shard is touched.
    """
    if shard % self.process_count != self.process_index:
      raise DatasetError(
          f"shard {shard} belongs to host {shard % self.process_count} of {self.process_count}, "
          f"not to this host ({self.process_index})"
      )
    arrays = self._check_examples(shard, examples)
    with concurrent.futures.ThreadPoolExecutor(self.encode_threads) as pool:  # PIL's zlib releases the GIL.
      pngs = list(pool.map(encode_png, arrays["image"]))
    records = self._serialize(arrays, pngs)

    path, record_path = self.shard_path(shard), self._record_path(shard)
    tmp = _tmp_name(path)
    written: list[str] = []
    try:
      _remove(record_path)  # from here on the shard counts as incomplete until its new record exists.
      for stale in glob.glob(glob.escape(path) + ".tmp-*"):
        _remove(stale)
      if self.write_images:
        for index, png in zip(arrays["index"], pngs):
          image_path = self.image_path(int(index))
          written.append(_tmp_name(image_path))
          with open(written[-1], "wb") as f:
            f.write(png)
          os.replace(written.pop(), image_path)
      writer = open_record_writer(tmp)
      written.append(tmp)
      try:
        for record in records:
          writer.write(record)
      finally:
        writer.close()
      with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
      size, digest = os.path.getsize(tmp), _sha256(tmp)
      os.replace(tmp, path)
      written.remove(tmp)
      _fsync_dir(self.directory)
      record = {
          "shard": shard,
          "file": self.shard_file(shard),
          "count": len(records),
          "bytes": size,
          "sha256": digest,
          "first_index": int(arrays["index"][0]),
          "process_index": self.process_index,
          "process_count": self.process_count,
          "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
      }
      _write_json(record_path, record)
    except (OSError, RuntimeError) as e:  # array_record reports I/O failures as RuntimeError.
      for leftover in written:
        _remove(leftover)
      text = str(e)
      full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text
      raise ShardWriteError(
          getattr(e, "errno", None) or errno.EIO,
          f"cannot write shard {shard} of {self.num_shards} to {path}: {text}"
          + (" (disk full)" if full else "")
          + f". Its temporary file was removed and the complete shards are intact; "
          f"{'free space' if full else 'fix the cause'} and rerun to resume",
      ) from e
    except BaseException:
      for leftover in written:
        _remove(leftover)
      raise
    self.pending_reasons.pop(shard, None)
    return record

  def write_pending(
      self, generate: Callable[[np.ndarray], Mapping[str, Any]], desc: str = "", *, overlap: bool = True
  ) -> list[int]:
    """Generates and writes every pending shard of this host; returns the shards written.

    ``generate(indices)`` gets the int64 global indices of one shard and returns
    its examples (see ``write_shard``). It is always called in this thread, in
    shard order. With ``overlap`` (default) a background thread writes shard k
    (PNG encoding, serialization, fsync, hashing) while ``generate`` makes shard
    k + 1: a queue of one, so at most two shards are held in memory, and a write
    error surfaces at the latest when the next shard is handed over. Every shard is
    still written by ``write_shard`` alone (temporary file, rename, record), so the
    bytes are those of a sequential run and a kill loses at most the shard being
    written and the one being generated, both redone on resume.
    """
    from discovery_jax.progress import Progress

    shards = self.pending_shards()
    total = sum(len(self.shard_range(s)) for s in self.host_shards())
    todo = sum(len(self.shard_range(s)) for s in shards)
    progress = Progress(
        total,
        "samples",
        desc or f"{self.name} host {self.process_index}/{self.process_count}",
        already_done=total - todo,
    )
    if not overlap:
      for shard in shards:
        rows = self.shard_range(shard)
        self.write_shard(shard, generate(np.arange(rows.start, rows.stop, dtype=np.int64)))
        progress.update(len(rows))
      return shards

    in_flight: tuple[int, concurrent.futures.Future] | None = None

    def hand_over() -> None:  # waits for the shard being written; raises its error here.
      nonlocal in_flight
      if in_flight is not None:
        shard, future = in_flight
        in_flight = None
        future.result()
        progress.update(len(self.shard_range(shard)))

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dataset-writer") as pool:
      try:
        for shard in shards:
          rows = self.shard_range(shard)
          examples = generate(np.arange(rows.start, rows.stop, dtype=np.int64))
          hand_over()
          in_flight = (shard, pool.submit(self.write_shard, shard, examples))
          del examples
        hand_over()
      except BaseException:
        # Let a write in progress finish (or fail) cleanly before the error propagates:
        # its shard is then either complete and recorded or absent.
        if in_flight is not None:
          concurrent.futures.wait([in_flight[1]])
        raise
    return shards

  # ------------------------------------------------------------------ verification

  def verify_shard(self, shard: int) -> str | None:
    """Why ``shard`` is broken (reads every record), or None when it is complete and intact."""
    from tensorflow_datasets.proto import tf_example_pb2

    why = self._quick_check(shard)
    if why is not None:
      return why
    path = self.shard_path(shard)
    record = _read_json(self._record_path(shard))
    if _sha256(path) != record.get("sha256"):
      return "sha256 differs from the one recorded when it was written (corrupt)"
    try:
      records = read_records(path)
    except (RuntimeError, OSError) as e:
      return f"unreadable: {e}"
    rows = self.shard_range(shard)
    if len(records) != len(rows):
      return f"{len(records)} records, expected {len(rows)}"
    for expected, raw in zip(rows, records):
      try:
        got = tf_example_pb2.Example.FromString(raw).features.feature["index"].int64_list.value[0]
      except Exception as e:  # a record that does not parse: corrupt.
        return f"record of sample {expected} does not parse: {e}"
      if got != expected:
        return f"record holds sample {got} where {expected} belongs"
    if self.write_images:
      absent = [i for i in rows if not os.path.exists(self.image_path(i))]
      if absent:
        return f"{len(absent)} PNG file(s) missing in {IMAGES_DIR}/ (first: {self.image_path(absent[0])})"
    return None

  def finalize(self) -> FinalizeReport:
    """Verifies every shard of every host and, if all are intact, writes the tfds
    metadata and ``manifest.json``. Broken shards are deleted and reported (a rerun
    regenerates exactly those). File-based: run it on one process after all hosts
    finished (``parallel.sync_hosts``), or alone, any time later."""
    report = FinalizeReport(self.directory, self.num_samples, self.num_shards)
    for pattern in ("*.tmp-*", os.path.join(RECORDS_DIR, "*.tmp-*"), os.path.join(IMAGES_DIR, "*.tmp-*")):
      for leftover in glob.glob(os.path.join(self.directory, pattern)):
        if _remove(leftover):
          report.removed_temp.append(os.path.relpath(leftover, self.directory))
    records = []
    with concurrent.futures.ThreadPoolExecutor(self.encode_threads) as pool:  # hashing and reads release the GIL.
      reasons = list(pool.map(self.verify_shard, range(self.num_shards)))
    for shard, why in enumerate(reasons):
      if why == "missing":
        report.missing.append(shard)
      elif why is not None:
        report.repaired[shard] = why
        _remove(self._record_path(shard))
        _remove(self.shard_path(shard))
        logging.warning("%s: deleted broken shard %d (%s); a rerun regenerates it", self.directory, shard, why)
      else:
        records.append(_read_json(self._record_path(shard)))
    if report.missing or report.repaired:
      for stale in TFDS_FILES + (MANIFEST,):  # never leave metadata that claims a dataset with holes.
        _remove(os.path.join(self.directory, stale))
      logging.warning("%s", report.summary())
      return report
    self._write_metadata(records)
    report.complete = True
    logging.info("%s", report.summary())
    return report

  def _write_metadata(self, records: list[dict]) -> None:
    import tensorflow_datasets as tfds

    ident = _read_json(os.path.join(self.directory, IDENTITY_FILE))
    metadata = self.metadata if self.metadata is not None else ident.get("metadata", {})
    split = tfds.core.SplitInfo(
        name=SPLIT, shard_lengths=[r["count"] for r in records], num_bytes=sum(r["bytes"] for r in records)
    )
    description = (
        f"{self.name}: {self.num_samples} samples synthesized by discovery_jax "
        f"(shards of {self.shard_size}; see {MANIFEST} for provenance)."
    )
    tfds.folder_dataset.write_metadata(
        data_dir=self.directory,
        features=tfds_features(self.spec),
        split_infos=[split],
        check_data=False,
        description=description,
    )
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "name": self.name,
        "split": SPLIT,
        "num_samples": self.num_samples,
        "shard_size": self.shard_size,
        "num_shards": self.num_shards,
        "features": self.spec,
        "images_dir": IMAGES_DIR if self.write_images else None,
        "shards": [{k: r[k] for k in ("shard", "file", "count", "bytes", "sha256", "first_index")} for r in records],
        "metadata": metadata,
        "created": ident.get("created"),
        "finalized": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _write_json(os.path.join(self.directory, MANIFEST), manifest)
    source = read_dataset(self.directory)  # the real reader must agree before we call it complete.
    if len(source) != self.num_samples or int(source[self.num_samples - 1]["index"]) != self.num_samples - 1:
      raise DatasetError(f"{self.directory}: tfds reads {len(source)} samples back, expected {self.num_samples}")


# --------------------------------------------------------------------------- reading


def read_dataset(directory: str, split: str = SPLIT):
  """The finalized dataset as a random-access tfds data source (no TensorFlow)."""
  import tensorflow_datasets as tfds

  if not os.path.isfile(os.path.join(directory, TFDS_FILES[0])):
    raise DatasetError(
        f"{directory} has no {TFDS_FILES[0]}: the dataset is not finalized "
        "(run `python -m discovery_jax.data.dataset finalize DIR` after all hosts finished)"
    )
  return tfds.builder_from_directory(directory).as_data_source(split=split)


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not os.path.isfile(path):
    raise DatasetError(f"{directory} has no {MANIFEST}: the dataset is not finalized")
  return _read_json(path)


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m discovery_jax.data.dataset {status,finalize} DIR``: inspect or finish a dataset alone."""
  parser = argparse.ArgumentParser(prog="python -m discovery_jax.data.dataset", description=main.__doc__)
  parser.add_argument("command", choices=("status", "finalize"))
  parser.add_argument("directory")
  args = parser.parse_args(argv)
  try:
    writer = DatasetWriter.open(args.directory)
  except DatasetError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.command == "status":
    pending = writer.pending_shards()
    done = writer.num_shards - len(pending)
    print(
        f"{writer.directory}: {done}/{writer.num_shards} shards complete"
        + (f"; pending {_short(pending)}" if pending else "")
    )
    for shard, why in sorted(writer.pending_reasons.items()):
      print(f"  shard {shard}: {why}")
    return 0 if not pending else 1
  report = writer.finalize()
  print(report.summary())
  return 0 if report.complete else 1


if __name__ == "__main__":
  sys.exit(main())
