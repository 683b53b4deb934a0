"""Device meshes and data-parallel placement.

One mesh axis ``data`` (room is left for a ``model`` axis of size 1): batches are
sharded over it with ``NamedSharding``, parameters are replicated, and jit
partitions every kernel by following its inputs. Randomness never depends on the
layout: keys come from global sample indices (see ``diffusion.sample_keys``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA = "data"
MODEL = "model"


def make_mesh(num_devices: int = -1, devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
  """A (data, model=1) mesh over ``num_devices`` devices (-1: all of them)."""
  devices = list(devices if devices is not None else jax.devices())
  if num_devices not in (-1, 0):
    if num_devices > len(devices):
      raise ValueError(f"parallel.num_devices={num_devices} but only {len(devices)} devices are visible")
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices).reshape(len(devices), 1), (DATA, MODEL),
                           axis_types=(jax.sharding.AxisType.Auto,) * 2)


def data_size(mesh: jax.sharding.Mesh | None) -> int:
  return 1 if mesh is None else mesh.shape[DATA]


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def replicate(tree: Any, mesh: jax.sharding.Mesh | None) -> Any:
  """Places every leaf of ``tree`` on all devices of ``mesh`` (as jax arrays)."""
  if mesh is None:
    return jax.tree_util.tree_map(jnp.asarray, tree)
  return jax.device_put(tree, replicated(mesh))


def shard_batch(x: Any, mesh: jax.sharding.Mesh | None) -> Any:
  """Splits the leading axis of every leaf across the mesh's data axis."""
  if mesh is None:
    return jax.tree_util.tree_map(jnp.asarray, x)
  return jax.device_put(x, batch_sharding(mesh))


def round_up(n: int, multiple: int) -> int:
  return int(math.ceil(n / multiple) * multiple)


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
  """Pads the leading axis to ``size`` by repeating the last row (results are dropped)."""
  x = np.asarray(x)
  if x.shape[0] == size:
    return x
  if x.shape[0] > size:
    raise ValueError(f"batch of {x.shape[0]} does not fit a padded batch of {size}")
  pad = np.repeat(x[-1:], size - x.shape[0], axis=0)
  return np.concatenate([x, pad], axis=0)
