"""``discover``: the search for new latents, as setup -> a loop over chunks of paths
-> a pure host-side selection -> materialisation -> one result.

Path p starts at OOD latent ``perm[p % N_ood]`` (perm from ``fold_in(key, 1)``) and
ends at the prior draw ``path_draws(ood, id, prior, fold_in(key, 0), [p])`` (rejection with
a pooled prior: drawn through the span of the banks, ``draws``; otherwise
``sample_prior(prior, fold_in(key, 0), p)``); its
``num_interior`` interior points are candidates g = p * num_interior + k at
t = (k+1)/(num_interior+1). Candidate g compares with ``num_refs`` ID and OOD
references from ``reference_indices(key, g, ...)``. Every random choice depends
on a global index only, so the result is the same bits on any number of devices.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from discovery_jax import parallel
from discovery_jax.discovery.compare import compare_to_bank
from discovery_jax.discovery.criteria import (
    EXTRAS,
    REJECTION_REASONS,
    BankGeometry,
    Targets,
    targets_from_geometry,
)
from discovery_jax.discovery.draws import DrawBasis, draws_for_paths, fit_draw_basis, use_span_draws
from discovery_jax.discovery.guard import LinearGuard, fit_guard
from discovery_jax.discovery.kernels import KernelConfig, path_kernel
from discovery_jax.discovery.linalg import (
    MAT_BLOCK,
    ROW_BLOCK,
    as_rows,
    check_banks,
    latent_shape,
    put_columns,
    release_pages,
    row_blocks,
)
from discovery_jax.discovery.materialise import materialise_full, materialise_span
from discovery_jax.discovery.prior import GaussianPrior, fit_prior, sample_prior

MODES = ("typical", "rejection", "optimize")
OPT_BASES = ("global", "refs")
GUARDS = ("mean_diff", "logistic")
# published_head: the published HEAD prior (ID bank, np.var of all entries), fitted by the caller.
PRIOR_KINDS = ("pooled", "diagonal", "published_head")
# Per-latent provenance arrays of a DiscoveryResult (saved beside the latents by `sample`).
RECORD_KEYS = (
    "candidate_index",
    "path_index",
    "source_index",
    "t",
    "id_ref_index",
    "ood_ref_index",
    "stats",
    "guard_logit",
)


@dataclasses.dataclass(frozen=True)
class DiscoveryOptions:
  """How candidates are built, judged and kept (the typed form of ``config.discovery``).

  mode: 'rejection' (the paper's: keep slerp candidates meeting the criteria) or
  'optimize' (Adam moves every candidate onto the criteria first, see
  ``kernels.optimise``); opt_basis 'global' moves only v, u and the OOD mean,
  'refs' also the candidate's own references (fits them, not fresh ones).
  max_per_path: keep at most this many accepted points of one path, the ones
  furthest from its OOD latent (None: all, as the paper does). Neighbouring points
  of a path denoise into nearly the same image, so a cap spreads the samples.
  span_draws: rejection with a pooled prior samples each path's draw through its inner
  products with the banks and makes it only for kept candidates (``draws``: the prior's
  law, not the numbers ``sample_prior`` gives). False, and always in 'optimize' mode (which
  keeps most candidates: making each kept one's draw costs more than drawing every path):
  full ``sample_prior`` draws.
  max_candidates: the search budget (None: 1000 x num_samples). chunk_paths: paths
  per jitted call per device (rounded up to whole 32-path blocks; results do not
  depend on it).
  """

  mode: str = "rejection"  # the paper's procedure; the `sample` default is 'typical' (discover_typical)
  max_candidates: int | None = None
  num_interior: int = 20
  num_refs: int = 10
  max_per_path: int | None = None
  tolerance_scale: float = 1.0
  prior_kind: str = "pooled"
  span_draws: bool = True
  guard: str | None = "mean_diff"
  guard_margin: float = 0.0
  opt_steps: int = 200
  opt_lr: float = 1.0
  opt_basis: str = "global"
  chunk_paths: int = 32
  draws_per_latent: int = 4
  compare: bool = True

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
    if self.opt_basis not in OPT_BASES:
      raise ValueError(f"opt_basis must be one of {OPT_BASES}, got {self.opt_basis!r}")
    if self.guard is not None and self.guard not in GUARDS:
      raise ValueError(f"guard must be None or one of {GUARDS}, got {self.guard!r}")
    if self.max_per_path is not None and int(self.max_per_path) < 1:
      raise ValueError(f"max_per_path must be >= 1 or None (keep all), got {self.max_per_path}")
    if self.max_candidates is not None and int(self.max_candidates) < 1:
      raise ValueError(f"max_candidates must be >= 1 or None (1000 x num_samples), got {self.max_candidates}")
    if self.num_interior < 1 or self.chunk_paths < 1:
      raise ValueError(f"num_interior and chunk_paths must be >= 1, got {self.num_interior}, {self.chunk_paths}")
    if self.prior_kind not in PRIOR_KINDS:
      raise ValueError(f"prior_kind must be one of {PRIOR_KINDS}, got {self.prior_kind!r}")
    if not self.tolerance_scale > 0:
      raise ValueError(f"tolerance_scale must be > 0, got {self.tolerance_scale}")


@dataclasses.dataclass
class DiscoveryResult:
  """Accepted latents and everything needed to reproduce and judge them."""

  latents: np.ndarray  # (n, *latent_shape) float32
  candidate_index: np.ndarray  # (n,) global candidate index g = path * num_interior + k
  path_index: np.ndarray  # (n,) the prior draw is path_draws(ood, id, prior, fold_in(key, 0), [path])
  source_index: np.ndarray  # (n,) the OOD latent the path starts from
  t: np.ndarray  # (n,) slerp position in (0, 1)
  id_ref_index: np.ndarray  # (n, R)
  ood_ref_index: np.ndarray  # (n, R)
  stats: np.ndarray  # (n, 3) criteria of the accepted latents
  guard_logit: np.ndarray  # (n,)
  num_candidates: int  # candidates examined (up to the last accepted one when num_samples was reached)
  num_scored: int  # candidates actually computed (>= num_candidates: a chunk may overshoot)
  acceptance_rate: float
  candidates_per_second: float
  seconds: float
  setup_seconds: float
  rejections: dict  # criterion -> candidates failing it (a candidate may fail several)
  sole_rejections: dict  # criterion -> candidates failing ONLY it
  most_rejecting: str | None
  targets: Targets
  prior: dict
  mode: str
  config: dict
  comparison: dict | None = None

  @property
  def num_accepted(self) -> int:
    return int(self.latents.shape[0])

  def summary(self) -> dict:
    """JSON-ready: everything but the arrays."""
    keys = (
        "num_candidates",
        "num_scored",
        "acceptance_rate",
        "candidates_per_second",
        "seconds",
        "setup_seconds",
        "rejections",
        "sole_rejections",
        "most_rejecting",
        "prior",
        "mode",
        "config",
        "comparison",
    )
    out = {k: getattr(self, k) for k in keys}
    out["num_accepted"] = self.num_accepted
    out["targets"] = self.targets.to_dict()
    return out


# ---------------------------------------------------------------------------
# Setup.


@dataclasses.dataclass
class _Search:
  """Everything the chunk loop needs, on the device once."""

  geom: BankGeometry
  targets: Targets
  prior: GaussianPrior
  guard: LinearGuard | None
  draws: DrawBasis | None  # span draws (a pooled prior), else None: full (P, d) draws in the kernel
  cfg: KernelConfig
  inputs: tuple  # the kernel's arguments but the paths, in order
  shape: tuple[int, ...]
  max_candidates: int
  num_paths: int
  sub: int  # paths per device per chunk
  num_devices: int
  setup_seconds: float

  @property
  def chunk(self) -> int:
    return self.sub * self.num_devices


# ---------------------------------------------------------------------------
# The banks, held once: S^T = [ood; id; w; mean(ood); mean(id)]^T on the device.


MEAN_ROWS = 4096  # rows of S^T per call of _bank_means


@functools.partial(jax.jit, static_argnames=("num_ood", "rows"))
def _bank_means(all_t, start, *, num_ood, rows):
  """mean(ood) and mean(id) at ``rows`` coordinates from ``start``: a column slice of the
  whole of S^T is materialised by XLA (a second copy of the banks), one of a row block is
  small, and each coordinate's mean is the same bits either way."""
  no, ni = num_ood, all_t.shape[1] - num_ood - EXTRAS
  blk = jax.lax.dynamic_slice_in_dim(all_t, start, rows, axis=0)
  return jnp.stack([jnp.mean(blk[:, :no], axis=1), jnp.mean(blk[:, no : no + ni], axis=1)])


def _extras(all_t: jax.Array, w: jax.Array, num_ood: int) -> jax.Array:
  """[w; mean(ood); mean(id)], the extras rows of S, from S^T's bank columns."""
  d = all_t.shape[0]
  means = [
      _bank_means(all_t, jnp.int32(r), num_ood=num_ood, rows=min(MEAN_ROWS, d - r)) for r in range(0, d, MEAN_ROWS)
  ]
  return jnp.concatenate([w[None], jnp.concatenate(means, axis=1)])


@functools.partial(jax.jit, static_argnames=("num_ood", "full_id_gram"))
def _stacked_gram(all_t, *, num_ood, full_id_gram):
  """The Gram matrix of S from S^T alone (``criteria.stacked_geometry`` computed from the
  banks' rows; here S's rows are gathered from S^T in fixed blocks)."""
  no, n_all = num_ood, all_t.shape[1]
  ni = n_all - no - EXTRAS

  def rows_of(index: np.ndarray) -> jax.Array:  # (len(index), n_all): S[index] @ S^T, 32 rows per gemm
    pad = (-len(index)) % ROW_BLOCK
    blocks = jnp.asarray(np.r_[index, np.zeros(pad, np.int64)].reshape(-1, ROW_BLOCK), jnp.int32)
    out = jax.lax.map(lambda idx: jnp.take(all_t, idx, axis=1).T @ all_t, blocks)
    return out.reshape(-1, n_all)[: len(index)]

  if full_id_gram:
    return rows_of(np.arange(n_all))
  # Rejection needs only |r|^2 of the ID references: their other products meet zero coefficients.
  o_rows = rows_of(np.r_[np.arange(no), np.arange(no + ni, n_all)])
  i_rows = jnp.zeros((ni, n_all), jnp.float32).at[:, :no].set(o_rows[:no, no : no + ni].T)
  i_rows = i_rows.at[:, no + ni :].set(o_rows[no:, no : no + ni].T)
  i_rows = i_rows.at[jnp.arange(ni), no + jnp.arange(ni)].set(jnp.sum(jnp.square(all_t[:, no : no + ni]), axis=0))
  return jnp.concatenate([o_rows[:no], i_rows, o_rows[no:]])


def bank_geometry(ood_bank: Any, id_bank: Any, *, w: Any = None, full_id_gram: bool = False) -> BankGeometry:
  """``criteria.BankGeometry`` with each bank held ONCE, as columns of S^T: the host
  banks (memmaps) are streamed block by block into S^T on the device, and nothing
  else keeps their rows (``ood``/``idb`` are shape placeholders). Everything the
  search needs (the path kernel, materialisation, ``compare_to_bank``) reads S^T."""
  start = time.perf_counter()
  ro, ri = as_rows(ood_bank), as_rows(id_bank)
  no, ni, d = ro.shape[0], ri.shape[0], ro.shape[1]
  all_t = jnp.zeros((d, no + ni + EXTRAS), jnp.float32)
  for rows, offset in ((ro, 0), (ri, no)):
    for s, blk in row_blocks(rows):
      all_t = put_columns(all_t, jnp.asarray(blk), jnp.int32(offset + s))  # row_blocks drops a memmap's pages
  w = jnp.zeros((d,), jnp.float32) if w is None else jnp.asarray(w, jnp.float32)
  extras = _extras(all_t, w, no)
  all_t = put_columns(all_t, extras, jnp.int32(no + ni))  # in place: S^T donated, nothing else read
  g_all = _stacked_gram(all_t, num_ood=no, full_id_gram=full_id_gram)
  jax.block_until_ready(g_all)
  shape = lambda n: jax.ShapeDtypeStruct((n, d), jnp.float32)
  return BankGeometry(shape(no), shape(ni), all_t, extras, g_all, time.perf_counter() - start)


def path_draws(
    ood_bank: Any,
    id_bank: Any,
    prior: GaussianPrior,
    key: jax.Array,
    paths: Any,
    *,
    guard: Any = "mean_diff",
    span_draws: bool = True,
):
  """The prior draws (len(paths), d) that ``discover`` paths end at, for ``key`` =
  ``fold_in(discover's key, 0)`` and the guard and ``span_draws`` ``discover`` used (pass
  span_draws=False for 'optimize' runs; a span draw depends on the banks and the guard
  direction, a full one only on the key)."""
  rows = len(ood_bank) + len(id_bank) + EXTRAS
  if not (span_draws and use_span_draws(prior, rows)):
    return sample_prior(prior, key, np.asarray(paths))
  guard = _resolve_guard(guard, ood_bank, id_bank)
  geom = bank_geometry(ood_bank, id_bank, w=None if guard is None else guard.w, full_id_gram=True)
  return draws_for_paths(fit_draw_basis(geom.g_all, geom.all_t, prior), geom.all_t, prior.mean, key, paths)


def _hit_fields(host: dict, first_path: int, hits: np.ndarray, num_interior: int) -> dict:
  """What materialising one kept candidate needs, per hit (span draws: no (P, d) draws held)."""
  pi, ki = np.divmod(hits, num_interior)
  return {
      "path": first_path + pi,
      "source": host["source"][pi],
      "coef": host["coef"][pi, ki],
      "gram": host["gram"][pi, ki],
      "rho": host["rho"][pi, ki],
  }


def _materialise_pending(search: _Search, pending: list[dict], rows: np.ndarray, written: int, final: bool):
  """Materialises the whole MAT_BLOCKs of span-draw hits gathered so far (all of them when
  ``final``) into ``rows[written:]``: a block is filled across chunks, so a search that keeps
  a few candidates per chunk pays two passes over the banks per MAT_BLOCK hits, not per chunk.
  Returns (hits still pending, rows written)."""
  if not pending:
    return pending, written
  fields = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
  n = len(fields["path"])
  todo = n if final else n - n % MAT_BLOCK
  flat = rows.reshape(rows.shape[0], -1)
  for s in range(0, todo, MAT_BLOCK):
    take = np.arange(s, min(s + MAT_BLOCK, todo))
    idx = np.r_[take, np.full(MAT_BLOCK - len(take), take[0])]
    m = materialise_span(
        search.draws,
        search.geom.all_t,
        search.prior.mean,
        search.inputs[4][0],
        jnp.asarray(fields["path"][idx], jnp.uint32),
        *(jnp.asarray(fields[k][idx]) for k in ("source", "coef", "gram", "rho")),
        num_ood=search.geom.num_ood,
    )
    flat[written + s : written + s + len(take)] = np.asarray(m)[: len(take)]
    release_pages(rows)
  left = {k: v[todo:] for k, v in fields.items()}
  return ([left] if n > todo else []), written + todo


def _resolve_guard(guard, ood_bank, id_bank) -> LinearGuard | None:
  if guard is None or isinstance(guard, LinearGuard):
    return guard
  if isinstance(guard, str) and guard in GUARDS:
    return fit_guard(ood_bank, id_bank, kind=guard)
  raise ValueError(f"guard must be None, 'mean_diff', 'logistic' or a LinearGuard, got {guard!r}")


def _setup(ood_bank, id_bank, num_samples, key, options, targets, prior, guard, mesh) -> _Search:
  check_banks(ood_bank, id_bank, num_refs=options.num_refs)
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  if targets is not None and targets.num_refs != options.num_refs:
    raise ValueError(
        f"targets were computed with num_refs={targets.num_refs}, discover got " f"num_refs={options.num_refs}"
    )
  start = time.perf_counter()
  guard = _resolve_guard(guard, ood_bank, id_bank)
  prior = prior or fit_prior(ood_bank, options.prior_kind)  # streamed: a memmap bank's pages dropped per block
  dim = int(np.prod(latent_shape(ood_bank)))
  if prior.dim != dim:
    raise ValueError(f"prior dimension {prior.dim} != latent size {dim}")
  # Rejection keeps few candidates, so making only their draws wins; optimize keeps most of them.
  span_draws = (
      options.span_draws
      and options.mode == "rejection"
      and use_span_draws(prior, len(ood_bank) + len(id_bank) + EXTRAS)
  )
  geom = bank_geometry(
      ood_bank, id_bank, w=None if guard is None else guard.w, full_id_gram=options.mode == "optimize" or span_draws
  )
  if targets is None:
    targets = targets_from_geometry(
        geom,
        num_refs=options.num_refs,
        tolerance_scale=options.tolerance_scale,
        key=jax.random.fold_in(key, 5),
        draws_per_latent=options.draws_per_latent,
    )
  draws = fit_draw_basis(geom.g_all, geom.all_t, prior) if span_draws else None
  cfg = KernelConfig(
      geom.num_ood,
      int(options.num_interior),
      int(options.num_refs),
      options.opt_basis,
      int(options.opt_steps) if options.mode == "optimize" else 0,
      float(options.opt_lr),
      guard is not None,
      float(options.guard_margin),
  )
  keys = (jax.random.fold_in(key, 0), jax.random.fold_in(key, 2), jax.random.fold_in(key, 3))
  sources = jax.random.permutation(jax.random.fold_in(key, 1), geom.num_ood).astype(jnp.int32)
  values, tols = targets.arrays()
  gbias = guard.b if guard is not None else jnp.zeros((), jnp.float32)
  ood_norms = jnp.sqrt(jnp.diagonal(geom.g_all)[: geom.num_ood])
  shell = (jnp.mean(ood_norms), jnp.maximum(jnp.std(ood_norms), 1e-6 * jnp.mean(ood_norms)))
  inputs = (geom.all_t, geom.g_all, shell, prior, keys, sources, values, tols, gbias, draws)
  max_candidates = int(options.max_candidates or 1000 * num_samples)
  return _Search(
      geom,
      targets,
      prior,
      guard,
      draws,
      cfg,
      inputs,
      latent_shape(ood_bank),
      max_candidates,
      -(-max_candidates // cfg.num_interior),
      -(-int(options.chunk_paths) // ROW_BLOCK) * ROW_BLOCK,
      parallel.data_size(mesh),
      time.perf_counter() - start,
  )


# ---------------------------------------------------------------------------
# The chunk loop: every device scores its own whole blocks of paths.


def _chunks(search: _Search, mesh: Any) -> Iterator[tuple[int, dict, Any]]:
  """(first path, host outputs, the chunk's prior draws) per chunk of paths.

  Every device runs the SAME single-device executable on its own whole blocks of
  paths (asynchronous dispatch), so a candidate gets exactly the bits it gets on one
  device. A multi-device ``shard_map`` of this kernel does not: measured on XLA:CPU,
  its per-device program evaluates the slerp's arccos/sin a few ulps differently
  from the one-device program, and results would depend on the device count.
  """
  devices = [None] if mesh is None else list(mesh.devices.flat)
  per_device = [search.inputs if dev is None else jax.device_put(search.inputs, dev) for dev in devices]
  for p0 in range(0, search.num_paths, search.chunk):
    parts = []
    for j, (dev, args) in enumerate(zip(devices, per_device)):
      paths = np.arange(p0 + j * search.sub, p0 + (j + 1) * search.sub, dtype=np.int32)
      paths = jnp.asarray(paths) if dev is None else jax.device_put(paths, dev)
      parts.append(path_kernel(*args[:6], paths, *args[6:], cfg=search.cfg))
    host = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0] if k != "z"}
    yield p0, host, [p["z"] for p in parts]


@dataclasses.dataclass(frozen=True)
class ChunkSelection:
  """What one chunk contributes: accepted candidate positions and rejection counts."""

  hits: np.ndarray  # flat positions (path * num_interior + k within the chunk) of the kept candidates
  num_examined: int
  num_scored: int
  fails: np.ndarray  # (4,) candidates failing each criterion and the guard
  sole: np.ndarray  # (4,) candidates failing only that one


def select_chunk(
    accepted: np.ndarray,
    passed: np.ndarray,
    first_path: int,
    *,
    num_interior: int,
    max_candidates: int,
    max_per_path: int | None,
    needed: int,
) -> ChunkSelection:
  """Pure host-side selection of one chunk: budget, the per-path cap, the first
  ``needed`` acceptances in global order, and the rejection counts of every
  candidate examined up to the last one kept.

  accepted (P, K) and passed (P, K, 4) are the kernel's outputs for paths
  first_path .. first_path + P - 1.
  """
  num_paths = accepted.shape[0]
  g = (np.arange(first_path, first_path + num_paths)[:, None] * num_interior + np.arange(num_interior)[None]).ravel()
  valid = g < max_candidates
  num_scored = int(valid.sum())
  acc = accepted.ravel() & valid
  if max_per_path is not None:  # the last max_per_path accepted points of each path (furthest from its source).
    per_path = acc.reshape(-1, num_interior)
    from_end = np.cumsum(per_path[:, ::-1], axis=1)[:, ::-1]
    acc = (per_path & (from_end <= int(max_per_path))).ravel()
  hits = np.flatnonzero(acc)
  if len(hits) >= needed:
    hits = hits[:needed]
    valid &= g <= g[hits[-1]]
  failed = ~passed.reshape(-1, passed.shape[-1])[valid]
  return ChunkSelection(
      hits, int(valid.sum()), num_scored, failed.sum(0), (failed & (failed.sum(1, keepdims=True) == 1)).sum(0)
  )


def _materialise_hits(search: _Search, host: dict, z: Any, hits: np.ndarray, dest: np.ndarray) -> None:
  """Writes the accepted latents of one chunk into ``dest`` (len(hits), ...) from the
  chunk's full draws ``z``, in fixed blocks of MAT_BLOCK candidates (one block in memory at a time)."""
  flat = dest.reshape(len(hits), -1)
  geom, num_interior = search.geom, search.cfg.num_interior
  with_refs = search.cfg.opt_steps > 0 and search.cfg.opt_basis == "refs"
  pi, ki = np.divmod(hits, num_interior)
  for s in range(0, len(hits), MAT_BLOCK):
    sel_p, sel_k = pi[s : s + MAT_BLOCK], ki[s : s + MAT_BLOCK]
    pad = MAT_BLOCK - len(sel_p)
    sel_p, sel_k = np.r_[sel_p, np.zeros(pad, int)], np.r_[sel_k, np.zeros(pad, int)]
    if len(z) == 1:
      z_rows = z[0][sel_p]
    else:  # rows of several devices gathered (exactly) onto the default device
      sub = z[0].shape[0]
      z_rows = jnp.asarray(np.stack([np.asarray(z[i // sub][i % sub]) for i in sel_p]))
    m = materialise_full(
        geom.all_t,
        geom.extras,
        z_rows,
        jnp.asarray(host["source"][sel_p]),
        jnp.asarray(host["id_refs"][sel_p, sel_k]),
        jnp.asarray(host["ood_refs"][sel_p, sel_k]),
        jnp.asarray(host["coef"][sel_p, sel_k]),
        jnp.asarray(host["gram"][sel_p, sel_k]),
        jnp.asarray(host["rho"][sel_p, sel_k]),
        num_ood=geom.num_ood,
        with_refs=with_refs,
    )
    flat[s : s + MAT_BLOCK - pad] = np.asarray(m)[: MAT_BLOCK - pad]
    release_pages(dest)  # a memmap ``out``: written through to its file, pages dropped


def _records(host: dict, first_path: int, hits: np.ndarray, num_interior: int) -> dict:
  pi, ki = np.divmod(hits, num_interior)
  return {
      "candidate_index": (first_path + pi) * num_interior + ki,
      "path_index": first_path + pi,
      "source_index": host["source"][pi],
      "t": (ki + 1) / (num_interior + 1),
      "id_ref_index": host["id_refs"][pi, ki],
      "ood_ref_index": host["ood_refs"][pi, ki],
      "stats": host["stats"][pi, ki],
      "guard_logit": host["logit"][pi, ki],
  }


# ---------------------------------------------------------------------------
# The result.


def _build_result(
    search: _Search,
    options: DiscoveryOptions,
    num_samples: int,
    latents: np.ndarray,
    records: list[dict],
    fails: np.ndarray,
    sole: np.ndarray,
    examined: int,
    scored: int,
    seconds: float,
) -> DiscoveryResult:
  r = options.num_refs
  tails = {
      "candidate_index": ((), np.int64),
      "path_index": ((), np.int64),
      "source_index": ((), np.int64),
      "t": ((), np.float64),
      "id_ref_index": ((r,), np.int32),
      "ood_ref_index": ((r,), np.int32),
      "stats": ((3,), np.float32),
      "guard_logit": ((), np.float32),
  }
  cat = {
      k: (np.concatenate([rec[k] for rec in records]).astype(dt) if records else np.zeros((0,) + tail, dt))
      for k, (tail, dt) in tails.items()
  }
  rejections = {name: int(v) for name, v in zip(REJECTION_REASONS, fails)}
  considered = rejections if search.guard is not None else {k: v for k, v in rejections.items() if k != "guard"}
  n_acc = latents.shape[0]
  return DiscoveryResult(
      latents=latents,
      **cat,
      num_candidates=examined,
      num_scored=scored,
      acceptance_rate=n_acc / max(examined, 1),
      candidates_per_second=scored / max(seconds, 1e-9),
      seconds=seconds,
      setup_seconds=search.setup_seconds,
      rejections=rejections,
      sole_rejections={name: int(v) for name, v in zip(REJECTION_REASONS, sole)},
      most_rejecting=(max(considered, key=considered.get) if any(considered.values()) else None),
      targets=search.targets,
      prior=search.prior.summary(),
      mode=options.mode,
      config={
          "num_samples": num_samples,
          "max_candidates": search.max_candidates,
          "num_interior": options.num_interior,
          "num_refs": r,
          "max_per_path": options.max_per_path,
          "tolerance_scale": search.targets.tolerance_scale,
          "guard": search.guard.kind if search.guard else None,
          "guard_margin": options.guard_margin,
          "opt_steps": search.cfg.opt_steps,
          "opt_lr": options.opt_lr,
          "opt_basis": options.opt_basis,
          "chunk_paths": options.chunk_paths,
          "dim": int(np.prod(search.shape)),
      },
  )


def discover(
    ood_bank: Any,
    id_bank: Any,
    *,
    num_samples: int,
    key: jax.Array,
    options: DiscoveryOptions | None = None,
    targets: Targets | None = None,
    prior: GaussianPrior | None = None,
    fitted_guard: LinearGuard | None = None,
    out: np.ndarray | None = None,
    mesh: Any = None,
    **overrides: Any,
) -> DiscoveryResult:
  """Latent discovery: slerp candidates between OOD latents and prior draws, kept
  when they meet the three geometric criteria and the guard.

  ``options`` (or its fields as keyword overrides, e.g. ``mode='optimize'``) say how.
  Targets default to the banks' own (``compute_targets`` with ``fold_in(key, 5)``),
  the prior to ``fit_prior(ood_bank, options.prior_kind)``, the guard to
  ``options.guard`` fitted on the banks unless ``fitted_guard`` is given.
  ``out``: an optional (num_samples, ...) array (e.g. a memmap) the accepted
  latents are written into. ``mesh``: every chunk of paths is sharded over its data
  axis; the result is the same bits as on one device. Stops after ``num_samples``
  acceptances (the first in global order) or ``options.max_candidates`` candidates.
  """
  options = dataclasses.replace(options or DiscoveryOptions(), **overrides)
  if options.mode == "typical":
    raise ValueError("mode='typical' judges denoised images: use discovery.discover_typical (sample does)")
  if prior is None and options.prior_kind == "published_head":
    raise ValueError(
        "prior_kind='published_head' is fitted on the ID bank: pass " "prior=fit_prior_published_head(id_bank)"
    )
  search = _setup(
      ood_bank, id_bank, int(num_samples), key, options, targets, prior, fitted_guard or options.guard, mesh
  )
  if out is not None and (out.shape[0] < num_samples or tuple(out.shape[1:]) != search.shape):
    raise ValueError(f"out must have shape ({num_samples}, {', '.join(map(str, search.shape))}), got {out.shape}")
  # Accepted latents go straight into their rows (``out``, or an array whose pages are
  # only touched when written): no list of blocks concatenated at the end.
  rows = out if out is not None else np.empty((int(num_samples),) + search.shape, np.float32)
  records = []
  fails, sole = np.zeros(4, np.int64), np.zeros(4, np.int64)
  n_acc = examined = scored = written = 0
  pending: list[dict] = []  # span draws: kept candidates awaiting a whole MAT_BLOCK
  loop_start = time.perf_counter()
  for p0, host, z in _chunks(search, mesh):
    sel = select_chunk(
        host["accepted"],
        host["passed"],
        p0,
        num_interior=search.cfg.num_interior,
        max_candidates=search.max_candidates,
        max_per_path=options.max_per_path,
        needed=num_samples - n_acc,
    )
    examined, scored = examined + sel.num_examined, scored + sel.num_scored
    fails, sole = fails + sel.fails, sole + sel.sole
    if len(sel.hits):
      if search.draws is None:
        _materialise_hits(search, host, z, sel.hits, rows[n_acc : n_acc + len(sel.hits)])
      else:
        pending.append(_hit_fields(host, p0, sel.hits, search.cfg.num_interior))
        pending, written = _materialise_pending(search, pending, rows, written, final=False)
      records.append(_records(host, p0, sel.hits, search.cfg.num_interior))
      n_acc += len(sel.hits)
    if n_acc >= num_samples:
      break
  pending, written = _materialise_pending(search, pending, rows, written, final=True)
  seconds = time.perf_counter() - loop_start
  latents = rows[:n_acc]
  result = _build_result(search, options, int(num_samples), latents, records, fails, sole, examined, scored, seconds)
  if options.compare and n_acc:
    result.comparison = compare_to_bank(
        result.latents,
        ood_bank,
        id_bank,
        targets=search.targets,
        guard=search.guard,
        key=jax.random.fold_in(key, 4),
        geometry=search.geom,
    )
  return result
