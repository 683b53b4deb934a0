"""Kept candidates made into latents: c = rho * unit(sum_j a_j b_j / |b_j|) over each
one's basis [draw, source, ID refs, OOD refs, extras], with the banks read from S^T,
from the chunk's full draws or (span draws) with the draw made here."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from discovery_jax.discovery.criteria import EXTRAS
from discovery_jax.discovery.draws import fresh_normals, outside_scale, span_combination, span_normals
from discovery_jax.discovery.linalg import TINY


def basis_weights(coef, gb, rho):
  """(scale, wt) with c = scale * sum_j wt_j b_j: the weights of each kept candidate's basis
  rows and the scale that puts it at norm rho."""
  nb = jnp.sqrt(jnp.maximum(jnp.diagonal(gb, axis1=1, axis2=2), TINY))  # (B, M)
  gn = gb / (nb[:, :, None] * nb[:, None, :])
  scale = rho / jnp.sqrt(jnp.maximum(jnp.einsum("bi,bij,bj->b", coef, gn, coef), TINY))
  return scale, coef / nb


@functools.partial(jax.jit, static_argnames=("num_ood", "with_refs"))
def materialise_full(all_t, extras, z_rows, src, idx_id, idx_ood, coef, gb, rho, *, num_ood, with_refs):
  """Kept latents c = rho * unit(sum_j a_j b_j / |b_j|) over each one's basis [draw, source,
  refs, extras], read from S^T. Reference weights, when used (opt_basis 'refs'), are
  scattered into dense (block, N) matrices and applied as one gemm per bank (cheaper on
  CPU than gathering 2R rows of d numbers per candidate)."""
  scale, wt = basis_weights(coef, gb, rho)
  r = idx_id.shape[1]
  c = wt[:, 0:1] * z_rows + wt[:, 1:2] * jnp.take(all_t, src, axis=1).T + wt[:, 2 + 2 * r :] @ extras
  if with_refs:
    no, ni = num_ood, all_t.shape[1] - num_ood - EXTRAS
    rows = jnp.arange(src.shape[0])[:, None]
    w_ood = jnp.zeros((src.shape[0], no), jnp.float32).at[rows, idx_ood].add(wt[:, 2 + r : 2 + 2 * r])
    w_id = jnp.zeros((src.shape[0], ni), jnp.float32).at[rows, idx_id].add(wt[:, 2 : 2 + r])
    c = c + (all_t[:, :no] @ w_ood.T).T + (all_t[:, no : no + ni] @ w_id.T).T
  return scale[:, None] * c


@functools.partial(jax.jit, static_argnames=("num_ood",))
def materialise_span(draws, all_t, mean, key, paths, src, coef, gb, rho, *, num_ood):
  """``materialise_full`` for span draws, fused: the path's draw
  z = mean + sigma (a xi' + T^T W (xi - a W^T T xi')) is made here, and every term of
  the latent but a xi' is a combination of T's rows, so a block costs two passes over the banks.
  Span draws run in rejection only, where nothing optimises a candidate's reference
  coefficients (they stay 0), so the references' rows are not added."""
  scale, wt = basis_weights(coef, gb, rho)
  no, ni = num_ood, all_t.shape[1] - num_ood - EXTRAS
  xi, q = span_normals(draws, key, paths)
  fresh = fresh_normals(draws, key, paths)
  a, c = outside_scale(draws, all_t, mean, fresh, q)
  gamma = (wt[:, 0:1] * draws.sigma) * ((xi - a[:, None] * c) @ draws.inverse.T)  # (B, k) over T = [S; mean]
  gamma = gamma.at[:, -1].add(wt[:, 0])  # the draw's mean
  gamma = gamma.at[jnp.arange(paths.shape[0]), src].add(wt[:, 1])  # the path's OOD latent
  gamma = gamma.at[:, no + ni : no + ni + EXTRAS].add(wt[:, -EXTRAS:])
  return scale[:, None] * ((wt[:, 0] * draws.sigma * a)[:, None] * fresh + span_combination(all_t, mean, gamma))
