r"""Builds the embedded demo data from two datasets that ship inside PyPI wheels.

  pip install --no-deps animal-mnist==0.4 firstgalaxydata==0.2.1
  python -m discovery_jax.demo.prepare --train_out=runs/demo_data/id_train.npz

* In-domain (ID): Animal-MNIST (10,000 28x28 animal silhouettes, 10 classes, MIT),
  resized to 32x32 (LANCZOS). 20 per class are held out as ``id_heldout/`` PNGs;
  the other 9,800 go to ``--train_out`` (an .npz for ``python -m discovery_jax.train``).
* Out-of-domain (OOD): real FIRST radio galaxies from ``firstgalaxydata`` (the
  'all' split; the extended FRI, FRII and Bent classes), a central 72x72 crop of
  the 300x300 image, square-root stretched, resized to 32x32. A disjoint, seeded
  selection gives the few-shot set ``ood_fewshot/`` and the held-out evaluation
  set ``ood_heldout/``. FIRST images: (c) 1994 University of California, for
  scholarly, educational and private non-commercial use (see PROVENANCE.md).

The packages' own loaders need TensorFlow / torchvision; this reads their bundled
files directly (gzip-pickled uint8 arrays; a zip of PNGs) without importing them.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import io
import os
import pickle
import zipfile

import numpy as np
from PIL import Image

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo")
SIZE = 32
OOD_CLASSES = ("FRI", "FRII", "Bent")
CROP = 72


def package_dir(name: str) -> str:
  spec = importlib.util.find_spec(name)  # finds, does not import (their __init__ needs torch/TF).
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit(
        f"package {name} is not installed: pip install --no-deps "
        f"{'animal-mnist==0.4' if name == 'animal_mnist' else 'firstgalaxydata==0.2.1'}"
    )
  return list(spec.submodule_search_locations)[0]


def load_animals() -> tuple[np.ndarray, np.ndarray]:
  base = os.path.join(package_dir("animal_mnist"), "data", "Animal_MNIST")
  # The files are gzip-compressed pickles of plain numpy uint8 arrays (no code objects).
  with gzip.open(os.path.join(base, "animal_data_version_3.gz"), "rb") as f:
    data = np.asarray(pickle.load(f), np.uint8)
  with gzip.open(os.path.join(base, "animal_label_version_3.gz"), "rb") as f:
    labels = np.asarray(pickle.load(f), np.int64)
  if data.shape != (10000, 28, 28) or labels.shape != (10000,):
    raise SystemExit(f"unexpected Animal-MNIST arrays {data.shape} {labels.shape}")
  return data, labels


def resize(img: np.ndarray) -> np.ndarray:
  return np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.Resampling.LANCZOS), np.uint8)


def galaxy_image(png: bytes) -> np.ndarray:
  img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32) / 255.0
  c0 = (img.shape[0] - CROP) // 2
  crop = np.sqrt(np.clip(img[c0 : c0 + CROP, c0 : c0 + CROP], 0, 1))  # square-root display stretch.
  return resize((crop * 255).round().astype(np.uint8))


def load_galaxies() -> tuple[list[str], np.ndarray]:
  with zipfile.ZipFile(os.path.join(package_dir("firstgalaxydata"), "galaxy_data.zip")) as z:
    names = sorted(
        n for n in z.namelist() if n.endswith(".png") and n.split("/")[1] == "all" and n.split("/")[2] in OOD_CLASSES
    )
    return names, np.stack([galaxy_image(z.read(n)) for n in names])


def write_pngs(folder: str, images: np.ndarray, names: list[str]) -> None:
  os.makedirs(folder, exist_ok=True)
  for old in os.listdir(folder):
    if old.endswith(".png"):
      os.remove(os.path.join(folder, old))
  for img, name in zip(images, names):
    Image.fromarray(img).save(os.path.join(folder, name))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--train_out", default="runs/demo_data/id_train.npz", help="ID training set (.npz)")
  parser.add_argument("--assets", default=ASSETS, help="where the committed demo images go")
  parser.add_argument("--num_fewshot", type=int, default=32)
  parser.add_argument("--num_ood_heldout", type=int, default=256)
  parser.add_argument("--id_heldout_per_class", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)

  animals, labels = load_animals()
  animals = np.stack([resize(a) for a in animals])
  heldout = np.concatenate(
      [rng.permutation(np.flatnonzero(labels == c))[: args.id_heldout_per_class] for c in range(10)]
  )
  train = np.setdiff1d(np.arange(len(animals)), heldout)
  os.makedirs(os.path.dirname(os.path.abspath(args.train_out)), exist_ok=True)
  np.savez_compressed(args.train_out, images=animals[train][..., None], labels=labels[train])
  write_pngs(
      os.path.join(args.assets, "id_heldout"), animals[heldout], [f"animal_{labels[i]}_{i:05d}.png" for i in heldout]
  )

  names, galaxies = load_galaxies()
  order = rng.permutation(len(names))
  if args.num_fewshot + args.num_ood_heldout > len(order):
    raise SystemExit(f"only {len(order)} galaxies for {args.num_fewshot} + {args.num_ood_heldout}")
  few, held = order[: args.num_fewshot], order[args.num_fewshot : args.num_fewshot + args.num_ood_heldout]
  label = lambda i: f"{names[i].split('/')[2]}_{i:04d}.png"
  write_pngs(os.path.join(args.assets, "ood_fewshot"), galaxies[few], [label(i) for i in few])
  write_pngs(os.path.join(args.assets, "ood_heldout"), galaxies[held], [label(i) for i in held])
  print(
      f"ID: {len(train)} training silhouettes -> {args.train_out}; {len(heldout)} held out -> "
      f"{args.assets}/id_heldout\nOOD: {len(few)} few-shot and {len(held)} held-out radio galaxies "
      f"(of {len(names)} {'/'.join(OOD_CLASSES)}) -> {args.assets}/ood_fewshot, ood_heldout"
  )


if __name__ == "__main__":
  main()
