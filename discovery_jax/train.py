r"""Trains a base diffusion model from scratch (eps prediction, Adam, EMA).

  python -m discovery_jax.train --config=configs/demo_base.py --workdir=runs/demo_base

Reads ``config.train`` (data, steps, batch size, learning rate, warm-up, clipping,
EMA) and ``config.model``; writes ``WORKDIR/model`` (usable as
``--config.checkpoint``), samples, the loss curve and the log. Rerunning the same
command after a kill resumes from the newest checkpoint.
"""

from __future__ import annotations

import jax
import ml_collections

from discovery_jax import cli, models, settings
from discovery_jax.optim import trainer


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  cli.prepare_workdir(workdir, config, "train")
  if not config.train.data:
    raise ValueError("config.train.data is empty: give a folder of images or an .npz with 'images'")
  model_config = models.validate(config.model)
  module = models.create_model(model_config)
  params = models.init_params(module, jax.random.key(int(config.train.get("seed", 0))))
  summary = trainer.run(
      trainer.TrainOptions.from_mapping(config.train),
      workdir,
      params=params,
      model_config=model_config,
      data_source=config.train.data,
      image_options=settings.image_options(config),
      schedule=settings.sampling_options(config).schedule,
      preview_steps=int(config.sampling.n_steps),
      mesh=cli.make_mesh(config),
      metadata={"trained_by": "discovery_jax.train"},
  )
  print(f"trained {summary['steps']} steps, final loss {summary['final_loss']:.5f} -> {summary['model']}")


if __name__ == "__main__":
  cli.run(main, "train")
