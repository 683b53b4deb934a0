"""Batched, sharded DDIM over folders: images -> latent banks, and back.

``DDIMRunner`` runs the jitted kernels of ``diffusion`` at one fixed batch size
(padding the last batch, so nothing recompiles) with batches sharded over the
mesh's data axis and the weights replicated. ``open_inputs`` reads a folder of
images or scientific files; ``invert_inputs`` builds a latent bank from it, resumably.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from discovery_jax import diffusion, parallel
from discovery_jax.data import images
from discovery_jax.data.bank import Item, LatentBank
from discovery_jax.progress import Progress


@dataclasses.dataclass
class DDIMRunner:
  """Inversion / generation of any number of inputs in fixed-size batches
  (``batch_size`` per device; the global batch is that times the mesh's data axis)."""

  fn: diffusion.EpsFn
  t_0: int = diffusion.DEFAULT_T0
  n_steps: int = diffusion.DEFAULT_STEPS
  schedule: diffusion.Schedule = diffusion.DEFAULT_SCHEDULE
  batch_size: int = 8
  mesh: Any = None

  def __post_init__(self):
    diffusion.check_ddim_args(self.t_0, self.n_steps, 0.0, self.schedule.num_timesteps)
    # ``batch_size`` is per device: every device then runs the same shapes whatever
    # the device count, so a sample's bits do not depend on it (XLA's kernels
    # accumulate in an order that depends on the batch shape).
    self.batch_size = max(1, int(self.batch_size))
    self.global_batch = self.batch_size * parallel.data_size(self.mesh)
    self._params = parallel.replicate(self.fn.params, self.mesh)
    self._alphas = jnp.asarray(self.schedule.alphas_cumprod, jnp.float32)
    self._inv = diffusion.inversion_pairs(self.t_0, self.n_steps)
    self._gen = diffusion.generation_pairs(self.t_0, self.n_steps)

  def _loop(self, x: np.ndarray, pairs, eta: float = 0.0, keys=None, outputs=()) -> Any:
    n = x.shape[0]
    xb = parallel.shard_batch(parallel.pad_batch(x, self.global_batch), self.mesh)
    if keys is not None:
      keys = parallel.shard_batch(parallel.pad_batch(keys, self.global_batch), self.mesh)
    out = diffusion._jit_loop(self.fn, self._params, xb, pairs[0], pairs[1], self._alphas, keys,
                              eta=float(eta), outputs=tuple(outputs))
    if outputs:
      x_out, extra = out
      return np.asarray(x_out)[:n], {k: np.asarray(v)[:, :n] for k, v in extra.items()}
    return np.asarray(out)[:n]

  def generate_to(self, x_t: np.ndarray, t_stop: int) -> np.ndarray:
    """Deterministic DDIM from x_{t_0} down to exactly x_{t_stop}: this runner's
    grid steps above t_stop, the last one landing on t_stop."""
    ts = self._gen[0]
    ts = ts[ts > t_stop]
    pairs = (ts, np.append(ts[1:], t_stop).astype(np.int32))
    return self._batched(np.asarray(x_t, np.float32), lambda b, _: self._loop(b, pairs))

  def _batched(self, x: np.ndarray, run: Callable[[np.ndarray, slice], np.ndarray]) -> np.ndarray:
    outs = [run(x[i:i + self.global_batch], slice(i, i + self.global_batch))
            for i in range(0, x.shape[0], self.global_batch)]
    return np.concatenate(outs, axis=0)

  def invert(self, x0: np.ndarray) -> np.ndarray:
    """Images (N, H, W, C) in [-1, 1] -> latents x_{t_0} (N, H, W, C)."""
    return self._batched(np.asarray(x0, np.float32), lambda b, _: self._loop(b, self._inv))

  def generate(self, x_t: np.ndarray, *, eta: float = 0.0, key: jax.Array | None = None,
               sample_index: Sequence[int] | None = None) -> np.ndarray:
    """Latents x_{t_0} -> images x_0; with eta > 0 sample i uses fold_in(key, sample_index[i])."""
    x_t = np.asarray(x_t, np.float32)
    diffusion.check_ddim_args(self.t_0, self.n_steps, eta, self.schedule.num_timesteps)
    if eta > 0 and key is None:
      raise ValueError("eta > 0 needs a random key")
    index = np.arange(x_t.shape[0]) if sample_index is None else np.asarray(sample_index)
    keys = _raw_keys(diffusion.sample_keys(key, index)) if eta > 0 else None
    run = lambda b, sl: self._loop(b, self._gen, eta=eta, keys=None if keys is None else keys[sl])
    return self._batched(x_t, run)


def _raw_keys(keys: jax.Array) -> np.ndarray:
  """Typed or raw PRNG keys -> raw uint32 key data (paddable, shardable numpy)."""
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.key_data(keys)
  return np.asarray(keys)


# ---------------------------------------------------------------------------
# Folders.


def image_options(config: Any) -> images.ImageOptions:
  """ImageOptions from ``config.model`` (size, channels) and ``config.data``."""
  data = config.get("data", {}) if hasattr(config, "get") else {}
  get = lambda k, d: data.get(k, d) if hasattr(data, "get") else d
  return images.ImageOptions(
      image_size=int(config.model.image_size), channels=int(config.model.in_channels),
      resize=get("resize", "stretch"), resample=get("resample", "lanczos"), alpha=get("alpha", "black"))


@dataclasses.dataclass
class InputSet:
  """The usable inputs of a folder as model-space arrays, and the files skipped.

  ``kind='image'``: ordinary image files, decoded lazily batch by batch.
  ``kind='scientific'``: FITS/.npy/.npz physical fields, resized in physical
  units and mapped to [-1, 1] by an intensity transform fitted on this set (or
  the one given, e.g. the few-shot set's for held-out data); ``transform`` is its
  JSON form, stored with the bank so generated samples go back to physical units.
  """

  kind: str
  items: list[Item]
  skipped: list[dict]
  load: Callable[[Sequence[int]], np.ndarray]
  paths: list[str]
  transform: dict | None = None
  physical_channels: int | None = None
  fields_info: list[dict] | None = None

  def __len__(self) -> int:
    return len(self.items)


def _folder_kind(folder: str, wanted: str) -> str:
  from discovery_jax.data import scientific
  if wanted in ("image", "scientific"):
    return wanted
  if wanted != "auto":
    raise ValueError(f"data.format must be 'auto', 'image' or 'scientific', got {wanted!r}")
  files = images.list_files(folder, images.IMAGE_EXTENSIONS + scientific.SCIENTIFIC_EXTENSIONS)
  sci = [f for f in files if scientific.is_scientific_file(f)]
  if sci and len(sci) != len(files):
    raise images.InputError(f"{folder} mixes scientific files ({os.path.basename(sci[0])}) and images "
                            f"({os.path.basename(next(f for f in files if f not in sci))}); "
                            "use one kind per folder or set data.format")
  return "scientific" if sci else "image"


def open_inputs(folder: str, config: Any, *, on_bad_file: str | None = None, max_files: int | None = None,
                transform: dict | None = None) -> InputSet:
  """Lists, validates and hashes the inputs of ``folder`` (images or scientific files).

  A file that cannot be read is skipped and reported (``data.on_bad_file='skip'``)
  or stops the run naming it (``'error'``). Item names are paths relative to
  ``folder`` (plus ``[plane]`` for cube slices).
  """
  data = config.get("data", {})
  on_bad_file = on_bad_file or data.get("on_bad_file", "skip")
  max_files = int(data.get("max_files", -1)) if max_files is None else max_files
  if on_bad_file not in ("skip", "error"):
    raise ValueError(f"data.on_bad_file must be 'skip' or 'error', got {on_bad_file!r}")
  kind = _folder_kind(folder, data.get("format", "auto"))
  if kind == "image":
    return open_image_folder(folder, image_options(config), on_bad_file, max_files)
  return _open_scientific(folder, config, on_bad_file, max_files, transform)


def open_image_folder(folder: str, options: images.ImageOptions, on_bad_file: str = "skip",
                      max_files: int = -1) -> InputSet:
  """An image folder as an InputSet (decoded lazily)."""
  files = images.list_files(folder)
  if max_files > 0:
    files = files[:max_files]
  paths, items, skipped = [], [], []
  for path in files:
    try:
      images.load_image(path, options)
    except images.InputError as e:
      if on_bad_file == "error":
        raise
      logging.warning("skipping %s", e)
      skipped.append({"path": path, "reason": str(e)})
      continue
    paths.append(path)
    items.append(Item(os.path.relpath(path, folder), images.file_sha256(path)))
  if not paths:
    raise images.InputError(f"no readable input in {folder}: all {len(files)} files were skipped "
                            f"(first: {skipped[0]['reason']})")
  load = lambda idx: np.stack([images.load_image(paths[i], options) for i in idx]).astype(np.float32)
  return InputSet("image", items, skipped, load, paths)


def _open_scientific(folder, config, on_bad_file, max_files, transform) -> InputSet:
  from discovery_jax.data import scientific, transforms
  options = scientific.options_from_config(config)
  files = scientific.list_scientific_files(folder)
  if max_files > 0:
    files = files[:max_files]
  good, skipped = [], []
  for path in files:
    try:
      scientific.read_fields(path, dataclasses.replace(options, image_size=None))
      good.append(path)
    except images.InputError as e:
      if on_bad_file == "error":
        raise
      logging.warning("skipping %s", e)
      skipped.append({"path": path, "reason": str(e)})
  if not good:
    raise images.InputError(f"no readable input in {folder}: all {len(files)} files were skipped "
                            f"(first: {skipped[0]['reason']})")
  fields = scientific.load_field_set(good, options)
  if transform is None:
    fitted = transforms.fit_transform(arrays=[f.data for f in fields],
                                      **transforms.transform_from_config(config.data.get("transform", {})))
  else:
    fitted = transforms.Transform.from_dict(transform)
  model = np.stack([scientific.to_model_input(f.data, fitted, options.channels, name=f.info["label"])
                    for f in fields])
  hashes = {p: images.file_sha256(p) for p in good}
  items = []
  for f in fields:
    suffix = f.name[len(os.path.basename(f.info["source"])):]  # "[plane]" for cube slices, else "".
    items.append(Item(os.path.relpath(f.info["source"], folder) + suffix, hashes[f.info["source"]] + suffix))
  nonfinite = sum(int(f.info.get("n_nonfinite", 0)) for f in fields)
  if nonfinite:
    logging.info("%s: filled %d NaN/Inf pixels (data.fill=%r)", folder, nonfinite, options.fill)
  return InputSet("scientific", items, skipped, lambda idx: model[np.asarray(idx)], [f.info["source"] for f in fields],
                  fitted.to_dict(), int(fields[0].data.shape[-1]),
                  [{k: v for k, v in f.info.items() if k in ("name", "source", "hdu", "extname", "planes",
                                                              "n_nonfinite", "cards")} for f in fields])


def load_batch(paths: Sequence[str], options: images.ImageOptions) -> np.ndarray:
  """Image files -> (N, size, size, C) in [-1, 1]."""
  return np.stack([images.load_image(p, options) for p in paths]).astype(np.float32)


def invert_inputs(inputs: InputSet, bank_dir: str, runner: DDIMRunner, *, model_fingerprint: str,
                  source: str = "", desc: str = "invert") -> LatentBank:
  """Inverts every input into the bank at ``bank_dir`` (resumes a partial bank)."""
  shape = inputs.load([0]).shape[1:]
  extra = {"source_folder": os.path.abspath(source) if source else "", "skipped": inputs.skipped,
           "input_kind": inputs.kind}
  if inputs.transform is not None:
    extra.update(intensity_transform=inputs.transform, physical_channels=inputs.physical_channels,
                 fields=inputs.fields_info)
  bank = LatentBank.create(bank_dir, inputs.items, shape, model_fingerprint=model_fingerprint, t_0=runner.t_0,
                           n_steps=runner.n_steps, extra=extra)
  pending = bank.pending_indices()
  if not pending:
    logging.info("%s: bank %s is already complete (%d latents)", desc, bank_dir, bank.count)
    return bank
  logging.info("%s: %d inputs from %s -> %s (%d already done, %d skipped)", desc, bank.count, source or "memory",
               bank_dir, bank.count - len(pending), len(inputs.skipped))
  progress = Progress(bank.count, "images", desc, already_done=bank.count - len(pending))
  for start in range(0, len(pending), runner.global_batch):
    idx = pending[start:start + runner.global_batch]
    bank.write(idx, runner.invert(inputs.load(idx)))
    progress.update(len(idx))
  bank.update_metadata(seconds=progress.summary()["seconds"])
  return bank


# ---------------------------------------------------------------------------
# The model's own in-domain reference bank.

ID_SOURCES = ("generate_invert", "trajectory")


def model_id_bank(bank_dir: str, runner: DDIMRunner, count: int, key: jax.Array, *, model_fingerprint: str,
                  source: str = "generate_invert", shape: Sequence[int]) -> LatentBank:
  """ID reference latents at t_0 made by the frozen model itself (no ID images needed).

  ``'generate_invert'`` (default): DDIM-generate ID images from pure noise
  x_T ~ N(0, I) (t: T-1 -> 0), then invert them to t_0 exactly like the OOD
  images. Both banks then come from the same inversion procedure, so a
  difference between them reflects the domains, not the procedure.
  ``'trajectory'``: the model's DDIM trajectory from pure noise stopped at t_0
  (half the cost; latents of the generative direction, not of inversion).
  Sample i draws its noise from ``fold_in(key, i)``: resumable and independent
  of batch size and device count.
  """
  if source not in ID_SOURCES:
    raise ValueError(f"discovery.id_source must be one of {ID_SOURCES}, got {source!r}")
  if count < 2:
    raise ValueError(f"discovery.num_id_latents must be >= 2, got {count}")
  items = [Item(f"model_sample_{i:06d}", f"{source}:fold_in(key,{i})") for i in range(count)]
  bank = LatentBank.create(bank_dir, items, shape, model_fingerprint=model_fingerprint, t_0=runner.t_0,
                           n_steps=runner.n_steps, extra={"source": f"model:{source}"})
  pending = bank.pending_indices()
  if not pending:
    return bank
  T = runner.schedule.num_timesteps
  top = DDIMRunner(runner.fn, T - 1, runner.n_steps, runner.schedule, runner.batch_size, runner.mesh)
  progress = Progress(count, "latents", f"ID bank ({source})", already_done=count - len(pending))
  for start in range(0, len(pending), runner.global_batch):
    idx = np.asarray(pending[start:start + runner.global_batch])
    noise = np.asarray(jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), tuple(shape)))(
        jnp.asarray(idx, jnp.uint32)))
    if source == "generate_invert":
      latents = runner.invert(top.generate(noise))
    else:
      latents = top.generate_to(noise, runner.t_0)
    bank.write(idx.tolist(), latents)
    progress.update(len(idx))
  return bank


# ---------------------------------------------------------------------------
# The banks of a run.


def bank_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, "banks", name)


def prepare_banks(config: Any, workdir: str, runner: DDIMRunner, *, model_fingerprint: str,
                  need_id: bool = True, key: jax.Array | None = None) -> dict:
  """The OOD bank (``config.data.ood_dir``) and the ID reference bank of a run.

  ID: ``config.data.id_dir`` inverted the same way when given; otherwise the
  model's own latents (``model_id_bank``, ``config.discovery.num_id_latents``,
  ``config.discovery.id_source``). Every bank resumes where it stopped. Returns
  {'ood': LatentBank, 'id': LatentBank}.
  """
  from discovery_jax.data.bank import check_compatible
  banks = {}
  for name, field in (("ood", "ood_dir"), ("id", "id_dir")):
    folder = config.data.get(field, "")
    if not folder:
      continue
    inputs = open_inputs(folder, config)
    if inputs.skipped:
      logging.warning("%s: skipping %d unreadable file(s): %s", folder, len(inputs.skipped),
                      ", ".join(s["path"] for s in inputs.skipped[:5]))
    banks[name] = invert_inputs(inputs, bank_path(workdir, name), runner, model_fingerprint=model_fingerprint,
                                source=folder, desc=f"invert {name}")
  if "ood" not in banks:
    raise ValueError("config.data.ood_dir is empty: give the folder of few-shot target-domain images")
  if need_id and "id" not in banks:
    disc = config.get("discovery", {})
    key = key if key is not None else jax.random.key(int(config.get("seed", 0)))
    banks["id"] = model_id_bank(bank_path(workdir, "id_model"), runner, int(disc.get("num_id_latents", 64)), key,
                                model_fingerprint=model_fingerprint,
                                source=disc.get("id_source", "generate_invert"), shape=banks["ood"].shape)
  check_compatible(list(banks.values()))
  return banks
