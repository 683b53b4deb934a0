"""The benchmark's offline target domains: the committed folders are what their provenance
says, and no held-out image is (or touches) a few-shot one."""

import hashlib
import os
import re
import sys

import numpy as np
import pytest
from PIL import Image

from tests import helpers

sys.path.insert(0, os.path.join(helpers.REPO, "benchmarks"))
sys.path.insert(0, os.path.join(helpers.REPO, "benchmarks", "domains"))

import method  # noqa: E402  (benchmarks/method.py: the domains it runs)
import prepare  # noqa: E402  (benchmarks/domains/prepare.py)


def _images(folder):
  names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
  return names, [np.asarray(Image.open(os.path.join(folder, n))) for n in names]


@pytest.mark.parametrize("name", [d for d in method.DOMAINS if d != "first"])
def test_each_domain_folder_matches_its_provenance_and_its_splits_are_disjoint(name):
  fewshot_dir, heldout_dir = method.DOMAINS[name]
  few_names, few = _images(fewshot_dir)
  held_names, held = _images(heldout_dir)
  assert len(few) == 32 and len(held) >= 60
  for img in few + held:
    assert img.shape == (32, 32) and img.dtype == np.uint8
  text = open(os.path.join(os.path.dirname(fewshot_dir), "PROVENANCE.md")).read()
  counts = re.search(r"`fewshot/`: (\d+), `heldout/`: (\d+)", text)
  assert counts and (int(counts[1]), int(counts[2])) == (len(few), len(held))
  digest = lambda img: hashlib.sha1(img.tobytes()).hexdigest()
  assert not {digest(i) for i in few} & {digest(i) for i in held}
  assert not set(few_names) & set(held_names)


def test_the_untuned_domains_are_not_in_the_default_run():
  assert set(method.UNTUNED_DOMAINS) <= set(method.DOMAINS)
  assert not set(method.UNTUNED_DOMAINS) & set(method.DEFAULT_DOMAINS)
  assert "first" in method.DEFAULT_DOMAINS and len(method.DEFAULT_DOMAINS) == 6


def test_lattice_tiles_never_share_a_pixel_or_an_edge():
  tile = 4
  few, held = prepare.lattice_tiles(np.zeros((30, 41), np.uint8), tile)
  assert len(few) == 4 * 5 and len(held) == 3 * 5  # 7 tile rows x 10 tile columns
  for r, c in few:
    for rh, ch in held:
      dr, dc = abs(r - rh) // tile, abs(c - ch) // tile
      assert dr >= 1 and dc >= 1  # neither the same tile row nor column: at most a corner touches
  for r, c in few + held:
    assert r % tile == 0 and c % tile == 0 and r + tile <= 30 and c + tile <= 41
