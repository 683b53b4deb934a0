"""FID Inception-v3: conversion of a pytorch-fid-format state dict and parity with PyTorch.

No real weights exist offline, so a PyTorch FID-Inception written here from the
network's published structure (torchvision's Inception3 blocks with pytorch-fid's
FID patches; module names as in pt_inception-2015-12-05-6726825d.pth) gets random
weights and random BatchNorm statistics, is saved as a plain state dict, converted,
and compared feature for feature.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convert import inception as convert_inception
from discovery_jax.metrics import features
from tests import helpers

pytestmark = pytest.mark.slow  # Inception at 299x299 against torch: the full tier only

# ---------------------------------------------------------------------------
# PyTorch reference of the FID network (pool3 output).


class TBasicConv2d(nn.Module):

  def __init__(self, cin, cout, kernel, stride=1, padding=0):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _avg3(x):
  return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class TInceptionA(nn.Module):

  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = TBasicConv2d(cin, 64, 1)
    self.branch5x5_1 = TBasicConv2d(cin, 48, 1)
    self.branch5x5_2 = TBasicConv2d(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = TBasicConv2d(cin, 64, 1)
    self.branch3x3dbl_2 = TBasicConv2d(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = TBasicConv2d(96, 96, 3, padding=1)
    self.branch_pool = TBasicConv2d(cin, pool_features, 1)

  def forward(self, x):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class TInceptionB(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = TBasicConv2d(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = TBasicConv2d(cin, 64, 1)
    self.branch3x3dbl_2 = TBasicConv2d(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = TBasicConv2d(96, 96, 3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class TInceptionC(nn.Module):

  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = TBasicConv2d(cin, 192, 1)
    self.branch7x7_1 = TBasicConv2d(cin, c7, 1)
    self.branch7x7_2 = TBasicConv2d(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = TBasicConv2d(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = TBasicConv2d(cin, c7, 1)
    self.branch7x7dbl_2 = TBasicConv2d(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = TBasicConv2d(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = TBasicConv2d(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = TBasicConv2d(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = TBasicConv2d(cin, 192, 1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for i in range(1, 6):
      bd = getattr(self, f"branch7x7dbl_{i}")(bd)
    return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg3(x))], 1)


class TInceptionD(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = TBasicConv2d(cin, 192, 1)
    self.branch3x3_2 = TBasicConv2d(192, 320, 3, stride=2)
    self.branch7x7x3_1 = TBasicConv2d(cin, 192, 1)
    self.branch7x7x3_2 = TBasicConv2d(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = TBasicConv2d(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = TBasicConv2d(192, 192, 3, stride=2)

  def forward(self, x):
    b7 = x
    for i in range(1, 5):
      b7 = getattr(self, f"branch7x7x3_{i}")(b7)
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class TInceptionE(nn.Module):

  def __init__(self, cin, pool):
    super().__init__()
    self.pool = pool
    self.branch1x1 = TBasicConv2d(cin, 320, 1)
    self.branch3x3_1 = TBasicConv2d(cin, 384, 1)
    self.branch3x3_2a = TBasicConv2d(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = TBasicConv2d(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = TBasicConv2d(cin, 448, 1)
    self.branch3x3dbl_2 = TBasicConv2d(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = TBasicConv2d(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = TBasicConv2d(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = TBasicConv2d(cin, 192, 1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _avg3(x)
    return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class TFIDInception(nn.Module):

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = TBasicConv2d(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = TBasicConv2d(32, 32, 3)
    self.Conv2d_2b_3x3 = TBasicConv2d(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = TBasicConv2d(64, 80, 1)
    self.Conv2d_4a_3x3 = TBasicConv2d(80, 192, 3)
    self.Mixed_5b = TInceptionA(192, 32)
    self.Mixed_5c = TInceptionA(256, 64)
    self.Mixed_5d = TInceptionA(288, 64)
    self.Mixed_6a = TInceptionB(288)
    self.Mixed_6b = TInceptionC(768, 128)
    self.Mixed_6c = TInceptionC(768, 160)
    self.Mixed_6d = TInceptionC(768, 160)
    self.Mixed_6e = TInceptionC(768, 192)
    self.Mixed_7a = TInceptionD(768)
    self.Mixed_7b = TInceptionE(1280, "avg")
    self.Mixed_7c = TInceptionE(2048, "max")
    self.fc = nn.Linear(2048, 1008)  # in the file, unused by FID.

  def forward(self, x):  # x: NCHW in [0, 1], pytorch-fid's preprocessing included.
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, 3, stride=2)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, 3, stride=2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
  """He-scaled conv weights and BatchNorm affine/statistics far from the identity."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
  return model.eval()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(torch model, state-dict path, converted folder) — converted through the CLI entry."""
  tmp = tmp_path_factory.mktemp("fid_inception")
  model = _randomize(TFIDInception())
  pth = str(tmp / "pt_inception-random.pth")
  torch.save(model.state_dict(), pth)
  out = str(tmp / "converted")
  assert convert_inception.main([f"--pth={pth}", f"--output={out}"]) == 0
  return model, pth, out


def _images(n=2, size=64, seed=1):
  return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype(np.float32)


def test_expected_keys_are_the_state_dict_keys():
  state = TFIDInception().state_dict()
  expected = convert_inception.expected_state_dict()
  kept = {k for k in state if not k.endswith("num_batches_tracked") and not k.startswith("fc.")}
  assert set(expected) == kept and len(expected) == 470
  for key, (_, shape) in expected.items():
    assert tuple(state[key].shape) == shape, key


def test_bilinear_resize_matches_torch():
  rng = np.random.default_rng(0)
  for h, w in [(64, 64), (256, 256), (512, 400), (299, 299), (300, 298), (75, 90), (1024, 1024)]:
    x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
    ref = F.interpolate(
        torch.from_numpy(helpers.nchw(x)), size=(299, 299), mode="bilinear", align_corners=False
    ).numpy()
    got = np.asarray(features.resize_bilinear_torch(x, 299))
    np.testing.assert_allclose(helpers.nchw(got), ref, atol=2e-6, err_msg=f"{h}x{w}")


def test_converted_features_match_torch(reference):
  model, _, out = reference
  x = _images()
  with torch.no_grad():
    ref = model(torch.from_numpy(helpers.nchw(x))).numpy()
  extractor = features.load_inception_extractor(out, batch_size=2)
  got = extractor(x, value_range=(0.0, 1.0), quantize=False)
  assert got.shape == (2, 2048) and ref.std() > 0.05  # features far from degenerate.
  print("max |flax - torch| =", np.abs(got - ref).max(), "feature std", ref.std())
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
  meta = json.load(open(os.path.join(out, "metadata.json")))
  assert meta["official_fid_weights"] is False and len(meta["source_sha256"]) == 64
  assert extractor.info["official_fid_weights"] is False


def test_conversion_refuses_mismatched_state_dicts(reference, tmp_path):
  model, _, _ = reference
  good = model.state_dict()
  err = convert_inception.CheckpointError

  missing = {k: v for k, v in good.items() if k != "Mixed_6c.branch7x7_2.conv.weight"}
  with pytest.raises(err, match=r"missing keys: Mixed_6c\.branch7x7_2\.conv\.weight \(160, 160, 1, 7\)"):
    convert_inception.convert_state_dict(missing)

  wrong = dict(good, **{"Mixed_7c.branch_pool.bn.running_var": torch.ones(10)})
  with pytest.raises(err, match=r"wrong shapes: Mixed_7c\.branch_pool\.bn\.running_var has \(10,\), expected \(192,\)"):
    convert_inception.convert_state_dict(wrong)

  extra = dict(good, **{"Mixed_8a.conv.weight": torch.ones(3)})
  with pytest.raises(err, match=r"unexpected keys: Mixed_8a\.conv\.weight"):
    convert_inception.convert_state_dict(extra)

  imagenet = dict(good, **{"fc.weight": torch.ones(1000, 2048), "fc.bias": torch.ones(1000)})
  with pytest.raises(err, match="torchvision's ImageNet Inception"):
    convert_inception.convert_state_dict(imagenet)

  with pytest.raises(err, match="not the FID Inception"):  # a diffusion checkpoint, say.
    convert_inception.convert_state_dict({"conv_in.weight": torch.ones(1)})

  out = tmp_path / "never"
  assert convert_inception.main([f"--pth={tmp_path / 'absent.pth'}", f"--output={out}"]) == 1
  assert not out.exists()


def test_loads_and_runs_without_torch(reference, tmp_path):
  model, _, out = reference
  x = _images(n=3, size=96, seed=2)
  np.save(tmp_path / "x.npy", x)
  with torch.no_grad():
    np.save(tmp_path / "ref.npy", model(torch.from_numpy(helpers.nchw(x))).numpy())
  code = textwrap.dedent(f"""
      import sys
      sys.modules['torch'] = None
      import numpy as np
      from discovery_jax.metrics import features
      ex = features.create_extractor('inception', inception_path={out!r}, batch_size=2)
      x = np.load({str(tmp_path / 'x.npy')!r})
      got = ex(x, value_range=(0.0, 1.0), quantize=False)
      err = float(np.abs(got - np.load({str(tmp_path / 'ref.npy')!r})).max())
      assert sys.modules['torch'] is None
      print('maxerr', err)
      """)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=helpers.REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  err = float(proc.stdout.split("maxerr")[-1])
  assert err < 1e-4


def test_load_refuses_other_folders(tmp_path):
  from discovery_jax.checkpoint import CheckpointError

  with pytest.raises(CheckpointError, match="python -m convert.inception"):
    features.load_inception(str(tmp_path))
  (tmp_path / "metadata.json").write_text(json.dumps({"format": "something else"}))
  with pytest.raises(CheckpointError, match="is not 'discovery_jax.fid_inception_v3'"):
    features.load_inception(str(tmp_path))
