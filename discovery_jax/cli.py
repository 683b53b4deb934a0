"""What every entry point shares: ``--config``/``--workdir``, loading the base model
(checked against the config), the mesh, and clean error exits.

Entry points are thin: ``python -m discovery_jax.<name> --config=configs/x.py
--workdir=DIR [--config.a.b=value ...]``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable

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

# Problems with the user's input: reported as one line, without a traceback
# (set DISCOVERY_JAX_TRACEBACK=1 to see it).
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    checkpoint.CheckpointError,
    images.InputError,
    BankError,
    models.ModelConfigError,
)
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
  """Loads ``config.checkpoint``, refusing one whose network differs from ``config.model``."""
  ckpt = config.get("checkpoint", "")
  if not ckpt:
    raise checkpoint.CheckpointError(
        "config.checkpoint is empty: convert a PyTorch checkpoint with `python -m convert "
        "--torch_checkpoint=FILE --config=CONFIG --output=DIR`, then pass --config.checkpoint=DIR"
    )
  if not os.path.isdir(ckpt):
    raise checkpoint.CheckpointError(f"config.checkpoint={ckpt!r} does not exist")
  stored = models.validate(checkpoint.read_model_config(ckpt))
  wanted = config.get("model", ml_collections.ConfigDict()).to_dict()
  overrides = {k: wanted[k] for k in RUNTIME_MODEL_FIELDS if k in wanted}
  if any(k not in RUNTIME_MODEL_FIELDS for k in wanted):
    given = models.validate(wanted)
    diff = [k for k in stored if k not in RUNTIME_MODEL_FIELDS and given.get(k) != stored[k]]
    if diff:
      raise checkpoint.CheckpointError(
          f"checkpoint {ckpt} does not match config.model: "
          + "; ".join(f"{k}: checkpoint has {stored[k]!r}, config has {given.get(k)!r}" for k in diff)
      )
  module, params = checkpoint.load_model(ckpt, **overrides)
  fp = checkpoint.model_fingerprint(ckpt, params)
  return LoadedModel(module, params, fp, models.validate({**stored, **overrides}))


def make_mesh(config: ml_collections.ConfigDict):
  """The data-parallel mesh of ``config.parallel`` (all local devices by default)."""
  return parallel.make_mesh(settings.num_devices(config))


def make_runner(config: ml_collections.ConfigDict, model: LoadedModel, mesh=None):
  """The DDIM runner of ``config.sampling`` for ``model`` on ``mesh``."""
  from discovery_jax.runner import DDIMRunner

  s = settings.sampling_options(config)
  return DDIMRunner(model.eps, s.t_0, s.n_steps, s.schedule, s.batch_size, mesh)


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict, name: str) -> str:
  if not workdir:
    raise app.UsageError("--workdir=DIR is required")
  os.makedirs(workdir, exist_ok=True)
  fileio.atomic_write_json(os.path.join(workdir, f"{name}_config.json"), configlib.to_plain(config))
  return workdir


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
  """``app.run`` with --config/--workdir checks and one-line errors for bad input."""

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if CONFIG.value is None:
      raise app.UsageError("--config=configs/<file>.py is required")
    logging.set_verbosity(logging.INFO)
    use_host_devices_per_core()
    try:
      main(CONFIG.value, WORKDIR.value)
    except USER_ERRORS as e:
      if os.environ.get("DISCOVERY_JAX_TRACEBACK"):
        raise
      print(f"{name}: error: {e}", file=sys.stderr)
      sys.exit(1)

  app.run(_main)
