"""The discovery kernel: paths of slerp candidates scored (and optionally optimised)
from inner products (the driver materialises the accepted ones)."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from discovery_jax.discovery.criteria import EXTRAS, accept, choose, criteria_from_dots, slerp_coefficients
from discovery_jax.discovery.draws import DrawBasis, path_dots
from discovery_jax.discovery.linalg import TINY, rowblock_matmul
from discovery_jax.discovery.prior import sample_prior_jit


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  num_ood: int
  num_interior: int
  num_refs: int
  opt_basis: str
  opt_steps: int
  opt_lr: float
  has_guard: bool
  guard_margin: float


def candidate_dots(a: jax.Array, gb: jax.Array, rho: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Candidate c = rho * unit(sum_j a_j b_j / |b_j|): returns (c . b_j for all j, basis norms)."""
  nb = jnp.sqrt(jnp.maximum(jnp.diagonal(gb), TINY))
  gn = gb / (nb[:, None] * nb[None, :])
  q = gn @ a
  scale = rho / jnp.sqrt(jnp.maximum(a @ q, TINY))
  return scale * q * nb, nb


def stats_from_coefficients(a, gb, rho, r, has_guard, guard_b):
  """Criteria and guard logit of one candidate in its basis
  [v, u, id refs (R), ood refs (R), w, mean(ood), mean(id)]."""
  dots, _ = candidate_dots(a, gb, rho)
  ids, oods = slice(2, 2 + r), slice(2 + r, 2 + 2 * r)
  stats = criteria_from_dots(rho**2, dots[ids], jnp.diagonal(gb)[ids], dots[oods], gb[oods, oods])
  logit = dots[2 + 2 * r] + guard_b if has_guard else jnp.inf
  return stats, logit


def trainable(r: int, opt_basis: str) -> np.ndarray:
  """Which basis coefficients the optimiser may move (see ``discover``'s opt_basis)."""
  mask = np.zeros(2 * r + 2 + EXTRAS, np.float32)
  # v, u and mean(ood). Never w or mean(id): both are ID-vs-OOD image patterns, and moving
  # along them meets the inner-product criteria with latents that denoise into ID-looking or
  # mixed images (embedded demo, t_0=400: OOD hit rate 0.70 with them, 1.00 without).
  mask[[0, 1, 2 * r + 3]] = 1
  if opt_basis == "refs":
    mask[2 : 2 + 2 * r] = 1
  return mask


@functools.partial(jax.jit, static_argnames=("cfg",))
def path_kernel(
    all_t,
    g_all,
    shell,
    prior,
    keys,
    sources,
    paths,
    values,
    tols,
    guard_b,
    draws: DrawBasis | None,
    *,
    cfg: KernelConfig,
):
  """One chunk of paths (a multiple of ROW_BLOCK): prior draws, slerp candidates,
  their references, optional optimisation, criteria. Every per-candidate quantity
  depends only on the candidate's global index (fixed-shape matmuls, per-index keys).
  With ``draws`` (a pooled prior) a draw is only its inner products and norm
  (``draws.path_dots``) and "z" is None; otherwise the (P, d) draws are made and returned.

  Candidate c is represented by coefficients a over its basis
  B = [v, u, id refs (R), ood refs (R), w, mean(ood), mean(id)] and the Gram matrix
  of B: the rows of B other than v are members of the stacked set S, so that Gram
  matrix is one gather from S's Gram matrix plus the draw's gemm row v . S. A slerp
  candidate has a = (beta, alpha, 0, ...) / nd.
  """
  k_prior, k_id, k_ood = keys
  kk, r = cfg.num_interior, cfg.num_refs
  no, ni = cfg.num_ood, g_all.shape[0] - cfg.num_ood - EXTRAS
  if draws is None:
    z = sample_prior_jit(prior, k_prior, paths.astype(jnp.uint32))  # (P, d) = sample_prior(prior, k_prior, p)
    z_all = rowblock_matmul(z, all_t)  # (P, No + Ni + 3): one gemm row per path
    zz = jnp.sum(z * z, -1)
  else:
    z = None
    z_all, zz = path_dots(draws, k_prior, paths)
  t = (jnp.arange(kk, dtype=jnp.float32) + 1) / (kk + 1)
  src = sources[paths % no]
  g = (paths[:, None] * kk + jnp.arange(kk)[None]).astype(jnp.uint32)  # (P, K) global candidate indices
  idx_id = jax.vmap(jax.vmap(lambda i: no + choose(jax.random.fold_in(k_id, i), ni, r)))(g)
  idx_ood = jax.vmap(jax.vmap(lambda i: choose(jax.random.fold_in(k_ood, i), no, r)))(g)

  def per_path(s, zrow, zz_p, ids, oods):
    nu, nv = jnp.sqrt(g_all[s, s]), jnp.sqrt(zz_p)
    alpha, beta, nd = slerp_coefficients(zrow[s] / (nu * nv), t)
    rho = (1 - t) * nu + t * nv

    def per_candidate(al, be, nd_k, ids_k, oods_k):
      ix = jnp.concatenate([s[None], ids_k, oods_k, no + ni + jnp.arange(EXTRAS)])  # u, refs, extras in S
      zr = zrow[ix]
      gb = jnp.concatenate(
          [jnp.concatenate([zz_p[None], zr])[None], jnp.concatenate([zr[:, None], g_all[ix][:, ix]], 1)], 0
      )
      a0 = jnp.zeros(ix.shape[0] + 1, jnp.float32).at[0].set(be / nd_k).at[1].set(al / nd_k)
      return a0, gb

    a0, gb = jax.vmap(per_candidate)(alpha, beta, nd, ids, oods)
    return a0, gb, rho

  a0, gb, rho = jax.vmap(per_path)(src, z_all, zz, idx_id, idx_ood)
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  a0, gb, rho = flat(a0), flat(gb), flat(rho)
  stats_fn = jax.vmap(lambda a, g, rh: stats_from_coefficients(a, g, rh, r, cfg.has_guard, guard_b))
  a = a0
  if cfg.opt_steps:
    a, rho = optimise(a0, gb, rho, shell, values, tols, cfg, stats_fn, all_t.shape[0])
  stats, logit = stats_fn(a, gb, rho)
  passed, accepted = accept(stats, logit, values, tols, cfg.guard_margin)
  unflat = lambda x: x.reshape((paths.shape[0], kk) + x.shape[1:])
  return {
      "z": z,
      "source": src,
      "coef": unflat(a),
      "gram": unflat(gb),
      "rho": unflat(rho),
      "stats": unflat(stats),
      "logit": unflat(logit),
      "passed": unflat(passed),
      "accepted": unflat(accepted),
      "id_refs": idx_id - no,
      "ood_refs": idx_ood,
  }


def optimise(a0, gb, rho0, shell, values, tols, cfg: KernelConfig, stats_fn, dim: int):
  """Adam on every candidate at once (the loss is a sum of per-candidate terms and
  Adam is per-coordinate, so candidates stay independent). Returns (coefficients, norms).

  Parameters: the basis coefficients a (direction c / |c| = unit(sum_j a_j b_j / |b_j|))
  and the norm, kept on the OOD shell: rho = centre + band * tanh(s) with centre, band
  the mean and std of the real OOD norms (the initial interpolated norm is first
  clipped into that band). With the norm frozen the two angle criteria are tied to
  each other (both are functions of the same c . r_j), so the norm must move.
  Loss: squared tolerance-normalised deviations (the guard, if any, only filters
  the result afterwards: pushing its logit up degrades the images). Step size for
  a: ``opt_lr / sqrt(d)`` (angles between independent latents scatter by 1/sqrt(d)
  radians), for s: ``opt_lr / 10``; both with cosine decay to 1%.
  """
  centre, band = shell
  s0 = jnp.arctanh(jnp.clip((rho0 - centre) / band, -0.95, 0.95))

  def loss(params):
    rho = centre + band * jnp.tanh(params["s"])
    stats, _ = stats_fn(params["a"], gb, rho)
    return jnp.sum(((stats - values) / tols) ** 2)

  sched = lambda lr: optax.cosine_decay_schedule(lr, cfg.opt_steps, alpha=0.01)
  opt = optax.partition(
      {"a": optax.adam(sched(cfg.opt_lr / math.sqrt(dim))), "s": optax.adam(sched(cfg.opt_lr / 10))},
      {"a": "a", "s": "s"},
  )
  params = {"a": a0, "s": s0}
  mask = jnp.asarray(trainable(cfg.num_refs, cfg.opt_basis))

  def step(carry, _):
    params, state = carry
    grads = jax.grad(loss)(params)
    grads = {"a": grads["a"] * mask, "s": grads["s"]}  # frozen coefficients get zero Adam updates
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=cfg.opt_steps)
  return params["a"], centre + band * jnp.tanh(params["s"])
