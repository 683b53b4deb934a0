"""What every entry point shares: ``--config``/``--workdir``, loading the base model
(checked against the config), the mesh, one lock per workdir, quiet logs and
one-line errors.

Entry points are thin: ``python -m discovery_jax.<name> --config=configs/x.py
--workdir=DIR [--config.a.b=value ...]``. Bad input (an unknown config key, a bad
value, a missing folder), a workdir another run is using, a full disk or a
read-only directory end the run with one line on stderr and exit status 1
(``DISCOVERY_JAX_TRACEBACK=1`` shows the traceback). Logs are quiet by default: this
package's progress and stage lines, one line each, no library notices; ``--verbosity=0``
gives the full absl log of every library, ``--verbosity=1`` adds debug details.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import json
import logging as std_logging
import os
import re
import socket
import sys
import time
from typing import Any, Callable, Iterator

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from discovery_jax import checkpoint, configlib, diffusion, fileio, models, parallel, settings
from discovery_jax.data import images
from discovery_jax.data.bank import BankError

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py); any field can be overridden as --config.a.b=value.", lock_config=True
)
WORKDIR = flags.DEFINE_string("workdir", None, "Output directory; rerunning with the same one resumes.")


class WorkdirBusyError(RuntimeError):
  """Another run holds the lock of the workdir."""


# Problems with the user's input: reported as one line, without a traceback
# (set DISCOVERY_JAX_TRACEBACK=1 to see it).
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    checkpoint.CheckpointError,
    images.InputError,
    BankError,
    models.ModelConfigError,
    WorkdirBusyError,
    app.UsageError,
)
LOCK_FILE = ".discovery_jax.lock"
# Entry points whose rerun resumes from what is on disk (the rest recompute what they need).
RESUMING = ("sample", "invert")
# Fields that may differ between a checkpoint and the config (no effect on the weights).
RUNTIME_MODEL_FIELDS = ("dtype", "precision")


@dataclasses.dataclass
class LoadedModel:
  module: Any
  params: Any
  fingerprint: str
  model_config: dict

  @property
  def eps(self) -> diffusion.EpsFn:
    return diffusion.eps_fn(self.module, self.params)


def load_model(config: ml_collections.ConfigDict) -> LoadedModel:
  """Loads ``config.checkpoint`` with the model config stored beside its weights.

  ``config.model`` may be absent or empty (the checkpoint's own config is used and
  written into ``config.model``), hold only runtime fields (``dtype``, ``precision``),
  or describe the network, which must then be the checkpoint's. A DDPM checkpoint's training schedule must be the run's
  ``config.diffusion`` (what DDIM will use); a mismatch is refused with the flags to pass.
  """
  ckpt = config.get("checkpoint", "") or ""
  if not ckpt:
    raise checkpoint.CheckpointError(
        "config.checkpoint is empty: convert a model first (`python -m convert --torch_checkpoint=FILE "
        "--config=CONFIG --output=DIR` or `python -m convert --diffusers=FOLDER --output=DIR`), then pass "
        "--config.checkpoint=DIR"
    )
  if not os.path.isdir(ckpt):
    raise checkpoint.CheckpointError(f"config.checkpoint={ckpt!r} does not exist")
  stored = models.validate(checkpoint.read_model_config(ckpt))
  wanted = config.get("model", None)
  wanted = wanted.to_dict() if hasattr(wanted, "to_dict") else dict(wanted or {})
  wanted = {k: v for k, v in wanted.items() if v is not None or k in RUNTIME_MODEL_FIELDS}
  overrides = {k: wanted[k] for k in RUNTIME_MODEL_FIELDS if k in wanted}
  if any(k not in RUNTIME_MODEL_FIELDS for k in wanted):
    _check_same_network(ckpt, stored, wanted)
  _check_same_schedule(ckpt, stored, config.get("diffusion", None))
  module, params = checkpoint.load_model(ckpt, **overrides)
  fp = checkpoint.model_fingerprint(ckpt, params)
  model_config = models.validate({**stored, **overrides})
  if not any(k not in RUNTIME_MODEL_FIELDS for k in wanted) and hasattr(config, "unlocked"):
    # config.model held no network: fill it from the checkpoint, so that what reads
    # config.model later (image size, channels) follows the checkpoint.
    with config.unlocked():
      config.model = ml_collections.ConfigDict(model_config)
  return LoadedModel(module, params, fp, model_config)


def _check_same_network(ckpt: str, stored: dict, wanted: dict) -> None:
  """One line, leading with the field that differs (the family first)."""
  if wanted.get("arch", stored["arch"]) != stored["arch"]:
    raise checkpoint.CheckpointError(
        f"checkpoint {ckpt} was converted for arch={stored['arch']!r} but config.model.arch={wanted['arch']!r} "
        "(another model family); drop config.model to use the checkpoint's own model config"
    )
  try:
    given = models.validate({"arch": stored["arch"], **wanted})
  except models.ModelConfigError as e:
    raise models.ModelConfigError(
        f"config.model does not describe a network ({e}); drop config.model to use checkpoint {ckpt}'s own"
    ) from None
  skip = set(RUNTIME_MODEL_FIELDS) | {k for k in models.config.DIFFUSION_FIELDS if k not in wanted}
  diff = [k for k in stored if k not in skip and given.get(k) != stored[k]]
  order = models.config.DDPM_REQUIRED + models.config.IDDPM_REQUIRED  # the constructor's fields first.
  diff.sort(key=lambda k: order.index(k) if k in order else len(order))
  if diff:
    shown = "; ".join(f"{k}: checkpoint has {stored[k]!r}, config has {given.get(k)!r}" for k in diff[:3])
    more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
    raise checkpoint.CheckpointError(
        f"checkpoint {ckpt} does not match config.model: {shown}{more}; drop config.model to use the "
        "checkpoint's own model config"
    )


def _check_same_schedule(ckpt: str, stored: dict, diffusion_config: Any) -> None:
  """A DDPM checkpoint records the betas it was trained with; DDIM must use the same."""
  if stored.get("beta_schedule") is None:  # not recorded (iDDPM, PyTorch conversions, `train`).
    return
  get = (lambda k, d: diffusion_config.get(k, d)) if diffusion_config is not None else (lambda k, d: d)
  kind = diffusion.canonical_schedule(stored["beta_schedule"])
  want = {"beta_schedule": kind, "num_timesteps": int(stored["num_train_timesteps"])}
  have = {
      "beta_schedule": diffusion.canonical_schedule(get("beta_schedule", "linear")),
      "num_timesteps": int(get("num_timesteps", 1000)),
  }
  if kind != "cosine":  # the cosine schedule has no beta_start / beta_end.
    want.update(beta_start=float(stored["beta_start"]), beta_end=float(stored["beta_end"]))
    have.update(beta_start=float(get("beta_start", 1e-4)), beta_end=float(get("beta_end", 0.02)))
  diff = [k for k in want if want[k] != have[k]]
  if diff:
    k = diff[0]
    flags_ = " ".join(f"--config.diffusion.{k}={want[k]}" for k in diff)
    raise checkpoint.CheckpointError(
        f"checkpoint {ckpt} was trained with diffusion.{k}={want[k]!r} (from {stored['beta_schedule']!r}) but "
        f"config.diffusion.{k}={have[k]!r}: pass {flags_}"
    )


def make_mesh(config: ml_collections.ConfigDict):
  """The data-parallel mesh of ``config.parallel`` (all local devices by default)."""
  return parallel.make_mesh(settings.num_devices(config))


def make_runner(config: ml_collections.ConfigDict, model: LoadedModel, mesh=None):
  """The DDIM runner of ``config.sampling`` for ``model`` on ``mesh``; with
  ``sampling.t_0='auto'``, at the t_0 found from the few-shot images (``runner.bandwidth``
  then holds the search)."""
  from discovery_jax.runner import DDIMRunner

  s = settings.sampling_options(config)
  search = None
  if s.t_0 is None:
    search = find_auto_t0(config, model, s, mesh)
    s = s.with_t0(search.t_0)
  return DDIMRunner(model.eps, s.t_0, s.n_steps, s.schedule, s.batch_size, mesh, bandwidth=search)


def find_auto_t0(config: ml_collections.ConfigDict, model: LoadedModel, options: settings.SamplingOptions, mesh=None):
  """``sampling.t_0='auto'``: the largest t_0 at which the few-shot images of
  ``data.ood_dir`` still reconstruct (``discovery.bandwidth``)."""
  from discovery_jax.data.inputs import open_inputs
  from discovery_jax.discovery import bandwidth
  from discovery_jax.runner import DDIMRunner

  folder = settings.path_or_none(config.data.get("ood_dir"))
  if folder is None:
    raise ValueError("sampling.t_0='auto' reconstructs the few-shot images: set config.data.ood_dir")
  scan = open_inputs(folder, settings.input_options(config))
  images = scan.load(list(range(min(len(scan.items), options.bandwidth.max_images))))

  def valid(t: int) -> bool:
    return options.n_steps <= t + 1 and t <= options.schedule.num_timesteps - 1

  def reconstruct(t: int, x):
    runner = DDIMRunner(model.eps, t, options.n_steps, options.schedule, options.batch_size, mesh)
    return runner.generate(runner.invert(x))

  search = bandwidth.find_t0(images, reconstruct, options.bandwidth, valid)
  logging.info("%s", search.describe())
  return search


_LOCKS: dict[str, int] = {}  # realpath of a workdir -> the open file descriptor holding its lock


def _lock_holder(fd: int) -> str:
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (OSError, ValueError):
    info = {}
  if not info.get("pid"):
    return "another process (pid not recorded yet)"
  return f"pid {info['pid']} on host {info.get('host', '?')} ({info.get('entry', '?')}, since {info.get('since', '?')})"


def lock_workdir(workdir: str, name: str) -> None:
  """Takes the exclusive lock of ``workdir`` (``flock`` on ``WORKDIR/.discovery_jax.lock``) for
  this process, or raises WorkdirBusyError naming the holder's pid. The kernel releases it when
  the process ends, however it ends; ``release_workdirs`` releases it earlier."""
  key = os.path.realpath(workdir)
  if key in _LOCKS:
    return
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise fileio.as_disk_error(e, path) from e
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      os.close(fd)  # a file system without flock: run unlocked, and say so.
      logging.warning("%s: cannot lock the workdir (%s); make sure no other run uses it", workdir, e)
      return
    holder = _lock_holder(fd)
    os.close(fd)
    raise WorkdirBusyError(
        f"workdir {workdir} is in use by {holder}; wait for that run to finish or use another --workdir "
        "(nothing was changed)"
    ) from None
  record = {
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "entry": name,
      "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
  }
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(record).encode(), 0)
  _LOCKS[key] = fd


def release_workdirs() -> None:
  """Releases every workdir lock this process holds."""
  while _LOCKS:
    _, fd = _LOCKS.popitem()
    with contextlib.suppress(OSError):
      os.close(fd)


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict, name: str) -> str:
  """Creates and locks ``workdir``, removes temporary files an interrupted run left there,
  and records the config. Every entry point that writes a workdir calls it first."""
  if not workdir:
    raise app.UsageError("--workdir=DIR is required")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise fileio.as_disk_error(e, workdir) from e
  lock_workdir(workdir, name)
  removed = fileio.remove_stale_temporaries(workdir)
  if removed:
    logging.info("removed %d temporary file(s) an interrupted run left (%s)", len(removed), removed[0])
  fileio.atomic_write_json(os.path.join(workdir, f"{name}_config.json"), configlib.to_plain(config))
  return workdir


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
  """Names the stage an error escaped from (``error_line`` reports it)."""
  try:
    yield
  except BaseException as e:
    if getattr(e, "discovery_stage", None) is None:
      with contextlib.suppress(AttributeError, TypeError):
        e.discovery_stage = what
    raise


def error_line(e: BaseException, name: str) -> str | None:
  """The one line that reports ``e`` to the user, or None when it deserves a traceback (a bug)."""
  from discovery_jax.data.dataset import ShardWriteError

  where = f" while {e.discovery_stage}" if getattr(e, "discovery_stage", None) else ""
  rerun = "rerun the same command to resume" if name in RESUMING else "then rerun the same command"
  if isinstance(e, ShardWriteError):
    return f"{name}: error{where}: {e.strerror or e}"
  problem = fileio.disk_problem(e)
  if problem is not None:
    fix = "free space" if problem == fileio.NO_SPACE else "make it writable (or use another --workdir)"
    what = e.filename or "a file (the operating system did not say which)"
    return (
        f"{name}: error{where}: cannot write {what}: {problem}; files already complete are kept "
        f"(partial ones are never left under a final name): {fix}, {rerun}"
    )
  if isinstance(e, USER_ERRORS):
    return f"{name}: error{where}: {e}"
  return None


# --------------------------------------------------------------------------- flags and logs

_DID_YOU_MEAN = re.compile(r'Did you mean \\?"([^"\\]+)\\?" instead of \\?"([^"\\]+)\\?"')


def config_error_line(e: BaseException, argv: list[str]) -> str:
  """One line for a config override that does not apply (an unknown key, a bad value)."""
  text = str(e)
  overrides = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  m = _DID_YOU_MEAN.search(text)
  bad = m.group(2) if m else (re.findall(r"[A-Za-z_]\w*", text) or [None])[0]
  if isinstance(e, (AttributeError, KeyError)) and bad:
    for path in overrides:
      parts = path.split(".")
      if bad in parts:
        i = parts.index(bad)
        line = f"unknown config key {'.'.join(parts[: i + 1])}"
        if m:
          line += f" (did you mean {'.'.join(parts[:i] + [m.group(1)])}?)"
        return line + f" in --config.{path}; nothing was run"
  text = " ".join(text.replace("\\n", " ").split()) or type(e).__name__
  if not isinstance(e, flags.Error):  # raised while executing the config file or applying an override.
    config = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "?")
    text = f"--config={config} cannot be loaded: {type(e).__name__}: {text}"
  return f"{text}; nothing was run"


def _parse_flags(argv: list[str], name: str) -> list[str]:
  """absl's flag parsing, with every failure (config overrides included) as one line."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # flags.Error, and the AttributeError/KeyError of a config override.
    if os.environ.get("DISCOVERY_JAX_TRACEBACK"):
      raise
    print(f"{name}: error: {config_error_line(e, argv)}", file=sys.stderr)
    sys.exit(1)


class _QuietFilter(std_logging.Filter):
  """Lets through this package's lines and everyone's errors (not the libraries' notices)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.ERROR:
      return True
    path = (record.pathname or "").replace(os.sep, "/")
    return record.levelno >= std_logging.INFO and "/discovery_jax/" in path


class _LineFormatter(std_logging.Formatter):
  """``name: message`` / ``name: warning: message`` (one line)."""

  def __init__(self, name: str):
    super().__init__()
    self.entry = name

  def format(self, record: std_logging.LogRecord) -> str:
    level = "" if record.levelno == std_logging.INFO else f"{record.levelname.lower()}: "
    return f"{self.entry}: {level}{' '.join(record.getMessage().splitlines())}"


def configure_logging(name: str) -> bool:
  """Quiet logs unless ``--verbosity``/``-v`` is given: this package's own lines (progress,
  one line per stage, warnings) as ``name: ...``, no library notices (jax's platform probing,
  tfds, OpenCV), no absl prefixes. Returns True when the full log was asked for.
  Called by ``run``, never at import."""
  if flags.FLAGS["verbosity"].present:
    return True
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  logging.set_verbosity(logging.INFO)
  std_logging.getLogger("jax").setLevel(std_logging.WARNING)  # its platform probing ("Unable to initialize backend")
  handler = logging.get_absl_handler()
  handler.addFilter(_QuietFilter())
  handler.setFormatter(_LineFormatter(name))
  return False


write_json = fileio.atomic_write_json


def use_host_devices_per_core() -> None:
  """One XLA host device per CPU core, set before jax starts its backends.

  XLA:CPU runs each convolution on about one core, so on a CPU machine the
  data-parallel mesh over host devices is what uses every core. Accelerator
  machines are unaffected: the mesh takes the default backend's devices.
  DISCOVERY_JAX_CPU_DEVICES=N sets the count (1 turns it off); an explicit
  ``--xla_force_host_platform_device_count`` in XLA_FLAGS always wins. Called by
  ``run``, never at import: a library user's device count is theirs.
  """
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return
  count = int(os.environ.get("DISCOVERY_JAX_CPU_DEVICES", os.cpu_count() or 1))
  if count > 1:
    import jax

    try:
      jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # a backend already started (e.g. run from a test process): keep it.
      pass


def run(main: Callable[[ml_collections.ConfigDict, str], Any], name: str) -> None:
  """``app.run`` with --config/--workdir checks, quiet logs, a workdir lock (taken by
  ``prepare_workdir``) and one-line errors for bad input, a busy workdir and disk faults."""

  def _main(argv):
    configure_logging(name)
    try:
      if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
      config = CONFIG.value
      if config is None:
        raise app.UsageError("--config=configs/<file>.py is required")
      if not isinstance(config, ml_collections.ConfigDict):  # the config file failed to load.
        try:
          config.get("name")
        except Exception as e:
          path = config_flags.get_config_filename(flags.FLAGS["config"])
          if not os.path.isfile(path.split(":", 1)[0]):
            raise app.UsageError(f"--config: config file {path} does not exist") from None
          raise app.UsageError(f"--config={path} cannot be loaded: {' '.join(str(e).split())}") from None
      use_host_devices_per_core()
      main(config, WORKDIR.value)
    except KeyboardInterrupt:
      if os.environ.get("DISCOVERY_JAX_TRACEBACK"):
        raise
      rerun = "rerun the same command to resume" if name in RESUMING else "rerun the same command"
      print(f"{name}: interrupted; files already complete are kept: {rerun}", file=sys.stderr)
      sys.exit(130)
    except BaseException as e:
      line = error_line(e, name) if isinstance(e, Exception) else None
      if line is None or os.environ.get("DISCOVERY_JAX_TRACEBACK"):
        raise
      print(line, file=sys.stderr)
      sys.exit(1)
    finally:
      release_workdirs()

  app.run(_main, flags_parser=functools.partial(_parse_flags, name=name))
