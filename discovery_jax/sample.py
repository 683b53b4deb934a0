r"""New images of an unseen domain from a frozen model: latent discovery, then DDIM.

  python -m discovery_jax.sample --config=configs/galaxy.py --workdir=runs/galaxy

1. banks: inverts the few-shot set (``config.data.ood_dir``) to x_{t_0}, and the
   ID reference set (``config.data.id_dir``, or the model's own latents);
2. latents: for each method of ``config.sample.methods`` —
   'discovery' (geometric criteria; ``config.discovery.mode`` 'optimize' or
   'rejection'), 'gaussian' (the fitted OOD Gaussian, no criteria) or 'renoise'
   (few-shot latents re-noised: "copy with noise");
3. images: denoises the latents in sharded batches into
   ``WORKDIR/samples/<method>/``: ``dataset/``, a tensorflow-datasets dataset
   (array_record shards + manifest) with one PNG per sample in
   ``dataset/images/``; ``samples.npy`` (float32, model space); ``grid.png``;
   and ``fits/`` + ``samples_physical.npy`` for scientific data. While rows are
   still being denoised the array is ``samples.npy.partial``: a ``samples.npy``
   is always complete;
4. evaluation against held-out data when ``config.data.eval_dir`` is set;
5. ``WORKDIR/summary.json``: counts, acceptance rate, the computed targets, seeds,
   timings, ``ood_hit_rate``.

Same config and seed, same samples, on any number of devices or hosts. Every
stage resumes: banks, latents and dataset shards already written are kept. One
run at a time per workdir (a second is refused, naming the first one's pid); a
full disk or a read-only directory ends the run with one line naming the file.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from discovery_jax import cli, configlib, discovery, fileio, parallel, settings
from discovery_jax.data import images
from discovery_jax.data.bank import LatentBank, bank_path, prepare_banks
from discovery_jax.runner import DDIMRunner

METHODS = ("discovery", "gaussian", "renoise")
# Keys of the run: one root seed, one fold per purpose.
KEY_DISCOVERY, KEY_ID_BANK, KEY_NOISE, KEY_BASELINE = 1, 2, 3, 4
SAMPLES = "samples.npy"
PARTIAL = ".partial"  # samples.npy.partial: the rows being denoised; renamed to samples.npy once complete.


class DiscoveryBudgetError(ValueError):
  """Fewer latents than asked were found within the candidate budget."""


def _method_dir(workdir: str, method: str) -> str:
  return os.path.join(workdir, "samples", method)


def _latent_request(config: ml_collections.ConfigDict, method: str, banks: dict) -> dict:
  """Everything that determines a method's latents (the resume key)."""
  disc = configlib.to_plain(config.discovery)
  return {
      "method": method,
      "seed": int(config.seed),
      "num_samples": int(config.sample.num_samples),
      "discovery": disc if method == "discovery" else None,
      "renoise_strength": float(config.discovery.renoise_strength) if method == "renoise" else None,
      "prior_kind": config.discovery.prior_kind,
      "banks": {
          k: {
              "items": [i["sha256"] for i in b.metadata["items"]],
              "t_0": b.metadata["t_0"],
              "model": b.metadata["model_fingerprint"],
              "n_steps": b.metadata["n_steps"],
          }
          for k, b in banks.items()
      },
  }


def _digest(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def typical_judges(config: ml_collections.ConfigDict, banks: dict, runner: DDIMRunner) -> dict:
  """What typical discovery judges its candidates with, from ``config``: the keyword
  arguments ``options``, ``fewshot_images``, ``features``, ``own_images`` and
  ``guard_features`` of ``discovery.discover_typical`` (benchmarks/selection.py reuses it)."""
  from discovery_jax.data.inputs import load_all
  from discovery_jax.metrics import features as features_lib

  options = settings.typical_options(config)
  fewshot, _ = load_all(
      config.data.ood_dir, settings.input_options(config), transform=banks["ood"].metadata.get("intensity_transform")
  )
  own = runner.generate(np.asarray(banks["id"].latents())) if options.guard else None

  def extractor(name: str):
    # 'model': the base model's own h-space view; any other name is a fixed extractor.
    return (
        features_lib.model_extractor(runner.fn, runner.schedule)
        if name == "model"
        else features_lib.create_extractor(name)
    )

  guard_features = None
  if options.guard and options.guard_kind == "discriminant":
    guard_features = extractor(config.discovery.get("guard_features") or "model")
  return {
      "options": options,
      "fewshot_images": fewshot,
      "features": extractor(config.discovery.get("selection_features") or "random_conv"),
      "own_images": own,
      "guard_features": guard_features,
  }


def _typical_latents(
    config: ml_collections.ConfigDict, banks: dict, root: jax.Array, runner: DDIMRunner, prior
) -> tuple[np.ndarray, dict]:
  """Typical discovery: candidates denoised by ``runner`` and judged on their images."""
  n = int(config.sample.num_samples)
  judges = typical_judges(config, banks, runner)
  result = discovery.discover_typical(
      banks["ood"].latents(),
      num_samples=n,
      key=jax.random.fold_in(root, KEY_DISCOVERY),
      denoise=lambda z: np.clip(runner.generate(z), -1.0, 1.0),
      prior=prior,
      log=logging.info,
      **judges,
  )
  guard_features = judges["guard_features"]
  record = result.summary()
  record["selection_features"] = judges["features"].describe()
  record["guard_features"] = guard_features.describe() if guard_features is not None else None
  record["num_samples_requested"] = n
  record["_arrays"] = {
      "candidate_index": result.candidate_index,
      "source_index": result.source_index,
      "strength": result.strength,
      "nn_fewshot": result.nn_fewshot,
      "near_miss": result.near_miss,
  }
  logging.info(
      "discovery (typical): %d/%d latents from %d candidates (acceptance %.3f)",
      result.num_accepted,
      n,
      result.num_candidates,
      result.num_accepted / max(result.num_candidates, 1),
  )
  logging.debug("discovery (typical): rejections %s", result.rejections)
  if record["num_near_misses"]:
    logging.warning(
        "discovery (typical): the pool ran out; %d of the %d samples missed the band (flagged 'near_miss' in "
        "latents_meta.npz). Raise config.discovery.pool_factor for more within it",
        record["num_near_misses"],
        n,
    )
  return result.latents, record


def find_latents(
    config: ml_collections.ConfigDict,
    method: str,
    banks: dict,
    root: jax.Array,
    mesh=None,
    runner: DDIMRunner | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
  """The latents of ``method`` and a JSON-ready record of how they were found. ``out``: the
  (num_samples, ...) rows (a memmap) that rejection and optimize discovery write into."""
  n = int(config.sample.num_samples)
  ood, idb = banks["ood"].latents(), banks["id"].latents()
  disc = config.discovery
  options = settings.discovery_options(config)
  if options.prior_kind == "published_head":  # the published HEAD: the ID bank, np.var over all entries.
    prior = discovery.fit_prior_published_head(idb)
  else:
    prior = discovery.fit_prior(ood, options.prior_kind)
  if method == "discovery" and options.mode == "typical":
    return _typical_latents(config, banks, root, runner, prior)
  if method == "discovery":
    result = discovery.discover(
        ood,
        idb,
        num_samples=n,
        key=jax.random.fold_in(root, KEY_DISCOVERY),
        options=options,
        prior=prior,
        out=out,
        mesh=mesh,
    )
    record = result.summary()
    record["num_samples_requested"] = n
    record["_arrays"] = {k: np.asarray(getattr(result, k)) for k in discovery.RECORD_KEYS}
    logging.info(
        "discovery (%s): %d/%d latents from %d candidates (acceptance %.3f, %.0f candidates/s)",
        options.mode,
        result.num_accepted,
        n,
        result.num_candidates,
        result.acceptance_rate,
        result.candidates_per_second,
    )
    logging.debug("discovery (%s): targets %s", options.mode, record["targets"])
    return result.latents, record
  key = jax.random.fold_in(root, KEY_BASELINE)
  if method == "gaussian":
    latents = discovery.sample_gaussian_baseline(prior, n, key)
  elif method == "renoise":
    latents = discovery.renoise_baseline(ood, n, key, float(disc.renoise_strength), prior=prior)
  else:
    raise ValueError(f"config.sample.methods: unknown method {method!r}; choose from {METHODS}")
  record = {"num_accepted": n, "num_samples_requested": n, "prior": prior.summary(), "mode": method}
  record["comparison"] = discovery.compare_to_bank(latents, ood, idb)
  return latents.astype(np.float32), record


def stage_latents(
    config: ml_collections.ConfigDict,
    workdir: str,
    method: str,
    banks: dict,
    root: jax.Array,
    mesh=None,
    runner: DDIMRunner | None = None,
) -> tuple[np.ndarray, dict]:
  """Finds (or reuses) the latents of ``method``: ``latents.npy`` + ``latents.json``."""
  out = _method_dir(workdir, method)
  os.makedirs(out, exist_ok=True)
  request = _latent_request(config, method, banks)
  digest = _digest(request)
  path_npy, path_json = os.path.join(out, "latents.npy"), os.path.join(out, "latents.json")
  if os.path.isfile(path_json) and os.path.isfile(path_npy):
    with open(path_json) as f:
      record = json.load(f)
    if record.get("request_digest") == digest and record.get("complete"):
      logging.info("%s: reusing %s", method, path_npy)
      return np.load(path_npy, mmap_mode="r"), record
    if record.get("request_digest") != digest:
      # Different latents: their images must not mix with the old ones, and the old run is kept.
      _supersede(out, f"latents request {record.get('request_digest')} -> {digest}")
  start = time.time()
  n = int(config.sample.num_samples)
  with fileio.atomic_path(path_npy, ".npy") as tmp:
    rows = None
    if method == "discovery" and settings.discovery_options(config).mode != "typical":
      _reserve_rows(tmp, n, tuple(banks["ood"].latents().shape[1:]))
      rows = np.load(tmp, mmap_mode="r+")  # discover writes the accepted latents here, not into RAM
    latents, record = find_latents(config, method, banks, root, mesh, runner, out=rows)
    record.update(
        request_digest=digest,
        request=request,
        seconds=round(time.time() - start, 3),
        complete=latents.shape[0] == n,
    )
    arrays = record.pop("_arrays", None)
    if arrays is not None:  # per-latent provenance: references used, criteria values, slerp positions.
      fileio.atomic_save_npz(os.path.join(out, "latents_meta.npz"), **arrays)
    _write_latents(tmp, latents, rows)
  fileio.atomic_write_json(path_json, record)
  if not record["complete"]:
    rej = record.get("rejections", {})
    if record.get("mode") == "typical":
      raise DiscoveryBudgetError(
          f"discovery found {latents.shape[0]} of {config.sample.num_samples} latents within "
          f"{record.get('num_candidates')} candidates (saved to {path_npy}); rejections: {rej}. Raise "
          "config.discovery.pool_factor, or widen config.discovery.band / strength_range"
      )
    raise DiscoveryBudgetError(
        f"discovery found {latents.shape[0]} of {config.sample.num_samples} latents within "
        f"{record.get('num_candidates')} candidates (saved to {path_npy}); the criterion that rejected most is "
        f"{record.get('most_rejecting')!r} (rejections: {rej}). Raise config.discovery.max_candidates, "
        "loosen config.discovery.tolerance_scale, or use config.discovery.mode='optimize'"
    )
  return np.load(path_npy, mmap_mode="r"), record


def _supersede(out: str, why: str, keep: tuple[str, ...] = ()) -> str:
  """Moves a method's outputs (all but ``keep``) into ``<out>.superseded-N``; returns that folder.

  A rerun with other settings starts clean but never deletes what an earlier run produced.
  """
  n = 1
  while os.path.exists(f"{out}.superseded-{n}"):
    n += 1
  archive = f"{out}.superseded-{n}"
  os.makedirs(archive)
  for name in sorted(os.listdir(out)):
    if name not in keep:
      os.replace(os.path.join(out, name), os.path.join(archive, name))
  logging.warning("%s: the settings changed (%s); the previous outputs are kept in %s", out, why, archive)
  return archive


def _images_identity(config: ml_collections.ConfigDict, out: str, runner: DDIMRunner) -> dict:
  """What the stored images of a method depend on beyond the model and the seed."""
  with open(os.path.join(out, "latents.json")) as f:
    latents_digest = json.load(f).get("request_digest")
  return {
      "latents_digest": latents_digest,
      "t_0": runner.t_0,
      "n_steps": runner.n_steps,
      "eta": float(config.sampling.eta),
  }


def _stale_images(out: str, identity: dict) -> str | None:
  """Why the images already under ``out`` were made from other latents or settings (None: they match)."""
  from discovery_jax.data import dataset

  directory = os.path.join(out, "dataset")
  changes = dataset.metadata_changes(directory, identity)
  npy = os.path.join(out, SAMPLES)
  has_rows = os.path.isfile(npy) or os.path.isfile(npy + PARTIAL)
  if changes is None:
    return "samples.npy without a dataset" if has_rows else None
  if not changes and not has_rows and glob.glob(os.path.join(glob.escape(directory), "*.array_record-*")):
    return "dataset shards without samples.npy (their float rows are not in the shards)"
  return ", ".join(f"{k}: {was!r} -> {now!r}" for k, was, now in changes) or None


def _physical(bank: LatentBank) -> tuple[Any, int] | None:
  meta = bank.metadata
  if not meta.get("intensity_transform"):
    return None
  from discovery_jax.data import transforms

  return transforms.Transform.from_dict(meta["intensity_transform"]), int(meta.get("physical_channels") or 1)


def _reserve_rows(path: str, n: int, shape: tuple[int, ...]) -> None:
  """A zero-filled float32 ``.npy`` of ``(n, *shape)`` at ``path``, its disk blocks reserved up
  front: a full disk fails here, naming the file, never later inside a memory map."""
  rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *shape))
  del rows  # the header is written; the rows stay zero until written.
  fd = os.open(path, os.O_RDWR)
  try:
    os.posix_fallocate(fd, 0, os.path.getsize(path))
  except OSError as e:
    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # no fallocate here: sparse is fine.
      raise
  finally:
    os.close(fd)


def _allocate_rows(path: str, n: int, shape: tuple[int, ...]) -> None:
  """``_reserve_rows`` at ``path``, atomically (it appears whole or not at all)."""
  fileio.atomic_write_with(path, lambda tmp: _reserve_rows(tmp, n, shape), ".npy")


def _write_latents(path: str, latents: np.ndarray, rows: np.memmap | None) -> None:
  """Leaves exactly ``latents`` in the ``.npy`` at ``path``: already there when discovery
  filled every row of ``rows`` (the memmap of ``path``), else saved anew (a partial result
  is copied first, since its file is replaced)."""
  if rows is None:
    np.save(path, np.asarray(latents, np.float32))
  elif latents.shape[0] == rows.shape[0]:
    rows.flush()
  else:
    part = np.array(latents, np.float32)
    os.remove(path)  # a new file, never truncating the one still mapped
    np.save(path, part)


def _dataset_incomplete(writer) -> bool:
  """Whether any shard of ``writer``'s dataset (every host's) still has to be written."""
  return any(writer._quick_check(s) is not None for s in range(writer.num_shards))


def stage_images(
    config: ml_collections.ConfigDict,
    workdir: str,
    method: str,
    latents: np.ndarray,
    runner: DDIMRunner,
    root: jax.Array,
    fingerprint: str,
    physical,
) -> dict:
  """Denoises ``latents`` into this host's shards of the method's dataset."""
  from discovery_jax.data import dataset, fits_output, scientific

  out = _method_dir(workdir, method)
  n, shape = int(latents.shape[0]), tuple(latents.shape[1:])
  o = config.output
  formats = configlib.name_list(o.formats)
  store_latents = bool(o.store_latents)
  identity = _images_identity(config, out, runner)
  if jax.process_index() == 0:
    why = _stale_images(out, identity)
    if why:  # keep this run's latents, move the old images aside.
      _supersede(out, why, keep=("latents.npy", "latents.json", "latents_meta.npz"))
  parallel.sync_hosts(f"images-identity-{method}")
  spec = dataset.features_spec(shape, latent_shape=shape if store_latents else None)
  writer = dataset.DatasetWriter(
      os.path.join(out, "dataset"),
      f"discovery_{method}",
      n,
      int(o.shard_size),
      spec,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      metadata={
          "model_fingerprint": fingerprint,
          "seed": int(config.seed),
          "method": method,
          "config_name": config.get("name", ""),
          **identity,
      },
      identity_keys=dataset.DEFAULT_IDENTITY_KEYS + tuple(identity),
      write_images="png" in formats,
  )
  # Rows are written into samples.npy.partial before their shard is recorded; it becomes
  # samples.npy only when the whole dataset is (finish_method), so a samples.npy is never partial.
  final = os.path.join(out, SAMPLES)
  npy_path = final + PARTIAL
  if jax.process_index() == 0 and not os.path.isfile(npy_path):
    if not os.path.isfile(final):
      _allocate_rows(npy_path, n, shape)
    elif _dataset_incomplete(writer):  # shards to redo (e.g. deleted as broken): their rows too.
      os.replace(final, npy_path)
  parallel.sync_hosts(f"samples-npy-{method}")
  eta = float(config.sampling.eta)
  noise_key = jax.random.fold_in(root, KEY_NOISE)
  fits_dir = os.path.join(out, "fits")
  if physical is not None and "fits" in formats:
    os.makedirs(fits_dir, exist_ok=True)

  def generate(indices: np.ndarray) -> dict:
    x = runner.generate(np.asarray(latents[indices]), eta=eta, key=noise_key if eta > 0 else None, sample_index=indices)
    x = np.clip(x, -1.0, 1.0)
    rows = np.load(npy_path, mmap_mode="r+")
    rows[indices] = x
    rows.flush()
    del rows
    if physical is not None and "fits" in formats:
      transform, channels = physical
      phys = scientific.from_model_output(x, transform, channels=channels, clip=True)
      for i, p in zip(indices, phys):
        fits_output.write_sample(
            fits_dir,
            int(i),
            p,
            formats=("fits",),
            transform=transform,
            model_fingerprint=fingerprint,
            config_name=config.get("name", ""),
            seed=int(config.seed),
        )
    example = {"image": images.to_uint8(x), "index": indices.astype(np.int64)}
    if store_latents:
      example["latent"] = np.asarray(latents[indices], np.float32)
    return example

  start = time.time()
  written = writer.write_pending(generate, desc=f"denoise {method}")
  return {"writer": writer, "shards_written_here": written, "seconds": round(time.time() - start, 3)}


def finish_method(config: ml_collections.ConfigDict, workdir: str, method: str, writer, physical) -> dict:
  """Process 0: verify the dataset, write the grid (and physical previews)."""
  out = _method_dir(workdir, method)
  report = writer.finalize()
  final = os.path.join(out, SAMPLES)
  if not report.complete:
    raise dataset_error(f"{method}: {report.summary()} (the rows denoised so far stay in {final + PARTIAL})")
  if os.path.isfile(final + PARTIAL):
    with open(final + PARTIAL, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(final + PARTIAL, final)
  samples = np.load(final, mmap_mode="r")
  g = min(int(config.output.grid_size), samples.shape[0])
  images.save_png(os.path.join(out, "grid.png"), images.make_grid(np.asarray(samples[:g])))
  info = {
      "dataset": writer.directory,
      "dataset_complete": report.complete,
      "dataset_report": report.summary(),
      "samples_npy": os.path.join(out, "samples.npy"),
      "grid": os.path.join(out, "grid.png"),
  }
  if physical is not None:
    from discovery_jax.data import fits_output, scientific

    transform, channels = physical
    phys = scientific.from_model_output(np.asarray(samples), transform, channels=channels, clip=True)
    fileio.atomic_save_npy(os.path.join(out, "samples_physical.npy"), phys.astype(np.float32))
    fits_output.save_preview_grid(os.path.join(out, "grid_physical.png"), phys[:g])
    info.update(
        samples_physical=os.path.join(out, "samples_physical.npy"), grid_physical=os.path.join(out, "grid_physical.png")
    )
  return info


OUTPUT_FORMATS = ("png", "fits")


def check_typical_features(config: ml_collections.ConfigDict) -> None:
  """The feature spaces typical discovery judges in are names ``typical_judges`` can build."""
  from discovery_jax.metrics.features import EXTRACTORS

  known = ("model",) + tuple(e for e in EXTRACTORS if e != "inception")  # inception needs a weights path
  for key, default in (("selection_features", "random_conv"), ("guard_features", "model")):
    name = config.discovery.get(key) or default
    if name not in known:
      raise ValueError(f"config.discovery.{key}: unknown feature space {name!r}; choose from {known}")


def check_typical_fewshot(config: ml_collections.ConfigDict) -> None:
  """Typical discovery needs ``MIN_FEWSHOT`` few-shot images: counted from the file names, so a
  folder of three fails before minutes of inversion (a scientific file may hold many planes: the
  bank counts those)."""
  from discovery_jax.data import images, scientific
  from discovery_jax.discovery.image_criteria import MIN_FEWSHOT

  folder = settings.path_or_none(config.data.get("ood_dir"))
  if folder is None or not os.path.isdir(folder):
    return  # the inputs report a missing folder themselves
  files = images.list_files(folder, images.IMAGE_EXTENSIONS + scientific.SCIENTIFIC_EXTENSIONS)
  if len(files) < MIN_FEWSHOT and not any(scientific.is_scientific_file(f) for f in files):
    raise ValueError(
        f"config.data.ood_dir: {folder} holds {len(files)} images; discovery (discovery.mode='typical') needs at "
        f"least {MIN_FEWSHOT} (its criteria are leave-one-out distances among them): add images or leave "
        "discovery out of config.sample.methods"
    )


def check_output_options(config: ml_collections.ConfigDict) -> None:
  o = config.output
  unknown = [f for f in configlib.name_list(o.formats) if f not in OUTPUT_FORMATS]
  if unknown:
    raise ValueError(f"config.output.formats: unknown format(s) {unknown}; choose from {OUTPUT_FORMATS}")
  if int(o.shard_size) < 1:
    raise ValueError(f"config.output.shard_size must be >= 1, got {o.shard_size}")
  if int(o.grid_size) < 1:
    raise ValueError(f"config.output.grid_size must be >= 1, got {o.grid_size}")


def dataset_error(message: str) -> Exception:
  from discovery_jax.data import dataset

  return dataset.DatasetError(message)


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  parallel.initialize_distributed()
  start = time.time()
  main_host = jax.process_index() == 0
  if main_host:
    cli.prepare_workdir(workdir, config, "sample")
  methods = configlib.name_list(config.sample.methods)
  if not methods:
    raise ValueError(f"config.sample.methods is empty; choose one or more of {METHODS}")
  for m in methods:
    if m not in METHODS:
      raise ValueError(f"config.sample.methods: unknown method {m!r}; choose from {METHODS}")
  if int(config.sample.num_samples) < 1:
    raise ValueError(f"config.sample.num_samples must be >= 1, got {config.sample.num_samples}")
  # Bad discovery, output and evaluation settings fail before any work (inversion takes minutes).
  if settings.discovery_options(config).mode == "typical" and "discovery" in methods:
    settings.typical_options(config)
    check_typical_features(config)
    check_typical_fewshot(config)
  check_output_options(config)
  if config.sample.evaluate and settings.path_or_none(config.data.get("eval_dir")):
    from discovery_jax import evaluate

    evaluate.check_options(config)
  model = cli.load_model(config)
  mesh = parallel.local_mesh(settings.num_devices(config))
  runner = cli.make_runner(config, model, mesh)
  root = jax.random.key(int(config.seed))
  timings = {}

  t = time.time()
  if main_host:
    with cli.stage("inverting the banks"):
      banks = prepare_banks(
          settings.bank_sources(config),
          workdir,
          runner,
          model_fingerprint=model.fingerprint,
          key=jax.random.fold_in(root, KEY_ID_BANK),
      )
  parallel.sync_hosts("banks")
  if not main_host:
    banks = {"ood": LatentBank.open(bank_path(workdir, "ood"))}
    id_dir = "id" if settings.path_or_none(config.data.get("id_dir")) else "id_model"
    banks["id"] = LatentBank.open(bank_path(workdir, id_dir))
  timings["banks"] = round(time.time() - t, 3)
  physical = _physical(banks["ood"])

  results = {}
  # On accelerators the discovery kernel runs on every device; on a CPU XLA already
  # multithreads its matmuls and splitting it over host devices is slower.
  disc_mesh = mesh if jax.devices()[0].platform != "cpu" else None
  for method in methods:
    t = time.time()
    # Every host computes the same latents (deterministic); the main host stores them.
    with cli.stage(f"finding the {method} latents"):
      latents, record = (
          stage_latents(config, workdir, method, banks, root, disc_mesh, runner) if main_host else (None, None)
      )
    parallel.sync_hosts(f"latents-{method}")
    if not main_host:
      latents = np.load(os.path.join(_method_dir(workdir, method), "latents.npy"), mmap_mode="r")
    timings[f"{method}_latents"] = round(time.time() - t, 3)
    t = time.time()
    with cli.stage(f"denoising the {method} samples"):
      run = stage_images(config, workdir, method, latents, runner, root, model.fingerprint, physical)
    parallel.sync_hosts(f"images-{method}")
    timings[f"{method}_images"] = round(time.time() - t, 3)
    if main_host:
      with cli.stage(f"finishing the {method} dataset"):
        results[method] = {"latents": record, **finish_method(config, workdir, method, run["writer"], physical)}

  if not main_host:
    return
  evaluation_report = None
  if config.sample.evaluate and settings.path_or_none(config.data.get("eval_dir")):
    from discovery_jax import evaluate

    t = time.time()
    with cli.stage("evaluating the samples"):
      evaluation_report = evaluate.run_evaluation(config, workdir)
    timings["evaluation"] = round(time.time() - t, 3)
  timings["total"] = round(time.time() - start, 3)
  summary = build_summary(config, workdir, methods, results, banks, timings, evaluation_report, model.fingerprint)
  with cli.stage("writing the summary"):
    cli.write_json(os.path.join(workdir, "summary.json"), summary)
  first = methods[0]
  line = f"{first}: {summary['num_samples']} samples -> {_method_dir(workdir, first)}"
  if summary.get("acceptance_rate") is not None:
    line += f" (acceptance rate {summary['acceptance_rate']:.4f})"
  if summary.get("ood_hit_rate") is not None:
    line += f"; OOD hit rate {summary['ood_hit_rate']:.3f}"
  print(line)
  if evaluation_report:
    print(evaluation_report["table_markdown"])
  print(f"summary: {os.path.join(workdir, 'summary.json')}")


def build_summary(config, workdir, methods, results, banks, timings, evaluation_report, fingerprint) -> dict:
  first = methods[0]
  rec = results[first]["latents"]
  summary = {
      "num_samples": int(config.sample.num_samples),
      "methods": list(methods),
      "primary_method": first,
      "acceptance_rate": rec.get("acceptance_rate"),
      "candidates_per_second": rec.get("candidates_per_second"),
      "targets": rec.get("targets"),
      "seed": int(config.seed),
      "seeds": {
          "root": int(config.seed),
          "fold_in": {
              "discovery": KEY_DISCOVERY,
              "id_bank": KEY_ID_BANK,
              "eta_noise": KEY_NOISE,
              "baselines": KEY_BASELINE,
          },
      },
      "model_fingerprint": fingerprint,
      "config_name": config.get("name", ""),
      # The banks' t_0 (they share one): the configured integer, or what 'auto' found.
      "t_0": int(next(iter(banks.values())).metadata["t_0"]),
      "t_0_config": config.sampling.t_0,
      "n_steps": int(config.sampling.n_steps),
      "eta": float(config.sampling.eta),
      "banks": {
          k: {"path": b.path, "count": b.count, "source": b.metadata.get("source", b.metadata.get("source_folder"))}
          for k, b in banks.items()
      },
      "timings_seconds": timings,
      "devices": jax.device_count(),
      "processes": jax.process_count(),
      "outputs": {m: {k: v for k, v in r.items() if k != "latents"} for m, r in results.items()},
      "methods_detail": {m: r["latents"] for m, r in results.items()},
  }
  if evaluation_report:
    rows = {r["name"]: r for r in evaluation_report["rows"]}
    summary["evaluation"] = {
        "table_markdown": evaluation_report["table_markdown"],
        "rows": evaluation_report["rows"],
        "setup": evaluation_report["setup"],
    }
    if first in rows:
      summary["ood_hit_rate"] = rows[first].get("ood_hit_rate")
      summary["id_fallback_rate"] = rows[first].get("id_fallback_rate")
  return summary


if __name__ == "__main__":
  cli.run(main, "sample")
