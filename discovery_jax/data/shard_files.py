"""Files of a sharded dataset on a file system that several hosts may share:
temporary names unique per host and process, fsync'd JSON, removal that tolerates
a file already gone."""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Mapping

import numpy as np

from discovery_jax import fileio


def jsonable(value: Any) -> Any:
  if isinstance(value, Mapping) or hasattr(value, "to_dict"):
    value = value.to_dict() if hasattr(value, "to_dict") else value
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return str(value)


def tmp_name(path: str) -> str:
  # Host name and pid: hosts sharing a file system never collide on a temporary name.
  return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"


def fsync_dir(directory: str) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_json(path: str, obj: Any) -> None:
  tmp = tmp_name(path)
  try:
    with open(tmp, "w") as f:
      f.write(fileio.dumps(obj))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    remove(tmp)
    raise


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def remove(path: str) -> bool:
  try:
    os.remove(path)
    return True
  except FileNotFoundError:
    return False
