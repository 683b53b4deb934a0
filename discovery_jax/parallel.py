"""Device meshes and data-parallel placement.

One mesh axis ``data`` (room is left for a ``model`` axis of size 1): batches are
sharded over it with ``NamedSharding``, parameters are replicated, and jit
partitions every kernel by following its inputs. Randomness never depends on the
layout: keys come from global sample indices (see ``diffusion.sample_keys``).

Several hosts: ``initialize_distributed`` joins the run (TPU pod, SLURM, or
explicit/environment settings), ``process_slice`` gives each host its part of the
input, and ``host_to_global`` / ``global_to_host`` move a batch between host-local
numpy rows and a global array whose data axis spans every device of every host.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import math
import os
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA = "data"
MODEL = "model"


def make_mesh(num_devices: int | None = None, devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
  """A (data, model=1) mesh over ``num_devices`` devices (None: all of them)."""
  devices = list(devices if devices is not None else jax.devices())
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(f"parallel.num_devices={num_devices} but only {len(devices)} devices are visible")
    devices = devices[:num_devices]
  return jax.sharding.Mesh(
      np.array(devices).reshape(len(devices), 1), (DATA, MODEL), axis_types=(jax.sharding.AxisType.Auto,) * 2
  )


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


# ---------------------------------------------------------------------------
# Several hosts (processes).
#
# Every process runs the same program (multi-controller JAX). Each reads only its
# own part of the input (``process_slice``) and writes only its own output shards
# (``data.dataset``), so the hosts never exchange images: collectives are needed
# only when a mesh spans several hosts, and to agree on the end of a run.

ENV_COORDINATOR = "DISCOVERY_COORDINATOR"  # "host:port" of process 0, or "auto" (let jax detect the cluster)
ENV_NUM_PROCESSES = "DISCOVERY_NUM_PROCESSES"
ENV_PROCESS_ID = "DISCOVERY_PROCESS_ID"
ENV_PORT = "DISCOVERY_COORDINATOR_PORT"  # port of the coordinator under SLURM (default: from the job id)
AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class DistributedSetup:
  """How this process joins (or does not join) a multi-process run."""

  source: str  # "single", "explicit", "env", "slurm", "tpu" or "auto"
  coordinator_address: str | None = None
  num_processes: int | None = None  # None: detected by jax (source "tpu"/"auto")
  process_id: int | None = None

  @property
  def multi_process(self) -> bool:
    return self.source != "single"


_INITIALIZED: DistributedSetup | None = None


def slurm_first_host(nodelist: str) -> str:
  """The first host name of a SLURM node list ("gpu[03-05,9],cpu1" -> "gpu03")."""
  depth, end = 0, len(nodelist)
  for i, ch in enumerate(nodelist):  # the first top-level comma ends the first group.
    depth += ch == "["
    depth -= ch == "]"
    if ch == "," and depth == 0:
      end = i
      break
  group = nodelist[:end].strip()
  # Every bracket expression contributes its first value ("rack[1-2]-n[07,9]" -> "rack1-n07").
  host = re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], group)
  if not host or "[" in host or "]" in host:
    raise ValueError(f"cannot read the first host of SLURM node list {nodelist!r}")
  return host


def _slurm_port(environ: Mapping[str, str]) -> int:
  if environ.get(ENV_PORT):
    return int(environ[ENV_PORT])
  # All tasks of a job agree on the job id; spread jobs sharing a node over 8000 ports.
  return 20000 + int(environ.get("SLURM_JOB_ID", "0")) % 8000


def _on_tpu_vm() -> bool:
  """A Cloud TPU VM: libtpu installed and TPU chips attached (no network query)."""
  if importlib.util.find_spec("libtpu") is None:
    return False
  return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def distributed_setup(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> DistributedSetup:
  """Decides how to join a multi-process run, without touching jax (pure; testable).

  Order: explicit arguments, then ``DISCOVERY_COORDINATOR`` / ``DISCOVERY_NUM_PROCESSES`` /
  ``DISCOVERY_PROCESS_ID`` (an argument overrides its variable), then SLURM
  (``SLURM_PROCID``, ``SLURM_NTASKS`` > 1, the first host of the step/job node
  list and ``DISCOVERY_COORDINATOR_PORT``), then a Cloud TPU VM (jax reads the pod
  layout from the TPU metadata), else a single process.
  """
  env = os.environ if environ is None else environ
  given = any(v is not None for v in (coordinator_address, num_processes, process_id))
  coord = coordinator_address if coordinator_address is not None else env.get(ENV_COORDINATOR) or None
  num = num_processes if num_processes is not None else env.get(ENV_NUM_PROCESSES) or None
  pid = process_id if process_id is not None else env.get(ENV_PROCESS_ID) or None
  source = "explicit" if given else "env"
  if coord == AUTO:
    return DistributedSetup("auto")
  if any(v is not None for v in (coord, num, pid)):
    names = {
        "coordinator_address": (coord, ENV_COORDINATOR),
        "num_processes": (num, ENV_NUM_PROCESSES),
        "process_id": (pid, ENV_PROCESS_ID),
    }
    missing = [f"{k} (or ${e})" for k, (v, e) in names.items() if v is None]
    try:
      num = None if num is None else int(num)
      pid = None if pid is None else int(pid)
    except ValueError:
      raise ValueError(
          f"num_processes={num!r} and process_id={pid!r} must be integers " f"(${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID})"
      ) from None
    if num == 1 and pid in (None, 0):
      return DistributedSetup("single", num_processes=1, process_id=0)
    if missing:
      raise ValueError(
          f"a multi-process run needs all of coordinator_address, num_processes and process_id; "
          f"missing: {', '.join(missing)}"
      )
    if num < 1 or not 0 <= pid < num:
      raise ValueError(f"process_id={pid} is not in [0, num_processes={num})")
    if ":" not in coord:
      raise ValueError(f"coordinator_address={coord!r} must be host:port")
    return DistributedSetup(source, coord, num, pid)
  ntasks = int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1)
  if ntasks > 1 and "SLURM_PROCID" in env:
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
      raise ValueError("SLURM_NTASKS > 1 but no SLURM_STEP_NODELIST/SLURM_JOB_NODELIST to find the coordinator")
    coord = f"{slurm_first_host(nodelist)}:{_slurm_port(env)}"
    return DistributedSetup("slurm", coord, ntasks, int(env["SLURM_PROCID"]))
  if environ is None and _on_tpu_vm():  # (a given ``environ`` makes this a pure function of it)
    return DistributedSetup("tpu")
  return DistributedSetup("single", num_processes=1, process_id=0)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    initialization_timeout: int = 300,
) -> DistributedSetup:
  """Joins the multi-process run this process belongs to (see ``distributed_setup``).

  A no-op for a single process, and idempotent. Must run before anything asks
  jax for devices. On CPU, cross-process collectives use gloo (TCP).
  """
  global _INITIALIZED
  if _INITIALIZED is not None:
    return _INITIALIZED
  setup = distributed_setup(coordinator_address, num_processes, process_id)
  if not setup.multi_process or jax.distributed.is_initialized():
    _INITIALIZED = setup
    return setup
  from jax._src import xla_bridge  # the only way to tell "too late" before jax raises.

  if xla_bridge.backends_are_initialized():
    raise RuntimeError(
        f"initialize_distributed ({setup.source}: {setup.num_processes} processes) must run before any jax "
        "computation or jax.devices() call; call it first thing in main()"
    )
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if setup.source in ("tpu", "auto"):
    jax.distributed.initialize(initialization_timeout=initialization_timeout)
  else:
    jax.distributed.initialize(
        coordinator_address=setup.coordinator_address,
        num_processes=setup.num_processes,
        process_id=setup.process_id,
        initialization_timeout=initialization_timeout,
    )
  _INITIALIZED = setup
  return setup


def process_slice(n: int, process_index: int | None = None, process_count: int | None = None) -> range:
  """The contiguous part of ``n`` global items that host ``process_index`` handles.

  Parts differ in size by at most one and cover ``range(n)`` exactly once.
  """
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"process_index={index} is not in [0, process_count={count})")
  return range(n * index // count, n * (index + 1) // count)


def local_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A mesh over this host's devices only: hosts then run independently (no collectives)."""
  return make_mesh(num_devices, devices=jax.local_devices())


def host_to_global(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Assembles every host's rows into global arrays sharded over the data axis.

  Each host passes its own rows (the same number on every host); the global
  leading axis is their concatenation in process order, when the mesh's data axis
  lists the devices of process 0 first, then process 1, ... (``make_mesh`` does).
  """
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def global_to_host(tree: Any) -> Any:
  """The rows of each global array that live on this host, as numpy, in global order."""

  def local(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)
    pieces = {}
    for shard in x.addressable_shards:
      start = (shard.index[0].start or 0) if shard.index else 0
      pieces.setdefault(start, shard.data)  # replicas of one block: keep one.
    return np.concatenate([np.asarray(pieces[k]) for k in sorted(pieces)], axis=0)

  return jax.tree_util.tree_map(local, tree)


def sync_hosts(name: str) -> None:
  """Waits until every process reaches this point (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def host_max(value: int) -> int:
  """The largest ``value`` over all processes (e.g. so every host runs as many steps)."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils

  return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))
