"""Generated latents judged next to the real OOD bank: geometry, nearest
neighbours, and the criteria against fresh references."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from discovery_jax.discovery.criteria import CRITERIA, Targets, criteria_batch, reference_indices
from discovery_jax.discovery.guard import LinearGuard, project
from discovery_jax.discovery.linalg import as_rows, check_banks, dist_from_gram, gram, matmul_rows, norms, row_blocks
from discovery_jax.discovery.statistics import describe_from_gram, mean_std


def compare_to_bank(
    latents: Any,
    ood_bank: Any,
    id_bank: Any,
    *,
    targets: Targets | None = None,
    guard: LinearGuard | None = None,
    key: jax.Array | None = None,
    max_latents: int = 500,
    num_triples: int = 2000,
    geometry: Any = None,
) -> dict:
  """Statistics of generated latents next to the real OOD bank (JSON-ready).

  Same descriptive statistics for both; nearest-neighbour distance of each
  generated latent to the OOD bank vs the leave-one-out nearest-neighbour distance
  among real OOD latents (a memorisation indicator: ratio << 1 means copies); the
  criteria re-evaluated with FRESH random references (did selection over-fit its
  own references? compare ``pass_rate_all`` with the real latents'
  ``self_acceptance``; a near-copy fails whenever its source is drawn); the
  fraction on the ID side of the guard. Uses the first ``max_latents`` latents.

  ``geometry``: the ``criteria.BankGeometry`` of these banks (``discover`` passes its
  own): the banks' Gram matrix and their transposed stack are then reused, so the
  banks are neither copied nor multiplied again; only the latents are.
  """
  check_banks(latents, ood_bank)
  check_banks(ood_bank, id_bank)
  x = as_rows(latents)[:max_latents]
  if geometry is not None:  # products with the banks from the search's stacked, transposed banks.
    no, ni = geometry.num_ood, geometry.num_id
    g_all = np.asarray(geometry.g_all, np.float64)
    g_oo, i2 = g_all[:no, :no], np.diag(g_all)[no : no + ni].copy()
    g_x = np.empty((x.shape[0], g_all.shape[1]), np.float64)
    for s, blk in row_blocks(x):
      g_x[s : s + len(blk)] = np.asarray(matmul_rows(blk, geometry.all_t))
    g_xo, g_xi = g_x[:, :no], g_x[:, no : no + ni]
  else:
    ro = as_rows(ood_bank)
    g_xo, g_oo = gram(x, ro), gram(ro)
    del ro
    g_xi = i2 = None
  g_xx = gram(x)
  x2, o2 = np.diag(g_xx).copy(), np.diag(g_oo).copy()
  nn = dist_from_gram(g_xo, x2, o2).min(1)
  d_oo = dist_from_gram(g_oo, o2, o2)
  np.fill_diagonal(d_oo, np.inf)
  out = {
      "num_compared": int(len(x)),
      "generated": describe_from_gram(g_xx, num_triples, 0),
      "ood_bank": describe_from_gram(g_oo, num_triples, 0),
      "nn_distance_to_ood": mean_std(nn),
      "ood_loo_nn_distance": mean_std(d_oo.min(1)),
  }
  out["nn_ratio"] = out["nn_distance_to_ood"]["mean"] / out["ood_loo_nn_distance"]["mean"]
  if targets is not None:
    r = targets.num_refs
    num_ood, num_id = np.shape(ood_bank)[0], np.shape(id_bank)[0]
    if num_ood < r or num_id < r:
      raise ValueError(f"fresh references need {r} latents per bank")
    key = key if key is not None else jax.random.key(0)
    idx_id, idx_ood = reference_indices(key, np.arange(len(x)), num_id, num_ood, r)
    if g_xi is None:
      ri = as_rows(id_bank)
      g_xi, i2 = gram(x, ri), norms(ri) ** 2
    rows_n = np.arange(len(x))[:, None]
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    stats = np.asarray(
        criteria_batch(
            f32(x2),
            f32(g_xi[rows_n, idx_id]),
            f32(i2[idx_id]),
            f32(g_xo[rows_n, idx_ood]),
            f32(g_oo[idx_ood[:, :, None], idx_ood[:, None, :]]),
        ),
        np.float64,
    )
    inside = np.abs(stats - np.asarray(targets.values)) <= np.asarray(targets.tolerances)
    out["fresh_refs"] = {
        "pass_rate": {n: float(v) for n, v in zip(CRITERIA, inside.mean(0))},
        "pass_rate_all": float(inside.all(1).mean()),
        "mean_normalised_deviation": {
            n: float(v)
            for n, v in zip(
                CRITERIA, (np.abs(stats - np.asarray(targets.values)) / np.asarray(targets.tolerances)).mean(0)
            )
        },
        "real_ood_self_acceptance": targets.self_acceptance,
    }
  if guard is not None:
    logits = project(x, np.asarray(guard.w, np.float64)) + float(guard.b)
    out["id_side_fraction"] = float(np.mean(logits < 0))
  return out
