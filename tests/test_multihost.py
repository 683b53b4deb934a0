"""Several hosts: a REAL 2-process ``jax.distributed`` run on localhost (CPU, gloo
collectives) that computes over a mesh spanning both processes and writes its
shards; plus the pure parts of ``parallel`` (setup resolution, process slices).

Also the worker: ``python tests/test_multihost.py worker PORT PROCESS_ID DIR RESULT``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

NUM_PROCESSES = 2
LOCAL_DEVICES = 2
TIMEOUT_S = 120


def _worker(port: str, process_id: str, directory: str, result_path: str) -> None:
  """One host: join, compute over the global mesh, write this host's shards."""
  from discovery_jax import parallel

  if process_id == "0":  # one process takes explicit arguments, the other the environment.
    setup = parallel.initialize_distributed(f"127.0.0.1:{port}", NUM_PROCESSES, 0, initialization_timeout=60)
  else:
    setup = parallel.initialize_distributed(initialization_timeout=60)
  assert parallel.initialize_distributed() is setup  # idempotent.
  import jax
  import jax.numpy as jnp

  from discovery_jax.data import dataset as D
  from tests import test_dataset as T

  index, count = jax.process_index(), jax.process_count()
  mesh = parallel.make_mesh()  # data axis over all 4 devices of both processes.
  out = {
      "setup": setup.source,
      "process_index": index,
      "process_count": count,
      "global_devices": jax.device_count(),
      "local_devices": jax.local_device_count(),
      "mesh": dict(mesh.shape),
  }

  # Each host reads only its slice of a global input; one global jitted reduction.
  rows = parallel.process_slice(8 * count)
  local = np.arange(rows.start, rows.stop, dtype=np.float32)
  x = parallel.host_to_global(local, mesh)
  out["global_shape"] = list(x.shape)
  out["global_sum"] = float(jax.jit(lambda a: jnp.sum(a * 2.0))(x))
  y = parallel.global_to_host(jax.jit(lambda a: a + 1.0)(x))
  out["roundtrip_ok"] = bool(np.array_equal(y, local + 1.0))
  out["psum"] = int(
      jax.jit(
          jax.shard_map(
              lambda a: jax.lax.psum(a, parallel.DATA), mesh=mesh, in_specs=jax.P(parallel.DATA), out_specs=jax.P()
          )
      )(parallel.host_to_global(np.full((LOCAL_DEVICES,), index + 1), mesh))[0]
  )

  # A mesh over this host's devices only: independent per-host work, no collectives.
  lmesh = parallel.local_mesh()
  z = jax.jit(lambda a: a * 3.0)(parallel.shard_batch(local, lmesh))
  out["local_mesh_ok"] = lmesh.shape[parallel.DATA] == LOCAL_DEVICES and bool(np.array_equal(np.asarray(z), local * 3))

  # Shards: host s % count writes shard s. Hosts hold different numbers of shards, so
  # lock-step global steps run max-over-hosts times, padding with a repeated shard.
  writer = T.make_writer(directory, index, count)
  pending = writer.pending_shards()
  steps = parallel.host_max(len(pending))
  out["steps"] = steps
  score_fn = jax.jit(lambda i: i.astype(jnp.float32) * 0.5)
  written = []
  for step in range(steps):
    shard = pending[min(step, len(pending) - 1)] if pending else None
    rows = writer.shard_range(shard) if pending else range(0)
    indices = np.arange(rows.start, rows.stop, dtype=np.int64)
    padded = parallel.pad_batch(indices, T.K) if len(indices) else np.zeros(T.K, np.int64)
    padded = parallel.pad_batch(padded, parallel.round_up(T.K, LOCAL_DEVICES))
    scores = parallel.global_to_host(score_fn(parallel.host_to_global(padded, mesh)))[: len(indices)]
    if step < len(pending):
      examples = T.fake_examples(indices)
      np.testing.assert_array_equal(scores, examples["score"])
      examples["score"] = scores
      writer.write_shard(shard, examples)
      written.append(shard)
  out["written"] = written
  parallel.sync_hosts("dataset-written")
  if index == 0:
    report = writer.finalize()
    out["complete"] = report.complete
    out["summary"] = report.summary()
  parallel.sync_hosts("finalized")
  with open(result_path, "w") as f:
    json.dump(out, f)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


import pytest  # noqa: E402

from discovery_jax import parallel  # noqa: E402

pytestmark = pytest.mark.slow  # several processes and a real coordinator: the full tier only


def _run_two_processes(tmp_path):
  port = str(_free_port())
  directory = tmp_path / "ds"
  procs, logs = [], []
  for pid in range(NUM_PROCESSES):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCOVERY_", "SLURM_"))}
    env.update(
        JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={LOCAL_DEVICES}", PYTHONPATH=REPO
    )
    if pid:
      env.update(
          DISCOVERY_COORDINATOR=f"127.0.0.1:{port}",
          DISCOVERY_NUM_PROCESSES=str(NUM_PROCESSES),
          DISCOVERY_PROCESS_ID=str(pid),
      )
    log = open(tmp_path / f"log{pid}.txt", "w+")
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "worker",
                port,
                str(pid),
                str(directory),
                str(tmp_path / f"result{pid}.json"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    )
    logs.append(log)
  deadline = time.time() + TIMEOUT_S
  try:
    for proc in procs:
      proc.wait(max(1.0, deadline - time.time()))
  except subprocess.TimeoutExpired:
    pass
  finally:
    for proc in procs:  # a hang fails the test instead of blocking CI.
      if proc.poll() is None:
        proc.kill()
        proc.wait(10)
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read()[-4000:])
    log.close()
  for pid, proc in enumerate(procs):
    assert proc.returncode == 0, f"process {pid} exited with {proc.returncode}:\n" + "\n---\n".join(outputs)
  return directory, [json.loads((tmp_path / f"result{pid}.json").read_text()) for pid in range(NUM_PROCESSES)]


def test_two_process_jax_distributed_run_writes_disjoint_shards(tmp_path):
  from tests import test_dataset as T

  directory, results = _run_two_processes(tmp_path)
  r0, r1 = results
  assert (r0["setup"], r1["setup"]) == ("explicit", "env")
  for pid, r in enumerate(results):
    assert (r["process_index"], r["process_count"]) == (pid, 2)
    assert (r["global_devices"], r["local_devices"]) == (4, 2)
    assert r["mesh"] == {"data": 4, "model": 1} and r["global_shape"] == [16]
    assert r["global_sum"] == 2.0 * sum(range(16)) and r["roundtrip_ok"] and r["local_mesh_ok"]
    assert r["psum"] == 2 * 1 + 2 * 2  # each process's 2 devices hold process_index + 1.
    assert r["steps"] == 3
  assert r0["written"] == [0, 2, 4] and r1["written"] == [1, 3]
  assert r0["complete"], r0["summary"]

  reference = tmp_path / "single"
  single = T.make_writer(reference)
  single.write_pending(T.fake_examples)
  assert single.finalize().complete
  assert T.shard_digests(directory) == T.shard_digests(reference)
  records = [json.loads((directory / "_shards" / f"{s:05d}.json").read_text()) for s in range(5)]
  assert [r["process_index"] for r in records] == [0, 1, 0, 1, 0]
  from discovery_jax.data import dataset as D

  source = D.read_dataset(str(directory))
  assert sorted(int(source[i]["index"]) for i in range(len(source))) == list(range(T.N))


def test_single_process_is_a_no_op_and_global_helpers_work():
  import jax

  setup = parallel.initialize_distributed()
  assert setup.source == "single" and not setup.multi_process and not jax.distributed.is_initialized()
  assert parallel.initialize_distributed() is setup
  mesh = parallel.make_mesh()
  x = np.arange(16, dtype=np.float32).reshape(16, 1)
  g = parallel.host_to_global({"x": x}, mesh)
  assert g["x"].sharding == parallel.batch_sharding(mesh) and g["x"].shape == (16, 1)
  np.testing.assert_array_equal(parallel.global_to_host(g)["x"], x)
  np.testing.assert_array_equal(parallel.global_to_host(parallel.replicate(x, mesh)), x)
  assert parallel.host_max(3) == 3
  parallel.sync_hosts("noop")


def test_process_slices_cover_every_item_once():
  for n in (0, 1, 7, 23, 1000):
    for count in (1, 2, 3, 8):
      slices = [parallel.process_slice(n, i, count) for i in range(count)]
      assert [j for s in slices for j in s] == list(range(n))
      assert max(map(len, slices)) - min(map(len, slices)) <= 1
  with pytest.raises(ValueError, match="process_index=2 is not in"):
    parallel.process_slice(10, 2, 2)


def test_distributed_setup_sources():
  setup = parallel.distributed_setup
  assert setup(environ={}).source == "single"
  env = {"DISCOVERY_COORDINATOR": "10.0.0.1:1234", "DISCOVERY_NUM_PROCESSES": "4", "DISCOVERY_PROCESS_ID": "3"}
  assert setup(environ=env) == parallel.DistributedSetup("env", "10.0.0.1:1234", 4, 3)
  assert setup(process_id=1, environ=env) == parallel.DistributedSetup("explicit", "10.0.0.1:1234", 4, 1)
  assert setup("h:1", 2, 0, environ={}).source == "explicit"
  assert setup(environ={"DISCOVERY_COORDINATOR": "auto"}).source == "auto"
  assert setup(environ={"DISCOVERY_NUM_PROCESSES": "1"}).source == "single"
  slurm = {
      "SLURM_NTASKS": "4",
      "SLURM_PROCID": "2",
      "SLURM_JOB_ID": "4242",
      "SLURM_JOB_NODELIST": "gpu[07-10]",
      "SLURM_STEP_NODELIST": "gpu[08-09,12],cpu1",
  }
  assert setup(environ=slurm) == parallel.DistributedSetup("slurm", "gpu08:24242", 4, 2)
  assert setup(environ={**slurm, "DISCOVERY_COORDINATOR_PORT": "5000"}).coordinator_address == "gpu08:5000"
  assert setup(environ={**slurm, "SLURM_NTASKS": "1"}).source == "single"
  with pytest.raises(ValueError, match=r"missing: process_id \(or \$DISCOVERY_PROCESS_ID\)"):
    setup(environ={"DISCOVERY_COORDINATOR": "h:1", "DISCOVERY_NUM_PROCESSES": "2"})
  with pytest.raises(ValueError, match="process_id=2 is not in"):
    setup("h:1", 2, 2, environ={})
  with pytest.raises(ValueError, match="must be host:port"):
    setup("h", 2, 1, environ={})
  assert parallel.slurm_first_host("rack[1-2]-n[07,9],x") == "rack1-n07"
  assert parallel.slurm_first_host("node001") == "node001"


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
  _worker(*sys.argv[2:6])
