"""File plumbing every writer shares: atomic writes (a file is either complete or
absent), content hashes, JSON for numpy and dataclass values (non-finite numbers
become ``null``: strict parsers reject a bare ``NaN``), and what a failed write
means for the user (disk full, read-only)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import re
from typing import Any, Callable, Iterator

import numpy as np

# The temporary names this module writes: ``<name>.tmp-<pid>`` plus an optional extension.
TMP_PATTERN = re.compile(r"\.tmp-(\d+)(\.[A-Za-z0-9]+)?$")
# Temporary names of earlier versions (no pid): removed by ``remove_stale_temporaries`` too.
LEGACY_TMP_NAMES = ("samples.npy.tmp.npy",)
# numpy reports a short write on a full disk without an errno: "32768 requested and 2016 written".
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
NO_SPACE = "no space left on device"
READ_ONLY = "read-only file system"
NOT_PERMITTED = "permission denied"


class DiskError(OSError):
  """A write failed because the disk is full or not writable; ``filename`` names the file."""


def disk_problem(e: BaseException) -> str | None:
  """What an OSError means for the user: NO_SPACE, READ_ONLY, NOT_PERMITTED, or None (another error)."""
  if not isinstance(e, OSError):
    return None
  text = str(e)
  if e.errno in (errno.ENOSPC, errno.EDQUOT) or _SHORT_WRITE.search(text) or "No space left" in text:
    return NO_SPACE
  if e.errno == errno.EROFS or "Read-only file system" in text:
    return READ_ONLY
  if e.errno in (errno.EACCES, errno.EPERM):
    return NOT_PERMITTED
  return None


def as_disk_error(e: BaseException, path: str) -> BaseException:
  """``e`` as a DiskError naming ``path`` when it is a disk problem (else ``e`` itself)."""
  problem = disk_problem(e)
  if problem is None or isinstance(e, DiskError):
    return e
  code = e.errno or (errno.ENOSPC if problem == NO_SPACE else errno.EIO)
  return DiskError(code, problem, getattr(e, "filename", None) or path)


def _tmp_name(path: str, suffix: str = "") -> str:
  return f"{path}.tmp-{os.getpid()}{suffix}"


def _pid_alive(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # exists, owned by someone else
    return True
  return True


def remove_stale_temporaries(root: str) -> list[str]:
  """Deletes this module's temporary files under ``root`` (``*.tmp-<pid>[.ext]``) left by
  a run that died (its pid no longer alive here), and earlier versions' (``LEGACY_TMP_NAMES``);
  returns their paths. Nothing else is touched. Call it with the workdir's lock held."""
  removed = []
  for folder, _, files in os.walk(root):
    for name in files:
      m = TMP_PATTERN.search(name)
      if name not in LEGACY_TMP_NAMES and (m is None or _pid_alive(int(m.group(1)))):
        continue
      path = os.path.join(folder, name)
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
        removed.append(path)
  return removed


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
  """Yields a temporary path beside ``path``; renamed onto it when the block
  succeeds, removed when it fails. ``suffix`` keeps an extension libraries insist on."""
  tmp = _tmp_name(path, suffix)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    error = as_disk_error(e, path)
    if error is not e:
      raise error from e
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


def finite_json(obj: Any) -> Any:
  """``obj`` with every NaN/Inf float (Python or numpy, at any depth) replaced by None."""
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, np.ndarray):
    return finite_json(obj.tolist())
  if isinstance(obj, dict):
    return {k: finite_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite_json(v) for v in obj]
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return finite_json(dataclasses.asdict(obj))
  return obj


def dumps(obj: Any) -> str:
  """Indented, key-sorted, strict JSON: non-finite numbers are written as ``null``."""
  return json.dumps(finite_json(obj), indent=1, sort_keys=True, default=_json_default_finite, allow_nan=False)


def _json_default_finite(o: Any) -> Any:
  return finite_json(json_default(o))


def npy_bytes(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  np.save(buf, array)
  return buf.getvalue()
