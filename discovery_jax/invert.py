r"""Inverts folders of images into latent banks at t_0 (deterministic DDIM).

  python -m discovery_jax.invert --config=configs/galaxy.py --workdir=runs/galaxy

Writes ``WORKDIR/banks/ood`` from ``config.data.ood_dir`` and, when set,
``WORKDIR/banks/id`` from ``config.data.id_dir``. Each bank is written batch by
batch; rerunning with the same workdir skips what is already written.
"""

from __future__ import annotations

import os

import ml_collections
from absl import logging

from discovery_jax import cli, diffusion, inversion

BANK_SOURCES = (("ood", "ood_dir"), ("id", "id_dir"))


def bank_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, "banks", name)


def build_banks(config: ml_collections.ConfigDict, workdir: str, model: cli.LoadedModel | None = None,
                mesh=None) -> dict:
  """Inverts every configured folder; returns {name: LatentBank}."""
  model = model or cli.load_model(config)
  s = cli.sampling_settings(config)
  runner = inversion.DDIMRunner(model.eps, s["t_0"], s["n_steps"], diffusion.Schedule.from_config(config.diffusion),
                                s["batch_size"], mesh if mesh is not None else cli.make_mesh(config))
  banks = {}
  for name, field in BANK_SOURCES:
    folder = config.data.get(field, "")
    if not folder:
      continue
    inputs = inversion.open_inputs(folder, config)
    if inputs.skipped:
      logging.warning("invert %s: skipping %d unreadable file(s): %s", name, len(inputs.skipped),
                      ", ".join(s["path"] for s in inputs.skipped[:5]))
    banks[name] = inversion.invert_inputs(inputs, bank_path(workdir, name), runner,
                                          model_fingerprint=model.fingerprint, source=folder, desc=f"invert {name}")
  if not banks:
    raise ValueError("nothing to invert: set config.data.ood_dir (and optionally config.data.id_dir)")
  return banks


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  cli.prepare_workdir(workdir, config, "invert")
  banks = build_banks(config, workdir)
  summary = {name: {"path": b.path, "count": b.count, "t_0": b.metadata["t_0"], "n_steps": b.metadata["n_steps"],
                    "skipped": b.metadata.get("skipped", [])} for name, b in banks.items()}
  cli.write_json(os.path.join(workdir, "invert_summary.json"), summary)
  for name, b in banks.items():
    print(f"bank {name}: {b.count} latents of shape {b.shape} at t_0={b.metadata['t_0']} -> {b.path}")


if __name__ == "__main__":
  cli.run(main, "invert")
