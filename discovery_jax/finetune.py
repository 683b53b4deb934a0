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

from discovery_jax import cli, training


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  cli.prepare_workdir(workdir, config, "finetune")
  model = cli.load_model(config)
  data = config.finetune.get("data", "") or config.data.ood_dir
  if not data:
    raise ValueError("nothing to fine-tune on: set config.finetune.data or config.data.ood_dir")
  summary = training.run(config, workdir, section="finetune", params=model.params, model_config=model.model_config,
                         data_source=data, metadata={"finetuned_from": config.checkpoint,
                                                     "base_fingerprint": model.fingerprint,
                                                     "trained_by": "discovery_jax.finetune"})
  print(f"fine-tuned {summary['steps']} steps, final loss {summary['final_loss']:.5f} -> {summary['model']}")


if __name__ == "__main__":
  cli.run(main, "finetune")
