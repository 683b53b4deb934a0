r"""Inverts folders of images into latent banks at t_0 (deterministic DDIM).

  python -m discovery_jax.invert --config=configs/galaxy.py --workdir=runs/galaxy

Writes ``WORKDIR/banks/ood`` from ``config.data.ood_dir`` and, when set,
``WORKDIR/banks/id`` from ``config.data.id_dir``. Each bank is written batch by
batch; rerunning with the same workdir skips what is already written.
"""

from __future__ import annotations

import os

import ml_collections

import jax

from discovery_jax import cli, settings
from discovery_jax.data.bank import prepare_banks


def build_banks(
    config: ml_collections.ConfigDict, workdir: str, model: cli.LoadedModel | None = None, mesh=None
) -> dict:
  """Inverts ``config.data.ood_dir`` (and ``id_dir`` when set); returns {name: LatentBank}."""
  model = model or cli.load_model(config)
  runner = cli.make_runner(config, model, mesh if mesh is not None else cli.make_mesh(config))
  return prepare_banks(
      settings.bank_sources(config),
      workdir,
      runner,
      model_fingerprint=model.fingerprint,
      key=jax.random.key(int(config.seed)),
      need_id=False,
  )


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  cli.prepare_workdir(workdir, config, "invert")
  banks = build_banks(config, workdir)
  summary = {
      name: {
          "path": b.path,
          "count": b.count,
          "t_0": b.metadata["t_0"],
          "n_steps": b.metadata["n_steps"],
          "skipped": b.metadata.get("skipped", []),
      }
      for name, b in banks.items()
  }
  cli.write_json(os.path.join(workdir, "invert_summary.json"), summary)
  for name, b in banks.items():
    print(f"bank {name}: {b.count} latents of shape {b.shape} at t_0={b.metadata['t_0']} -> {b.path}")


if __name__ == "__main__":
  cli.run(main, "invert")
