"""File plumbing every writer shares: atomic writes (a file is either complete or
absent), content hashes, and JSON for numpy and dataclass values."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
from typing import Any, Callable, Iterator

import numpy as np


def _tmp_name(path: str, suffix: str = "") -> str:
  return f"{path}.tmp-{os.getpid()}{suffix}"


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
  """Yields a temporary path beside ``path``; renamed onto it when the block
  succeeds, removed when it fails. ``suffix`` keeps an extension libraries insist on."""
  tmp = _tmp_name(path, suffix)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` through a synced temporary file and a rename."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())


def atomic_write_text(path: str, text: str) -> None:
  atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str, obj: Any) -> None:
  """Indented, key-sorted JSON; numpy values and dataclasses are converted."""
  atomic_write_text(path, dumps(obj))


def atomic_save_npy(path: str, array: np.ndarray) -> None:
  with atomic_path(path, ".npy") as tmp:
    np.save(tmp, array)


def atomic_save_npz(path: str, **arrays: np.ndarray) -> None:
  with atomic_path(path, ".npz") as tmp:
    np.savez(tmp, **arrays)


def atomic_write_with(path: str, write: Callable[[str], None], suffix: str = "") -> None:
  """``write(tmp_path)`` then an atomic rename onto ``path`` (for PIL, FITS, matplotlib)."""
  with atomic_path(path, suffix) as tmp:
    write(tmp)


def sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def sha256_arrays(arrays) -> str:
  """One hash over arrays' float32 bytes, in order."""
  digest = hashlib.sha256()
  for a in arrays:
    digest.update(np.ascontiguousarray(a, np.float32).tobytes())
  return digest.hexdigest()


def json_default(o: Any) -> Any:
  """``json.dumps(default=...)`` for numpy scalars/arrays and dataclasses."""
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  if dataclasses.is_dataclass(o) and not isinstance(o, type):
    return dataclasses.asdict(o)
  raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def dumps(obj: Any) -> str:
  return json.dumps(obj, indent=1, sort_keys=True, default=json_default)


def npy_bytes(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  np.save(buf, array)
  return buf.getvalue()
