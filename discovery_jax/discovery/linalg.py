"""Banks as float32 rows, streamed in blocks, and the fixed-block matmuls every
statistic and kernel is built on: a row's result never depends on how many rows
share its call (bitwise; tested)."""

from __future__ import annotations

import functools
import mmap
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

ROW_BLOCK = 32  # rows per fixed-shape matmul: a row's result never depends on the batch.
MAT_BLOCK = 32  # accepted latents materialised per call.
SCORE_BLOCK = 256  # materialised candidates per fixed-shape matmul in score_candidates.
STREAM_ROWS = 128  # rows per streamed block of a bank (100 MB at d = 196,608).
TINY = 1e-30


def as_rows(bank: Any) -> np.ndarray:
  """(N, ...) -> (N, d) float32 view (a memmap stays a memmap; copies only to cast)."""
  a = bank if isinstance(bank, np.ndarray) else np.asarray(bank)
  if a.ndim < 2:
    raise ValueError(f"a bank must have shape (N, ...) with at least 2 dimensions, got {a.shape}")
  rows = a.reshape(a.shape[0], -1)
  return rows if rows.dtype == np.float32 else rows.astype(np.float32)


def latent_shape(bank: Any) -> tuple[int, ...]:
  return tuple(np.shape(bank)[1:])


def check_banks(ood_bank: Any, id_bank: Any | None = None, *, num_refs: int | None = None) -> None:
  """Raises ValueError for mismatched latent shapes or banks too small for ``num_refs``."""
  if np.ndim(ood_bank) < 2:
    raise ValueError(f"the OOD bank must have shape (N, ...), got {np.shape(ood_bank)}")
  if id_bank is not None:
    if np.ndim(id_bank) < 2:
      raise ValueError(f"the ID bank must have shape (N, ...), got {np.shape(id_bank)}")
    a, b = latent_shape(ood_bank), latent_shape(id_bank)
    if int(np.prod(a)) != int(np.prod(b)) or (len(a) > 1 and len(b) > 1 and a != b):
      raise ValueError(f"latent shapes differ: OOD bank latents have shape {a}, ID bank latents {b}")
  if num_refs is not None:
    if num_refs < 2:
      raise ValueError(f"num_refs must be >= 2 (the vertex angle needs pairs of references), got {num_refs}")
    n = np.shape(ood_bank)[0]
    if n < num_refs + 1:
      raise ValueError(
          f"the OOD bank has {n} latents; num_refs={num_refs} needs at least {num_refs + 1} "
          f"(each real latent is compared with {num_refs} OTHER latents, leave-one-out)"
      )
    if id_bank is not None and np.shape(id_bank)[0] < num_refs:
      raise ValueError(
          f"the ID bank has {np.shape(id_bank)[0]} latents; num_refs={num_refs} needs at least " f"{num_refs}"
      )


def release_pages(array: Any) -> None:
  """Drops this process's resident pages of a memory-mapped array (after flushing
  what was written): the data stay in the file and the page cache and are read back
  on the next access, but no longer count in the process's RSS. A no-op for other
  arrays."""
  m = getattr(array, "_mmap", None)
  # Not copy-on-write maps ('c'): dropping their pages would drop what was written.
  if not isinstance(array, np.memmap) or m is None or not hasattr(m, "madvise") or array.mode == "c":
    return
  try:
    if array.mode != "r":
      m.flush()
    m.madvise(mmap.MADV_DONTNEED)
  except (OSError, ValueError):
    pass


def row_blocks(rows: np.ndarray, block: int = STREAM_ROWS) -> Iterator[tuple[int, np.ndarray]]:
  """Blocks of rows in order; a memmap's pages are dropped once each block has been
  used, so a streamed pass never holds the whole bank resident."""
  for start in range(0, rows.shape[0], block):
    yield start, np.asarray(rows[start : start + block], np.float32)
    release_pages(rows)


def pad_rows(x: np.ndarray | jax.Array, multiple: int) -> tuple[Any, int]:
  n = x.shape[0]
  pad = (-n) % multiple
  if pad:
    x = (jnp if isinstance(x, jax.Array) else np).concatenate(
        [x, (jnp if isinstance(x, jax.Array) else np).zeros((pad,) + x.shape[1:], x.dtype)]
    )
  return x, n


def rowblock_matmul(x: jax.Array, yt: jax.Array, block: int = ROW_BLOCK) -> jax.Array:
  """``x @ yt`` for yt of shape (d, N), on fixed (block, d) blocks of x (its rows a
  multiple of block). XLA's gemm result for a row changes bitwise with the number
  of rows, and ``x @ y.T`` re-transposes y on every call (4x slower on CPU): callers
  keep banks transposed once (``transpose``). One block (no loop) is the fast path."""
  blocks = x.reshape(-1, block, x.shape[-1])
  return jax.lax.map(lambda b: b @ yt, blocks).reshape(x.shape[0], yt.shape[1])


jit_rowblock_matmul = jax.jit(rowblock_matmul)
transpose = jax.jit(lambda y: y.T)


@functools.partial(jax.jit, donate_argnums=(0,))
def put_columns(cols: jax.Array, rows: jax.Array, start: jax.Array) -> jax.Array:
  return jax.lax.dynamic_update_slice(cols, rows.T, (jnp.int32(0), start))


def device_columns(bank: Any) -> jax.Array:
  """(d, N) device array of a bank's rows as columns, filled block by block: neither
  a whole host copy nor a second device copy for the transpose is ever held."""
  rows = as_rows(bank)
  cols = jnp.zeros((rows.shape[1], rows.shape[0]), jnp.float32)
  for s, blk in row_blocks(rows):
    cols = put_columns(cols, jnp.asarray(blk), jnp.int32(s))
  return cols


gram_small = jax.jit(lambda yt: yt.T @ yt)


def matmul_rows(x: jax.Array | np.ndarray, yt: jax.Array) -> jax.Array:
  """``x @ yt`` for any number of rows (padded to whole blocks)."""
  padded, n = pad_rows(x, ROW_BLOCK)
  return jit_rowblock_matmul(jnp.asarray(padded), yt)[:n]


def norms(bank: Any) -> np.ndarray:
  """(N,) Euclidean norms, float64."""
  rows = as_rows(bank)
  out = np.empty(rows.shape[0], np.float64)
  for s, b in row_blocks(rows):
    out[s : s + len(b)] = np.sqrt(np.square(b, dtype=np.float64).sum(1))
  return out


def bank_mean(bank: Any) -> np.ndarray:
  """(d,) float64 mean, streamed."""
  rows = as_rows(bank)
  total = np.zeros(rows.shape[1], np.float64)
  for _, b in row_blocks(rows):
    total += b.sum(0, dtype=np.float64)
  return total / rows.shape[0]


def gram(a: Any, b: Any | None = None) -> np.ndarray:
  """``a @ b.T`` (float64 result of float32 products): a is streamed, b copied to
  the device once, as columns (b = a when None). a goes in ROW_BLOCK rows per call:
  the same bits as larger calls, and only a small block of a on the device besides b."""
  ra = as_rows(a)
  rb_t = device_columns(a if b is None else b)
  if ra.shape[1] != rb_t.shape[0]:
    raise ValueError(f"latent sizes differ: {ra.shape[1]} vs {rb_t.shape[0]}")
  out = np.empty((ra.shape[0], rb_t.shape[1]), np.float64)
  for s, blk in row_blocks(ra, ROW_BLOCK):
    out[s : s + len(blk)] = np.asarray(matmul_rows(blk, rb_t))
  return out


def dist_from_gram(g: np.ndarray, na2: np.ndarray, nb2: np.ndarray) -> np.ndarray:
  return np.sqrt(np.maximum(na2[:, None] + nb2[None, :] - 2 * g, 0.0))


def angle_from_gram(g: np.ndarray, na2: np.ndarray, nb2: np.ndarray) -> np.ndarray:
  cos = g / np.sqrt(np.maximum(na2[:, None] * nb2[None, :], TINY))
  return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def stacked_gram(ro: np.ndarray, ri: np.ndarray) -> np.ndarray:
  """Gram matrix of [ood; id] without concatenating the banks."""
  g_oi = gram(ro, ri)
  return np.block([[gram(ro), g_oi], [g_oi.T, gram(ri)]])


def span_features(g: np.ndarray, train: np.ndarray, rel_eps: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
  """Coordinates of every point in an orthonormal basis of span(x_train), from the
  Gram matrix alone: K_TT = U S U^T, f(x) = S^-1/2 U^T (X_T x). Also returns the
  map U S^-1/2 (basis vectors as combinations of training points)."""
  s, u = np.linalg.eigh(g[np.ix_(train, train)])
  keep = s > rel_eps * s.max()
  m = u[:, keep] / np.sqrt(s[keep])
  return g[:, train] @ m, m
