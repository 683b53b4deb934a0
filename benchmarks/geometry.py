"""Latent-discovery throughput at d = 256*256*3: the jitted kernel vs an official-style
per-candidate Python loop, measured in the same run.

Both sides do the same work per candidate: path p slerps (unit directions, linear
norm) from an OOD latent to a fresh draw of the pooled prior, 20 interior points
per path; each candidate gets 10 random ID and 10 random OOD references and three
criteria: mean distance to the ID references, mean angle at the origin to the OOD
references, and a mean angle at the candidate between pairs of OOD latents: the
published code averages 10 pairs of CONSECUTIVE bank rows (ood[i], ood[i+1]) for 10
random i, which the official-style loop does; the jitted kernel averages all 45
pairs of its 10 references (4.5x the angles), so the speed-up is a lower bound.

* official-style loop (numpy, one candidate at a time): the official helpers
  ``euclidean_distance`` and ``find_angle(A, B, C)`` (subtract, normalise, dot,
  acos) called per reference / per pair, as the official code does;
* a vectorised-numpy per-candidate loop (references stacked, one Gram matrix per
  candidate): a stronger baseline, reported alongside;
* ``geometry.discover(mode="rejection")``: draws, candidates, references and
  criteria for 32 paths per jitted call, from inner products. Its default span draws
  sample each path's prior draw through its inner products with the banks and make
  the d numbers only for kept candidates (the prior's law; docs/method.md); the run
  with ``span_draws=False`` draws all d numbers of every path, as the loop does, and
  is reported beside it;
* ``geometry.score_candidates`` on materialised candidates (shared references; the
  criteria alone, against the loops' time inside the criteria);
* ``geometry.discover(mode="optimize")`` (Adam on the criteria), with its
  acceptance rate next to rejection's on the same candidate budget.

  python benchmarks/geometry.py                 # ~1-2 minutes on 2 CPU cores
  python benchmarks/geometry.py --bank-size=50 --paths=64

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SHAPE = (256, 256, 3)
NUM_INTERIOR = 20
NUM_REFS = 10

# ---------------------------------------------------------------------------
# Official-style per-candidate code (numpy translation of the official helpers).


def euclidean_distance(x, y):
  return np.sqrt(np.sum((x - y) ** 2))


def find_angle(a, b, c):
  """Angle at A between B and C in degrees, as the official helper computes it."""
  ab = (b - a) / np.linalg.norm(b - a)
  ac = (c - a) / np.linalg.norm(c - a)
  return np.degrees(np.arccos(np.clip(np.dot(ab, ac) / (np.linalg.norm(ab) * np.linalg.norm(ac)), -1, 1)))


def slerp_interpolation(z1, z2, num_points):
  norm_a, norm_b = np.linalg.norm(z1), np.linalg.norm(z2)
  unit_a, unit_b = z1 / norm_a, z2 / norm_b
  theta = np.arccos(np.clip(np.dot(unit_a, unit_b), -1, 1))
  t = np.linspace(1 / (num_points + 1), num_points / (num_points + 1), num_points)
  fa, fb = np.sin((1 - t) * theta) / np.sin(theta), np.sin(t * theta) / np.sin(theta)
  points = fa[:, None] * unit_a + fb[:, None] * unit_b
  return (points * ((1 - t) * norm_a + t * norm_b)[:, None]).astype(np.float32)


def official_criteria(x, id_refs, ood_refs, origin, ood_bank, pair_rows):
  """As published: distance to 10 ID latents, origin angle to 10 OOD latents, and the
  vertex angle between consecutive bank rows ood[i], ood[i+1] for 10 random i."""
  mean_dis = sum(euclidean_distance(x, r) for r in id_refs) / len(id_refs)
  origin_angle = sum(find_angle(origin, x, r) for r in ood_refs) / len(ood_refs)
  pair_angle = sum(find_angle(x, ood_bank[i], ood_bank[i + 1]) for i in pair_rows) / len(pair_rows)
  return np.array([mean_dis, origin_angle, pair_angle])


def vectorised_criteria(x, id_refs, ood_refs):
  dist = np.linalg.norm(id_refs - x, axis=1).mean()
  cos0 = ood_refs @ x / (np.linalg.norm(ood_refs, axis=1) * np.linalg.norm(x))
  v = ood_refs - x
  g = v @ v.T
  n = np.sqrt(np.diag(g))
  iu = np.triu_indices(len(ood_refs), 1)
  cosv = g[iu] / (n[iu[0]] * n[iu[1]])
  return np.array(
      [dist, np.degrees(np.arccos(np.clip(cos0, -1, 1))).mean(), np.degrees(np.arccos(np.clip(cosv, -1, 1))).mean()]
  )


def naive_loop(ood, idb, mean, sigma, targets, num_paths, criteria, seed=0):
  """Per-candidate loop; returns (total seconds, seconds inside the criteria, candidates, accepted)."""
  rng = np.random.default_rng(seed)
  values, tols = np.asarray(targets.values), np.asarray(targets.tolerances)
  origin = np.zeros(ood.shape[1], np.float32)
  score_s, accepted, start = 0.0, 0, time.perf_counter()
  for p in range(num_paths):
    z = (mean + sigma * rng.standard_normal(ood.shape[1], dtype=np.float32)).astype(np.float32)
    interp = slerp_interpolation(ood[p % len(ood)], z, NUM_INTERIOR)
    for k in range(NUM_INTERIOR):
      id_idx = rng.choice(len(idb), NUM_REFS, replace=False)
      ood_idx = rng.choice(len(ood), NUM_REFS, replace=False)
      t0 = time.perf_counter()
      if criteria == "official":
        pair_rows = rng.choice(len(ood) - 1, NUM_REFS, replace=False)
        stats = official_criteria(interp[k], idb[id_idx], ood[ood_idx], origin, ood, pair_rows)
      else:
        stats = vectorised_criteria(interp[k], idb[id_idx], ood[ood_idx])
      score_s += time.perf_counter() - t0
      accepted += bool(np.all(np.abs(stats - values) <= tols))
  return time.perf_counter() - start, score_s, num_paths * NUM_INTERIOR, accepted


# ---------------------------------------------------------------------------
# Peak memory of discover + compare_to_bank (a fresh process, banks as .npy memmaps).


def _rss_kib() -> dict:
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      key = line.split(":")[0]
      if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
        out[key] = int(line.split()[1])
  return out


def memory_child(folder: str, num_samples: int) -> None:
  """Runs in its own process: discover (rejection, every candidate accepted, the
  accepted latents streamed into a memmap ``out=``) with its comparison to the banks,
  and reports peak RSS (all, and anonymous memory sampled every 20 ms)."""
  import threading

  import jax

  from discovery_jax import discovery as geo

  ood = np.load(os.path.join(folder, "ood.npy"), mmap_mode="r")
  idb = np.load(os.path.join(folder, "id.npy"), mmap_mode="r")
  out = np.lib.format.open_memmap(
      os.path.join(folder, "out.npy"), mode="w+", dtype=np.float32, shape=(num_samples,) + ood.shape[1:]
  )
  jax.numpy.zeros(1).block_until_ready()
  base = _rss_kib()
  peak = {"anon": base.get("RssAnon", 0), "file": base.get("RssFile", 0)}
  stop = threading.Event()

  def sample():
    while not stop.is_set():
      now = _rss_kib()
      peak["anon"] = max(peak["anon"], now.get("RssAnon", 0))
      peak["file"] = max(peak["file"], now.get("RssFile", 0))
      stop.wait(0.02)

  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  start = time.perf_counter()
  res = geo.discover(
      ood,
      idb,
      num_samples=num_samples,
      key=jax.random.key(0),
      mode="rejection",
      tolerance_scale=1e9,
      guard=None,
      out=out,
      max_candidates=num_samples,
  )
  seconds = time.perf_counter() - start
  stop.set()
  thread.join()
  end = _rss_kib()
  print(
      json.dumps(
          {
              "accepted": res.num_accepted,
              "compared": (res.comparison or {}).get("num_compared"),
              "seconds": round(seconds, 1),
              "baseline_rss_mib": round(base["VmRSS"] / 1024, 1),
              "peak_rss_mib": round(end["VmHWM"] / 1024, 1),
              "peak_anon_mib": round(peak["anon"] / 1024, 1),
              "peak_file_mib": round(peak["file"] / 1024, 1),
          }
      )
  )


def memory_benchmark(num_ood: int, num_id: int, num_samples: int) -> dict:
  """Banks of num_ood + num_id latents at d = 196,608 written as .npy, then
  ``memory_child`` in a fresh process; peak RSS against the bytes of the two banks."""
  import subprocess
  import tempfile

  d = int(np.prod(SHAPE))
  folder = tempfile.mkdtemp(prefix="geometry_memory_")
  rng = np.random.default_rng(0)
  for name, n, shift in (("ood", num_ood, 0.05), ("id", num_id, -0.05)):
    bank = np.lib.format.open_memmap(
        os.path.join(folder, f"{name}.npy"), mode="w+", dtype=np.float32, shape=(n,) + SHAPE
    )
    for s in range(0, n, 64):
      rows = min(64, n - s)
      bank[s : s + rows] = (rng.standard_normal((rows, d), dtype=np.float32) + np.float32(shift)).reshape(
          (rows,) + SHAPE
      )
    bank.flush()
    del bank
  try:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--_memory_child", folder, "--mem-samples", str(num_samples)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
      raise RuntimeError(proc.stderr[-3000:])
    child = json.loads(proc.stdout.strip().splitlines()[-1])
  finally:
    for f in os.listdir(folder):
      os.remove(os.path.join(folder, f))
    os.rmdir(folder)
  bank_mib = (num_ood + num_id) * d * 4 / 2**20
  out = {
      "dim": d,
      "num_ood": num_ood,
      "num_id": num_id,
      "num_samples": num_samples,
      "bank_mib": round(bank_mib, 1),
      **child,
      "peak_rss_over_banks": round(child["peak_rss_mib"] / bank_mib, 2),
      "peak_anon_over_banks": round(child["peak_anon_mib"] / bank_mib, 2),
      "target_over_banks": 2.5,
  }
  print(
      f"memory: discover + compare_to_bank, {num_ood} + {num_id} latents (banks {bank_mib:,.0f} MiB), "
      f"{num_samples} samples into a memmap: peak RSS {child['peak_rss_mib']:,.0f} MiB = "
      f"{out['peak_rss_over_banks']:.2f}x the banks (anonymous {child['peak_anon_mib']:,.0f} MiB = "
      f"{out['peak_anon_over_banks']:.2f}x; file-backed pages of the memmaps {child['peak_file_mib']:,.0f} MiB; "
      f"before the call {child['baseline_rss_mib']:,.0f} MiB); target <= 2.5x"
  )
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--bank-size", type=int, default=100, help="latents per bank (OOD and ID)")
  parser.add_argument("--paths", type=int, default=128, help="paths (x20 candidates) for the jitted rejection run")
  parser.add_argument("--naive-paths", type=int, default=6, help="paths for the official-style loop")
  parser.add_argument("--opt-paths", type=int, default=32, help="paths for the optimisation run")
  parser.add_argument("--tolerance-scale", type=float, default=1.0)
  parser.add_argument(
      "--devices",
      type=int,
      default=1,
      help="run the path kernel on this many devices (simulated host devices on a CPU; on one "
      "CPU XLA already multithreads the kernel's matmuls, and splitting it was slower here)",
  )
  parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="the peak-RSS run")
  parser.add_argument("--memory-only", action="store_true", help="only the peak-RSS run")
  parser.add_argument("--mem-ood", type=int, default=1000, help="OOD latents of the peak-RSS run")
  parser.add_argument("--mem-id", type=int, default=128, help="ID latents of the peak-RSS run")
  parser.add_argument("--mem-samples", type=int, default=1000, help="accepted latents of the peak-RSS run")
  parser.add_argument("--_memory_child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._memory_child:
    memory_child(args._memory_child, args.mem_samples)
    return
  if args.memory_only:
    print(json.dumps({"memory": memory_benchmark(args.mem_ood, args.mem_id, args.mem_samples)}))
    return
  if args.devices > 1 and "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"

  import jax

  from discovery_jax import discovery as geo
  from discovery_jax import parallel

  d = int(np.prod(SHAPE))
  n = args.bank_size
  print(
      f"banks: {n} OOD + {n} ID latents of shape {SHAPE} (d = {d:,}), N(+-0.05, 1) per dimension; "
      f"R = {NUM_REFS}, {NUM_INTERIOR} candidates per path; device {jax.devices()[0].platform}"
  )
  rng = np.random.default_rng(0)
  ood = rng.standard_normal((n, d), dtype=np.float32) + np.float32(0.05)
  idb = rng.standard_normal((n, d), dtype=np.float32) - np.float32(0.05)
  ood_b, idb_b = ood.reshape((n,) + SHAPE), idb.reshape((n,) + SHAPE)
  key = jax.random.key(0)

  t0 = time.perf_counter()
  targets = geo.compute_targets(
      ood_b, idb_b, num_refs=NUM_REFS, tolerance_scale=args.tolerance_scale, key=jax.random.key(1)
  )
  targets_s = time.perf_counter() - t0
  prior = geo.fit_prior(ood_b)
  guard = geo.fit_guard(ood_b, idb_b)
  print(
      f"targets ({targets_s:.1f} s incl. compile): distance {targets.values[0]:.2f} +- {targets.tolerances[0]:.3f}, "
      f"angle at origin {targets.values[1]:.3f} +- {targets.tolerances[1]:.4f} deg, angle at candidate "
      f"{targets.values[2]:.3f} +- {targets.tolerances[2]:.4f} deg; real-latent self-acceptance "
      f"{targets.self_acceptance:.2f}"
  )
  mesh = None if args.devices <= 1 else parallel.make_mesh(args.devices)
  common = dict(
      key=key,
      targets=targets,
      prior=prior,
      fitted_guard=guard,
      num_refs=NUM_REFS,
      num_interior=NUM_INTERIOR,
      compare=False,
      mesh=mesh,
  )
  print(f"jitted kernels on {parallel.data_size(mesh)} device(s)")

  # Jitted rejection search (warm-ups compile the 32-path kernels), span draws and full draws.
  budget = args.paths * NUM_INTERIOR
  runs = {}
  for span in (True, False):
    geo.discover(
        ood_b, idb_b, num_samples=32 * NUM_INTERIOR, max_candidates=32 * NUM_INTERIOR, span_draws=span, **common
    )
    runs[span] = geo.discover(ood_b, idb_b, num_samples=budget, max_candidates=budget, span_draws=span, **common)
  rej, full = runs[True], runs[False]
  for name, r in (("span draws", rej), ("full draws", full)):
    print(
        f"jitted rejection, {name}: {r.num_scored} candidates in {r.seconds:.2f} s = "
        f"{r.candidates_per_second:,.0f} candidates/s (setup {r.setup_seconds:.2f} s: bank Gram matrices), "
        f"accepted {r.num_accepted} ({r.acceptance_rate:.2%}); most rejections: {r.most_rejecting}"
    )

  # Materialised candidates through score_candidates (shared references, 512 candidates already in
  # (CPU) device memory, as a jitted producer leaves them).
  import jax.numpy as jnp

  draws = geo.sample_prior(prior, key, np.arange(26))
  cands = geo.slerp(jnp.asarray(ood[:26]), draws, (np.arange(NUM_INTERIOR) + 1) / (NUM_INTERIOR + 1))
  cands = cands.reshape(-1, d)[:512].block_until_ready()
  geo.score_candidates(cands, idb[:NUM_REFS], ood[:NUM_REFS], targets, guard=guard)
  t0 = time.perf_counter()
  geo.score_candidates(cands, idb[:NUM_REFS], ood[:NUM_REFS], targets, guard=guard)
  score_cps = cands.shape[0] / (time.perf_counter() - t0)
  del cands, draws
  print(f"jitted score_candidates (materialised candidates, shared references): {score_cps:,.0f} candidates/s")

  # The per-candidate loops.
  mean, sigma = np.asarray(prior.mean), prior.sigma
  off_total, off_score, off_n, off_acc = naive_loop(ood, idb, mean, sigma, targets, args.naive_paths, "official")
  off_cps, off_score_cps = off_n / off_total, off_n / off_score
  print(
      f"official-style loop: {off_n} candidates in {off_total:.2f} s = {off_cps:.1f} candidates/s end to end, "
      f"{off_score_cps:.1f} candidates/s in the criteria alone"
  )
  vec_total, vec_score, vec_n, _ = naive_loop(ood, idb, mean, sigma, targets, args.naive_paths, "vectorised")
  vec_cps, vec_score_cps = vec_n / vec_total, vec_n / vec_score
  print(
      f"vectorised-numpy per-candidate loop: {vec_cps:.1f} candidates/s end to end, {vec_score_cps:.1f} in the "
      f"criteria alone"
  )

  # Optimisation mode on its own budget, next to rejection on the same budget.
  opt_budget = args.opt_paths * NUM_INTERIOR
  geo.discover(ood_b, idb_b, num_samples=32 * NUM_INTERIOR, max_candidates=32 * NUM_INTERIOR, mode="optimize", **common)
  opt = geo.discover(ood_b, idb_b, num_samples=opt_budget, max_candidates=opt_budget, mode="optimize", **common)
  rej_same = geo.discover(ood_b, idb_b, num_samples=opt_budget, max_candidates=opt_budget, **common)
  print(
      f"jitted optimisation ({opt.config['opt_steps']} Adam steps): {opt.candidates_per_second:,.0f} candidates/s, "
      f"accepted {opt.num_accepted}/{opt.num_candidates} ({opt.acceptance_rate:.1%}) vs rejection "
      f"{rej_same.num_accepted}/{rej_same.num_candidates} ({rej_same.acceptance_rate:.1%}) on the same budget"
  )

  speedup = rej.candidates_per_second / off_cps
  score_speedup = score_cps / off_score_cps
  print(
      f"speedup, end to end (draw + slerp + references + criteria), jitted rejection vs official-style loop: "
      f"{speedup:,.0f}x (target >= 100x); vs vectorised-numpy loop: {rej.candidates_per_second / vec_cps:,.0f}x; "
      f"with full draws: {full.candidates_per_second / off_cps:,.0f}x"
  )
  print(
      f"speedup, criteria only, score_candidates vs official-style loop: {score_speedup:,.0f}x; vs vectorised-numpy "
      f"loop: {score_cps / vec_score_cps:,.0f}x"
  )
  result = {
      "dim": d,
      "bank_size": n,
      "num_refs": NUM_REFS,
      "num_interior": NUM_INTERIOR,
      "device": jax.devices()[0].platform,
      "targets": {
          "values": list(targets.values),
          "tolerances": list(targets.tolerances),
          "self_acceptance": targets.self_acceptance,
          "seconds": round(targets_s, 2),
      },
      "jitted_rejection_cps": round(rej.candidates_per_second, 1),
      "jitted_rejection_candidates": rej.num_scored,
      "jitted_rejection_acceptance": rej.acceptance_rate,
      "jitted_rejection_full_draws_cps": round(full.candidates_per_second, 1),
      "jitted_rejection_full_draws_acceptance": full.acceptance_rate,
      "speedup_end_to_end_full_draws": round(full.candidates_per_second / off_cps, 1),
      "setup_seconds": round(rej.setup_seconds, 2),
      "score_candidates_cps": round(score_cps, 1),
      "official_loop_cps": round(off_cps, 2),
      "official_loop_criteria_cps": round(off_score_cps, 2),
      "official_loop_candidates": off_n,
      "vectorised_loop_cps": round(vec_cps, 2),
      "vectorised_loop_criteria_cps": round(vec_score_cps, 2),
      "speedup_end_to_end": round(speedup, 1),
      "speedup_criteria_only": round(score_speedup, 1),
      "speedup_vs_vectorised_end_to_end": round(rej.candidates_per_second / vec_cps, 1),
      "optimize_cps": round(opt.candidates_per_second, 1),
      "optimize_acceptance": opt.acceptance_rate,
      "rejection_acceptance_same_budget": rej_same.acceptance_rate,
      "optimize_budget": opt_budget,
      "acceptance_ratio": (opt.acceptance_rate / rej_same.acceptance_rate if rej_same.acceptance_rate else math.inf),
  }
  if args.memory:
    result["memory"] = memory_benchmark(args.mem_ood, args.mem_id, args.mem_samples)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
