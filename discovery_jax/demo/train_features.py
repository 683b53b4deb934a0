r"""Trains the project's learned feature network on labelled data that ships inside PyPI wheels.

  pip install --no-deps animal-mnist==0.4 firstgalaxydata==0.2.1
  pip install --no-deps --target=_pkgs scikit-image==0.26.0   # only its bundled image files are read
  python -m discovery_jax.demo.train_features --out_dir=discovery_jax/assets/feature_net \
      --skimage_data_dir=_pkgs/skimage/data

Classes: the 10 Animal-MNIST silhouettes, the 4 FIRST radio-galaxy morphologies and patch
classes cut from a few scikit-image sample photographs. Every image the embedded demo
evaluates on (re-derived exactly as ``discovery_jax/demo/prepare.py`` selects it) is
excluded, and so is every nearly flat image: a constant image carries no domain
information, and the domain judge must be free to call it "neither". The images of the
project's method benchmark (sklearn digits; scikit-image brick, grass, gravel,
hubble_deep_field, retina, ihc) are never read, so that benchmark tests unseen domains.

Writes ``weights.npz`` and ``feature_net.json`` through ``discovery_jax.metrics.feature_net``;
the numbers of a run are in ``TRAINING.md`` next to them.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import importlib.util
import io
import os
import pickle
import shlex
import sys
import time
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from discovery_jax.metrics import feature_net

SIZE = 32
DEMO_ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo")
DEMO_OOD_CLASSES = ("FRI", "FRII", "Bent")  # prepare.py's OOD_CLASSES, in its order.
GALAXY_CLASSES = ("FRI", "FRII", "Compact", "Bent")
GALAXY_CROP = 72
# (class name, bundled file, augmentation, licence as stated in scikit-image's data docstrings).
PATCH_SOURCES = (
    ("moon", "moon.png", "dihedral", "no statement in skimage.data; ships under the wheel's BSD-3-Clause"),
    ("coins", "coins.png", "dihedral", "Brooklyn Museum; no known copyright restrictions"),
    ("text", "text.png", "shift", "Wikipedia File:Corner.png; public domain"),
    ("camera", "camera.png", "hflip", "CC0 (Lav Varshney)"),
    ("page", "page.png", "shift", "no statement in skimage.data; ships under the wheel's BSD-3-Clause"),
    ("astronaut", "astronaut.png", "hflip", "NASA; public domain"),
    ("chelsea", "chelsea.png", "hflip", "CC0 (Stefan van der Walt)"),
    ("coffee", "coffee.png", "hflip", "CC0 (Rachel Michetti)"),
    ("rocket", "rocket.jpg", "hflip", "SpaceX; public domain"),
)
AUGMENTATIONS = ("shift", "hflip", "dihedral")  # Each also includes +-2 pixel shifts.
PATCH_TEST_FRACTION = 0.2  # Right-most fraction of columns that only test patches come from.


class Dataset(NamedTuple):
  """uint8 (N, 32, 32) images, labels, test flags and per-class facts."""

  images: np.ndarray
  labels: np.ndarray
  is_test: np.ndarray
  class_names: list[str]
  class_groups: list[str]
  class_aug: list[str]
  dropped_flat: dict[str, int]
  provenance: dict


# ---------------------------------------------------------------------------
# Reading the bundled files (without importing the packages: their loaders need TF / torch).


def package_dir(name: str) -> str:
  """Finds an installed package's folder without importing it."""
  spec = importlib.util.find_spec(name)
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit(f"package {name} is not installed (pip install --no-deps ...)")
  return list(spec.submodule_search_locations)[0]


def version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def skimage_version(data_dir: str) -> str | None:
  """Reads the dist-info next to the data folder, since scikit-image itself is never imported."""
  site = os.path.dirname(os.path.dirname(os.path.abspath(data_dir)))
  infos = [d for d in os.listdir(site) if d.startswith("scikit_image-") and d.endswith(".dist-info")]
  return infos[0][len("scikit_image-") : -len(".dist-info")] if len(infos) == 1 else version("scikit-image")


def resize(img: np.ndarray) -> np.ndarray:
  return np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.Resampling.LANCZOS), np.uint8)


def load_animals() -> tuple[np.ndarray, np.ndarray]:
  """Silhouettes resized 28 -> 32 exactly as the demo does."""
  base = os.path.join(package_dir("animal_mnist"), "data", "Animal_MNIST")
  # Gzip-compressed pickles of plain uint8 arrays (the package's own format; no code objects).
  with gzip.open(os.path.join(base, "animal_data_version_3.gz"), "rb") as f:
    data = np.asarray(pickle.load(f), np.uint8)
  with gzip.open(os.path.join(base, "animal_label_version_3.gz"), "rb") as f:
    labels = np.asarray(pickle.load(f), np.int64)
  if data.shape != (10000, 28, 28) or labels.shape != (10000,):
    raise SystemExit(f"unexpected Animal-MNIST arrays {data.shape} {labels.shape}")
  return np.stack([resize(a) for a in data]), labels


def galaxy_image(png: bytes) -> np.ndarray:
  """The demo's processing: central crop, square-root stretch, LANCZOS to 32x32."""
  img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32) / 255.0
  c0 = (img.shape[0] - GALAXY_CROP) // 2
  crop = np.sqrt(np.clip(img[c0 : c0 + GALAXY_CROP, c0 : c0 + GALAXY_CROP], 0, 1))
  return resize((crop * 255).round().astype(np.uint8))


def load_galaxies() -> tuple[list[str], np.ndarray]:
  """All four classes of the 'all' split, sorted by zip path."""
  with zipfile.ZipFile(os.path.join(package_dir("firstgalaxydata"), "galaxy_data.zip")) as z:
    names = sorted(
        n for n in z.namelist() if n.endswith(".png") and n.split("/")[1] == "all" and n.split("/")[2] in GALAXY_CLASSES
    )
    return names, np.stack([galaxy_image(z.read(n)) for n in names])


def demo_exclusions(
    animal_labels: np.ndarray,
    galaxy_names: list[str],
    seed: int = 0,
    id_per_class: int = 20,
    num_fewshot: int = 32,
    num_ood_heldout: int = 256,
):
  """Re-derives prepare.py's seeded selection (same RNG calls, same order) so it can be excluded.

  Returns the excluded animal indices, the excluded galaxy zip paths and the PNG names
  prepare.py gives them, to compare with the committed assets.
  """
  rng = np.random.default_rng(seed)
  id_held = np.concatenate([rng.permutation(np.flatnonzero(animal_labels == c))[:id_per_class] for c in range(10)])
  ood_names = [n for n in galaxy_names if n.split("/")[2] in DEMO_OOD_CLASSES]  # Still sorted, as in prepare.py.
  ood_used = rng.permutation(len(ood_names))[: num_fewshot + num_ood_heldout]
  id_pngs = [f"animal_{animal_labels[i]}_{i:05d}.png" for i in id_held]
  ood_pngs = [f"{ood_names[i].split('/')[2]}_{i:04d}.png" for i in ood_used]
  return id_held, {ood_names[i] for i in ood_used}, id_pngs, ood_pngs


def check_against_assets(assets_dir: str, id_pngs: list[str], ood_pngs: list[str]) -> None:
  """Fails when the re-derived selection drifts from the committed demo PNGs."""

  def listed(*subs):
    return sorted(p for s in subs for p in os.listdir(os.path.join(assets_dir, s)) if p.endswith(".png"))

  if sorted(id_pngs) != listed("id_heldout"):
    raise SystemExit("re-derived id_heldout selection differs from the committed demo assets")
  if sorted(ood_pngs) != listed("ood_fewshot", "ood_heldout"):
    raise SystemExit("re-derived ood selection differs from the committed demo assets")


def image_patches(img: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
  """Random square crops of 32..64 px resized to 32x32, so each class covers two scales."""
  h, w = img.shape
  out = []
  for _ in range(count):
    s = int(rng.integers(32, 65))
    y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    out.append(resize(np.ascontiguousarray(img[y : y + s, x : x + s])))
  return np.stack(out)


def available_patch_sources(data_dir: str) -> list[tuple[str, str, str, str]]:
  """The patch sources bundled in this wheel; a missing one is skipped, loudly."""
  found = [src for src in PATCH_SOURCES if os.path.isfile(os.path.join(data_dir, src[1]))]
  for src in PATCH_SOURCES:
    if src not in found:
      print(f"skipping patch class {src[0]}: {src[1]} is not bundled in {data_dir}", flush=True)
  return found


def patch_class(
    data_dir: str, fname: str, per_class: int, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """Grayscale (ITU-R 601 luma) crops; test crops come from a spatially disjoint right strip."""
  img = np.asarray(Image.open(os.path.join(data_dir, fname)).convert("L"), np.uint8)
  cut = int(round(img.shape[1] * (1 - PATCH_TEST_FRACTION)))
  num_test = int(round(per_class * test_fraction))
  train = image_patches(img[:, :cut], per_class - num_test, rng)
  test = image_patches(img[:, cut:], num_test, rng)
  return np.concatenate([train, test]), np.r_[np.zeros(len(train), bool), np.ones(len(test), bool)]


def is_flat(images: np.ndarray, min_std: float) -> np.ndarray:
  """Images whose uint8 pixel std is below ``min_std``: blank or nearly constant."""
  return images.reshape(len(images), -1).astype(np.float32).std(axis=1) < min_std


def build_dataset(skimage_data_dir: str, args: argparse.Namespace) -> Dataset:
  """Every class with demo images and flat images removed, then a seeded per-class test split."""
  rng = np.random.default_rng(args.seed)
  images, labels, is_test, names, groups, augs, dropped = [], [], [], [], [], [], {}

  def split(n):
    mask = np.zeros(n, bool)
    mask[rng.permutation(n)[: int(round(n * args.test_fraction))]] = True
    return mask

  def add_class(name, group, aug, imgs, test_mask=None):
    flat = is_flat(imgs, args.min_std)
    dropped[name] = int(flat.sum())
    imgs = imgs[~flat]
    test_mask = split(len(imgs)) if test_mask is None else test_mask[~flat]
    names.append(name), groups.append(group), augs.append(aug)
    images.append(imgs), labels.append(np.full(len(imgs), len(names) - 1)), is_test.append(test_mask)

  animals, animal_labels = load_animals()
  galaxy_names, galaxies = load_galaxies()
  id_held, ood_excluded, id_pngs, ood_pngs = demo_exclusions(animal_labels, galaxy_names)
  if args.demo_assets:
    check_against_assets(args.demo_assets, id_pngs, ood_pngs)
  keep_animal = np.setdiff1d(np.arange(len(animals)), id_held)
  for c in range(10):
    add_class(f"animal_{c}", "animal", "hflip", animals[keep_animal[animal_labels[keep_animal] == c]])
  galaxy_class = np.array([n.split("/")[2] for n in galaxy_names])
  keep_galaxy = np.array([n not in ood_excluded for n in galaxy_names])
  for c in GALAXY_CLASSES:
    add_class(f"galaxy_{c}", "galaxy", "dihedral", galaxies[(galaxy_class == c) & keep_galaxy])
  sources = available_patch_sources(skimage_data_dir)
  for name, fname, aug, _ in sources:
    add_class(
        f"patch_{name}",
        "patch",
        aug,
        *patch_class(skimage_data_dir, fname, args.patches_per_class, args.test_fraction, rng),
    )

  provenance = {
      "animal-mnist": "data/Animal_MNIST/animal_{data,label}_version_3.gz, 28->32 LANCZOS; licence MIT",
      "firstgalaxydata": (
          "galaxy_data.zip 'all' split, classes FRI/FRII/Compact/Bent; central 72x72 crop, sqrt "
          "stretch, LANCZOS to 32x32 (as demo/prepare.py); FIRST images (c) 1994 University of "
          "California, for scholarly, educational and private non-commercial use"
      ),
      "scikit-image": {
          "files": {f"patch_{n}": {"file": f, "licence": lic} for n, f, _, lic in sources},
          "processing": (
              f"grayscale (PIL 'L'), {args.patches_per_class} random 32..64 px square crops per image "
              f"resized to 32x32 (LANCZOS); test crops from the right {PATCH_TEST_FRACTION:.0%} of "
              "columns, train crops from the rest"
          ),
          "licence_source": "per-image notes in skimage/data/_fetchers.py docstrings; wheel licence BSD-3-Clause",
          "never_read": "brick, grass, gravel, hubble_deep_field, retina, ihc (method-benchmark domains)",
      },
      "sklearn digits": "not used (a method-benchmark domain)",
      "flat_rule": f"images with uint8 pixel std < {args.min_std} are dropped from every class before splitting",
      "excluded_demo_images": {
          "rule": (
              "demo/prepare.py selection re-derived with numpy default_rng(0): per animal class c in 0..9 "
              "rng.permutation(indices of class c)[:20] (id_heldout); then order = rng.permutation over the "
              "sorted 'all'-split FRI/FRII/Bent zip paths, order[:32] = ood_fewshot, order[32:288] = "
              "ood_heldout. All are dropped before anything else."
          ),
          "count": {"animals": int(len(id_held)), "galaxies": int(len(ood_excluded))},
          "checked_against_committed_assets": bool(args.demo_assets),
          "galaxy_zip_paths": sorted(ood_excluded),
      },
  }
  return Dataset(
      np.concatenate(images), np.concatenate(labels), np.concatenate(is_test), names, groups, augs, dropped, provenance
  )


# ---------------------------------------------------------------------------
# Training.


def to_model(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 NHWC in [-1, 1], the project's model space."""
  return (np.asarray(images, np.float32) / 127.5 - 1.0)[..., None]


def augment(batch: np.ndarray, aug_codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Class-preserving jitter: +-2 px edge-padded shifts; flips / transposes where the class allows."""
  n = len(batch)
  padded = np.pad(batch, ((0, 0), (2, 2), (2, 2)), mode="edge")
  dy, dx = rng.integers(0, 5, n), rng.integers(0, 5, n)
  hflip, vflip, transpose = rng.random(n) < 0.5, rng.random(n) < 0.5, rng.random(n) < 0.5
  out = np.empty_like(batch)
  for i in range(n):
    img = padded[i, dy[i] : dy[i] + SIZE, dx[i] : dx[i] + SIZE]
    if aug_codes[i] >= 1 and hflip[i]:
      img = img[:, ::-1]
    if aug_codes[i] == 2 and vflip[i]:
      img = img[::-1]
    if aug_codes[i] == 2 and transpose[i]:
      img = img.T
    out[i] = img
  return out


def make_train_step(model: feature_net.FeatureNet, tx: optax.GradientTransformation):
  """One jitted update on a per-sample weighted softmax cross-entropy."""

  def loss_fn(params, x, y, w):
    logits = model.apply({"params": params}, x)[1]
    loss = jnp.sum(w * optax.softmax_cross_entropy_with_integer_labels(logits, y)) / jnp.sum(w)
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)

  @jax.jit
  def step(params, opt_state, x, y, w):
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y, w)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  return step


def train(ds: Dataset, model: feature_net.FeatureNet, args: argparse.Namespace) -> tuple[dict, list[dict]]:
  """Shuffled epochs of augmented batches; galaxy classes get a larger loss weight because they are hardest."""
  rng = np.random.default_rng(args.seed + 1)
  train_idx = np.flatnonzero(~ds.is_test)
  aug_codes = np.array([AUGMENTATIONS.index(a) for a in ds.class_aug])[ds.labels]
  class_weight = np.array([args.galaxy_weight if g == "galaxy" else 1.0 for g in ds.class_groups], np.float32)
  warmup = min(args.warmup, args.steps // 2)
  schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, warmup, args.steps, args.lr * 0.01)
  tx = optax.adamw(schedule, weight_decay=args.weight_decay)
  params = model.init(jax.random.PRNGKey(args.seed), jnp.zeros((1, SIZE, SIZE, 1), jnp.float32))["params"]
  opt_state = tx.init(params)
  step_fn = make_train_step(model, tx)
  order, pos, log, t0 = rng.permutation(train_idx), 0, [], time.time()
  run_loss = run_acc = 0.0
  for step in range(1, args.steps + 1):
    if pos + args.batch_size > len(order):
      order, pos = rng.permutation(train_idx), 0
    idx = order[pos : pos + args.batch_size]
    pos += args.batch_size
    x = to_model(augment(ds.images[idx], aug_codes[idx], rng))
    y = ds.labels[idx]
    params, opt_state, loss, acc = step_fn(
        params, opt_state, jnp.asarray(x), jnp.asarray(y), jnp.asarray(class_weight[y])
    )
    run_loss, run_acc = run_loss + float(loss), run_acc + float(acc)
    if step % args.log_every == 0 or step == args.steps:
      k = (step - 1) % args.log_every + 1
      log.append(
          {
              "step": step,
              "loss": round(run_loss / k, 4),
              "train_acc": round(run_acc / k, 4),
              "seconds": round(time.time() - t0, 1),
          }
      )
      print(log[-1], flush=True)
      run_loss = run_acc = 0.0
  return params, log


def predict(model: feature_net.FeatureNet, params: dict, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """Logits in fixed-size padded batches (one compilation)."""
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x)[1])
  out = []
  for s in range(0, len(images), batch_size):
    chunk = to_model(images[s : s + batch_size])
    pad = np.zeros((batch_size - len(chunk),) + chunk.shape[1:], np.float32)
    out.append(np.asarray(apply(params, jnp.asarray(np.concatenate([chunk, pad]))))[: len(chunk)])
  return np.concatenate(out)


def evaluate(model: feature_net.FeatureNet, params: dict, ds: Dataset) -> dict:
  """Plain argmax test accuracy, overall, per class and per group."""
  idx = np.flatnonzero(ds.is_test)
  y = ds.labels[idx]
  correct = np.argmax(predict(model, params, ds.images[idx]), -1) == y
  per_class = {n: round(float(correct[y == c].mean()), 4) for c, n in enumerate(ds.class_names)}
  groups = np.array(ds.class_groups)[y]
  return {
      "overall": round(float(correct.mean()), 4),
      "n_test": int(len(idx)),
      "mean_per_class": round(float(np.mean(list(per_class.values()))), 4),
      "per_group": {g: round(float(correct[groups == g].mean()), 4) for g in dict.fromkeys(ds.class_groups)},
      "per_class": per_class,
  }


def class_counts(ds: Dataset) -> dict:
  return {
      n: {
          "train": int(((ds.labels == c) & ~ds.is_test).sum()),
          "test": int(((ds.labels == c) & ds.is_test).sum()),
          "dropped_flat": ds.dropped_flat[n],
      }
      for c, n in enumerate(ds.class_names)
  }


def package_versions(skimage_data_dir: str) -> dict:
  return {
      "python": sys.version.split()[0],
      "jax": jax.__version__,
      "flax": version("flax"),
      "optax": version("optax"),
      "numpy": np.__version__,
      "pillow": version("pillow"),
      "animal-mnist": version("animal-mnist"),
      "firstgalaxydata": version("firstgalaxydata"),
      "scikit-image (data files only)": skimage_version(skimage_data_dir),
  }


def command_line(argv=None) -> str:
  """The exact invocation, recorded so a run can be repeated."""
  args = argv if argv is not None else sys.argv[1:]
  return " ".join(["python -m discovery_jax.demo.train_features"] + [shlex.quote(a) for a in args])


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out_dir", default=feature_net.ASSET_DIR)
  p.add_argument("--skimage_data_dir", default=None, help="scikit-image's bundled data folder (default: installed)")
  p.add_argument("--demo_assets", default=DEMO_ASSETS, help="committed demo PNGs to verify the exclusion ('' skips)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--steps", type=int, default=1500)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument("--warmup", type=int, default=100)
  p.add_argument("--weight_decay", type=float, default=1e-4)
  p.add_argument("--galaxy_weight", type=float, default=2.0, help="loss weight of the FIRST galaxy classes")
  p.add_argument("--widths", default="32,64,128")
  p.add_argument("--embed_dim", type=int, default=128)
  p.add_argument("--test_fraction", type=float, default=0.1)
  p.add_argument("--patches_per_class", type=int, default=600)
  p.add_argument("--min_std", type=float, default=3.0, help="drop images whose uint8 pixel std is below this")
  p.add_argument("--log_every", type=int, default=100)
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  skimage_dir = args.skimage_data_dir or os.path.join(package_dir("skimage"), "data")
  ds = build_dataset(skimage_dir, args)
  counts = class_counts(ds)
  print(f"dataset: {len(ds.images)} images, {len(ds.class_names)} classes, {int(ds.is_test.sum())} test", flush=True)
  print("dropped flat:", {k: v["dropped_flat"] for k, v in counts.items() if v["dropped_flat"]}, flush=True)
  arch = {
      "widths": [int(w) for w in args.widths.split(",")],
      "embed_dim": args.embed_dim,
      "num_classes": len(ds.class_names),
  }
  model = feature_net.build(arch)
  t0 = time.time()
  params, log = train(ds, model, args)
  train_seconds = time.time() - t0
  accuracy = evaluate(model, params, ds)
  print({k: v for k, v in accuracy.items() if k != "per_class"}, flush=True)
  metadata = {
      "format": "discovery_jax.feature_net/v1",
      "architecture": arch,
      "image_shape": [SIZE, SIZE, 1],
      "input": "NHWC float32 in [-1, 1] (uint8 / 127.5 - 1)",
      "embedding": "silu(Dense(embed_dim)) after the global mean of the last conv stage: the input of the head",
      "num_params": int(sum(v.size for v in feature_net.flatten_params(params).values())),
      "class_names": ds.class_names,
      "class_groups": ds.class_groups,
      "counts": counts,
      "test_accuracy": accuracy,
      "test_split": (
          f"seeded {args.test_fraction:.0%} per class after dropping flat images; patch classes: crops "
          "from a spatially disjoint strip"
      ),
      "data_provenance": ds.provenance,
      "training": {
          "optimizer": "optax.adamw",
          "lr_schedule": "warmup_cosine_decay",
          **{
              k: getattr(args, k)
              for k in (
                  "steps",
                  "batch_size",
                  "lr",
                  "warmup",
                  "weight_decay",
                  "galaxy_weight",
                  "min_std",
                  "patches_per_class",
              )
          },
          "augmentation": (
              "+-2 px edge-padded shifts; hflip (animals, photos); dihedral flips/transpose "
              "(galaxies, moon, coins); shifts only (text, page)"
          ),
          "train_seconds": round(train_seconds, 1),
          "device": jax.devices()[0].device_kind,
          "log": log,
      },
      "seed": args.seed,
      "command": command_line(argv),
      "versions": package_versions(skimage_dir),
  }
  metadata = feature_net.save(args.out_dir, params, metadata)
  size = os.path.getsize(os.path.join(args.out_dir, feature_net.WEIGHTS_FILE))
  print(
      f"wrote {args.out_dir} ({size} bytes of weights, sha256 {metadata['weights_sha256']}); "
      f"trained {train_seconds:.0f}s",
      flush=True,
  )


if __name__ == "__main__":
  main()
