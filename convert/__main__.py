r"""Converts a PyTorch diffusion checkpoint into a discovery_jax (Flax/orbax) checkpoint.

  python -m convert --torch_checkpoint=afhqdog_p2.pt --config=configs/afhq.py --output=checkpoints/afhq
  python -m convert --diffusers=ddpm-church-256/ --output=checkpoints/church

The output folder holds the orbax parameter tree, the model config and
provenance; it loads later with ``discovery_jax.models.load(DIR)`` where torch
is not installed. Nothing is written unless the whole conversion succeeds.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from convert.writer import convert_checkpoint
from discovery_jax import checkpoint, models

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file whose `model` field describes the network (required for "
    "--torch_checkpoint; optional for --diffusers, whose config.json describes it).",
)
_TORCH = flags.DEFINE_string("torch_checkpoint", None, "A PyTorch state-dict file (.pt/.ckpt/.pth/.bin).")
_DIFFUSERS = flags.DEFINE_string("diffusers", None, "A diffusers UNet2DModel (or pipeline) folder.")
_OUTPUT = flags.DEFINE_string("output", None, "Checkpoint directory to write.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if bool(_TORCH.value) == bool(_DIFFUSERS.value):
    raise app.UsageError("give exactly one of --torch_checkpoint=FILE or --diffusers=FOLDER")
  if not _OUTPUT.value:
    raise app.UsageError("--output=DIR is required")
  model_config = _CONFIG.value.model if _CONFIG.value is not None else None
  try:
    summary = convert_checkpoint(
        _TORCH.value or _DIFFUSERS.value,
        _OUTPUT.value,
        model_config,
        diffusers=bool(_DIFFUSERS.value),
        overwrite=_OVERWRITE.value,
    )
  except (checkpoint.CheckpointError, models.ModelConfigError) as e:
    print(f"convert: error: {e}", file=sys.stderr)
    sys.exit(1)
  print(
      f"converted {summary['num_tensors']} tensors ({summary['num_params']:,} parameters, "
      f"arch={summary['arch']}) in {summary['seconds']} s -> {summary['output']}"
  )
  if _DIFFUSERS.value:
    cfg = checkpoint.read_model_config(summary["output"])
    where = summary["scheduler_config"] or "no scheduler config found: DDPMScheduler's defaults assumed"
    print(
        f"schedule: {cfg['beta_schedule']} ({cfg['beta_start']}..{cfg['beta_end']}, T={cfg['num_train_timesteps']}), "
        f"prediction_type={cfg['prediction_type']} ({where}); run with --config.checkpoint={summary['output']} "
        "(the checkpoint's own model config is used; docs/diffusers.md)"
    )


if __name__ == "__main__":
  app.run(main)
