"""Loading config files (Python files with ``get_config()``) outside absl flags.

Target-domain configs build on a base-model config with
``configlib.load_sibling(__file__, 'afhq.py')``, so every config stays a plain
file that ``--config=configs/x.py`` can name.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Executes a config file and returns its ``get_config()`` (or ``get_config(arg)``)."""
  if ":" in path and not os.path.exists(path):
    path, arg = path.split(":", 1)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} does not exist")
  name = "_dj_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"config file {path} has no get_config() function")
  return module.get_config(arg) if arg is not None else module.get_config()


def load_sibling(current_file: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Loads config ``name`` from the folder of ``current_file`` (a config file)."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(current_file)), name), arg)


def to_plain(config: Any) -> Any:
  """A JSON-serialisable copy of a ConfigDict (tuples become lists)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  if isinstance(config, dict):
    return {k: to_plain(v) for k, v in config.items()}
  if isinstance(config, (list, tuple)):
    return [to_plain(v) for v in config]
  return config


def name_list(value: Any) -> tuple[str, ...]:
  """A tuple of names from a config field given as a tuple or as a command-line string.

  ``--config.sample.methods=discovery,gaussian`` reaches the config as the string
  (or one-element tuple) ``'discovery,gaussian'``; both spellings mean the same.
  """
  items = [value] if isinstance(value, str) else list(value)
  names = [part.strip() for item in items for part in str(item).split(",")]
  return tuple(name for name in names if name)
