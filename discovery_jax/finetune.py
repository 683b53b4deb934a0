r"""The vanilla fine-tuning baseline: fine-tunes the frozen base model on the few-shot set.

  python -m discovery_jax.finetune --config=configs/demo.py --workdir=runs/demo_finetune

Loads ``config.checkpoint``, trains it on ``config.finetune.data`` (default:
``config.data.ood_dir``) with eps-prediction MSE and Adam — an optimizer step
every iteration and the loss on the eps output, which the official baseline got
wrong — and writes ``WORKDIR/model`` plus samples from pure noise. Unlike latent
discovery this changes the weights; ``evaluate`` compares the two.
"""

from __future__ import annotations

import ml_collections

import os

import jax
import numpy as np

from discovery_jax import checkpoint, cli, diffusion, fileio, settings
from discovery_jax.optim import trainer


def write_samples(config: ml_collections.ConfigDict, workdir: str, base: cli.LoadedModel) -> None:
  """Unconditional samples of the fine-tuned and of the base model, same noise per index."""
  count = int(config.finetune.get("num_samples") or 0)
  if count <= 0:
    return
  tuned_module, tuned_params = checkpoint.load_model(os.path.join(workdir, "model"))
  schedule = diffusion.Schedule.from_config(config.get("diffusion"))
  key = jax.random.key(int(config.get("seed", 0)))
  mesh = cli.make_mesh(config)
  for name, module, params in (("samples", tuned_module, tuned_params), ("base_samples", base.module, base.params)):
    x = trainer.sample_from_noise(
        module,
        params,
        count,
        schedule=schedule,
        n_steps=int(config.sampling.n_steps),
        key=key,
        batch_size=int(config.sampling.batch_size),
        mesh=mesh,
    )
    fileio.atomic_save_npy(os.path.join(workdir, f"{name}.npy"), x.astype(np.float32))


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  cli.prepare_workdir(workdir, config, "finetune")
  model = cli.load_model(config)
  data = settings.finetune_data(config)
  kind = model.model_config.get("prediction_type", "epsilon") or "epsilon"
  if kind != "epsilon":
    # The trainer's loss is the eps loss; training a v/x0 network on it would silently change what it predicts.
    raise ValueError(
        f"finetune trains with the eps loss, but {config.checkpoint} predicts {kind!r} (model.prediction_type): "
        "fine-tuning it is not supported"
    )
  summary = trainer.run(
      trainer.TrainOptions.from_mapping(config.finetune),
      workdir,
      params=model.params,
      model_config=model.model_config,
      data_source=data,
      image_options=settings.image_options(config),
      schedule=settings.sampling_options(config).schedule,
      preview_steps=int(config.sampling.n_steps),
      mesh=cli.make_mesh(config),
      metadata={
          "finetuned_from": config.checkpoint,
          "base_fingerprint": model.fingerprint,
          "trained_by": "discovery_jax.finetune",
      },
  )
  write_samples(config, workdir, model)
  print(f"fine-tuned {summary['steps']} steps, final loss {summary['final_loss']:.5f} -> {summary['model']}")


if __name__ == "__main__":
  cli.run(main, "finetune")
