"""`invert` and `reconstruct` end to end on small converted checkpoints and real
image files, resumption after a crash, and bad input."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from convert.writer import convert_checkpoint
from discovery_jax import cli, configlib, diffusion, fileio, invert, models, settings
from discovery_jax import runner as inversion
from discovery_jax.metrics import reconstruction as quality
from discovery_jax.data import images
from discovery_jax.data.bank import BankError, LatentBank, check_compatible
from tests import helpers


@pytest.fixture(scope="session")
def converted(tmp_path_factory, vectors_available):
  """Both public vector checkpoints converted with the CLI's code path."""
  root = tmp_path_factory.mktemp("ckpt")
  out = {}
  for family in ("ddpm", "iddpm"):
    out[family] = str(root / family)
    convert_checkpoint(helpers.vector_state_dict(family), out[family], helpers.vector_model_config(family))
  return out


def write_images(folder, n, seed=0, size=(40, 52)):
  """Real files of several kinds: RGB PNG, grayscale JPEG, RGBA PNG, 16-bit TIFF, BMP."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  h, w = size
  for i in range(n):
    kind = i % 5
    base = np.clip(rng.normal(128, 60, (h, w, 3)) + np.linspace(0, 80, w)[None, :, None], 0, 255)
    if kind == 0:
      Image.fromarray(base.astype(np.uint8)).save(os.path.join(folder, f"img{i:03d}.png"))
    elif kind == 1:
      Image.fromarray(base[..., 0].astype(np.uint8), "L").save(os.path.join(folder, f"img{i:03d}.jpg"), quality=95)
    elif kind == 2:
      rgba = np.concatenate([base, rng.integers(0, 256, (h, w, 1))], -1).astype(np.uint8)
      Image.fromarray(rgba, "RGBA").save(os.path.join(folder, f"img{i:03d}.png"))
    elif kind == 3:
      Image.fromarray((base[..., 1] * 257).astype(np.uint16)).save(os.path.join(folder, f"img{i:03d}.tif"))
    else:
      Image.fromarray(base.astype(np.uint8)).save(os.path.join(folder, f"img{i:03d}.bmp"))
  return folder


def make_config(checkpoint, family, ood_dir, **sampling):
  config = configlib.load_config_file(os.path.join(helpers.REPO, "configs", "base.py"))
  config.model = ml_collections.ConfigDict(helpers.vector_model_config(family))
  config.checkpoint = checkpoint
  config.data.ood_dir = ood_dir
  config.sampling.t_0 = sampling.get("t_0", 400)
  config.sampling.n_steps = sampling.get("n_steps", 6)
  config.sampling.batch_size = sampling.get("batch_size", 4)
  return config


def run_cli(module, config_path, workdir, *overrides):
  return subprocess.run(
      [sys.executable, "-m", f"discovery_jax.{module}", f"--config={config_path}", f"--workdir={workdir}", *overrides],
      capture_output=True,
      text=True,
      cwd=helpers.REPO,
  )


def write_config_file(path, checkpoint, family, ood_dir):
  path.write_text(f"""
import ml_collections
from discovery_jax import configlib
def get_config():
  c = configlib.load_config_file({os.path.join(helpers.REPO, 'configs', 'base.py')!r})
  c.model = ml_collections.ConfigDict({helpers.vector_model_config(family)!r})
  c.checkpoint = {checkpoint!r}
  c.data.ood_dir = {ood_dir!r}
  c.sampling.t_0 = 300
  c.sampling.n_steps = 5
  c.sampling.batch_size = 4
  return c
""")
  return str(path)


@pytest.mark.slow
def test_reconstruct_cli_end_to_end(tmp_path, converted):
  folder = write_images(str(tmp_path / "imgs"), 5)
  (tmp_path / "imgs" / "corrupt.png").write_bytes(b"\x89PNG not really")
  cfg = write_config_file(tmp_path / "c.py", converted["ddpm"], "ddpm", folder)
  proc = run_cli("reconstruct", cfg, tmp_path / "w", "--config.reconstruct.grid_rows=3")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = tmp_path / "w" / "reconstruct"
  assert sorted(p.name for p in out.iterdir()) == [
      "grid_0000.png",
      "grid_0001.png",
      "metrics.csv",
      "metrics.json",
      "results.jsonl",
  ]
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["count"] == 5 and len(metrics["skipped"]) == 1
  assert "corrupt.png" in metrics["skipped"][0]["path"]
  csv_lines = (out / "metrics.csv").read_text().strip().splitlines()
  assert csv_lines[0] == "name,mse,psnr,ssim" and csv_lines[-1].startswith("MEAN,") and len(csv_lines) == 7
  # Recompute one image's metrics independently through the library.
  config = make_config(converted["ddpm"], "ddpm", folder, t_0=300, n_steps=5)
  model = cli.load_model(config)
  runner = inversion.DDIMRunner(model.eps, 300, 5, batch_size=4)
  x = np.stack([images.load_image(os.path.join(folder, "img000.png"), settings.image_options(config))])
  expected = quality.compare(x[0], runner.generate(runner.invert(x))[0])
  got = next(r for r in metrics["per_image"] if r["name"] == "img000.png")
  assert got["psnr"] == pytest.approx(expected["psnr"], abs=1e-3)
  grid = np.asarray(Image.open(out / "grid_0000.png"))
  assert grid.shape[1] > 3 * 32 and grid.shape[0] > 3 * 32  # 3 rows of input | rec | error.


@pytest.mark.slow
def test_invert_cli_writes_a_bank_readable_without_copies(tmp_path, converted):
  folder = write_images(str(tmp_path / "imgs"), 6)
  cfg = write_config_file(tmp_path / "c.py", converted["iddpm"], "iddpm", folder)
  proc = run_cli("invert", cfg, tmp_path / "w")
  assert proc.returncode == 0, proc.stderr[-3000:]
  bank = LatentBank.open(str(tmp_path / "w" / "banks" / "ood"))
  latents = bank.latents()
  assert isinstance(latents, np.memmap) and latents.shape == (6, 32, 32, 3)
  assert bank.metadata["t_0"] == 300 and bank.metadata["n_steps"] == 5
  assert [i["name"] for i in bank.metadata["items"]] == sorted(os.listdir(folder))
  assert bank.metadata["items"][0]["sha256"] == fileio.sha256_file(os.path.join(folder, "img000.png"))
  # The stored latents are the DDIM inversion of the images.
  config = make_config(converted["iddpm"], "iddpm", folder, t_0=300, n_steps=5)
  model = cli.load_model(config)
  x = np.stack([images.load_image(os.path.join(folder, n), settings.image_options(config)) for n in bank.names[:2]])
  np.testing.assert_allclose(
      latents[:2], np.asarray(diffusion.ddim_invert(model.eps, x, t_0=300, n_steps=5)), atol=1e-5
  )


@pytest.mark.slow
def test_interrupted_invert_resumes_without_redoing_work(tmp_path, converted, monkeypatch):
  folder = write_images(str(tmp_path / "imgs"), 7)
  config = make_config(converted["iddpm"], "iddpm", folder, batch_size=2)
  config.parallel.num_devices = 1  # batches of 2 (8 devices would round the batch up to 8).
  reference = invert.build_banks(config, str(tmp_path / "ref"))["ood"].latents().copy()

  calls = []
  original = LatentBank.write

  def crash_after_two(self, idx, lat):
    calls.append(list(idx))
    if len(calls) == 3:
      raise KeyboardInterrupt("simulated kill")
    return original(self, idx, lat)

  monkeypatch.setattr(LatentBank, "write", crash_after_two)
  with pytest.raises(KeyboardInterrupt):
    invert.build_banks(config, str(tmp_path / "w"))
  partial = LatentBank.open(str(tmp_path / "w" / "banks" / "ood"), require_complete=False)
  assert partial.done_indices() == [0, 1, 2, 3] and not partial.complete
  with pytest.raises(BankError, match="incomplete \\(4/7"):
    LatentBank.open(partial.path)

  calls.clear()
  monkeypatch.setattr(LatentBank, "write", lambda self, idx, lat: (calls.append(list(idx)), original(self, idx, lat)))
  bank = invert.build_banks(config, str(tmp_path / "w"))["ood"]
  assert calls == [[4, 5], [6]]  # only what was missing.
  np.testing.assert_allclose(bank.latents(), reference, atol=1e-6)


@pytest.mark.slow
def test_bank_refuses_a_changed_folder_and_incompatible_banks(tmp_path, converted):
  folder = write_images(str(tmp_path / "imgs"), 3)
  config = make_config(converted["ddpm"], "ddpm", folder)
  invert.build_banks(config, str(tmp_path / "w"))
  write_images(folder, 4, seed=1)  # files changed under the same workdir.
  with pytest.raises(BankError, match="different set of files"):
    invert.build_banks(config, str(tmp_path / "w"))
  a = invert.build_banks(config, str(tmp_path / "w1"))["ood"]
  config.sampling.t_0 = 200
  b = invert.build_banks(config, str(tmp_path / "w2"))["ood"]
  with pytest.raises(BankError, match="different t_0"):
    check_compatible([a, b])
  c = invert.build_banks(make_config(converted["iddpm"], "iddpm", folder), str(tmp_path / "w3"))["ood"]
  with pytest.raises(BankError, match="different models"):
    check_compatible([a, c])


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.sampling.t_0=1000", "t_0 must be an integer in 1..999"),
        pytest.param("--config.sampling.n_steps=1", "n_steps must be an integer >= 2", marks=pytest.mark.slow),
        pytest.param("--config.sampling.eta=-0.5", "eta must be >= 0", marks=pytest.mark.slow),
        pytest.param(
            "--config.data.ood_dir=/nonexistent/folder",
            "input folder /nonexistent/folder does not exist",
            marks=pytest.mark.slow,
        ),
        ("--config.model.ch=128", "does not match config.model: ch: checkpoint has 64, config has 128"),
    ],
)
def test_bad_input_is_reported_in_one_line(override, message, tmp_path, converted):
  folder = write_images(str(tmp_path / "imgs"), 1)
  cfg = write_config_file(tmp_path / "c.py", converted["ddpm"], "ddpm", folder)
  proc = run_cli("invert", cfg, tmp_path / "w", override)
  assert proc.returncode == 1
  assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_empty_folder_and_all_bad_files(tmp_path, converted):
  (tmp_path / "empty").mkdir()
  config = make_config(converted["ddpm"], "ddpm", str(tmp_path / "empty"))
  with pytest.raises(images.InputError, match="contains no files"):
    invert.build_banks(config, str(tmp_path / "w"))
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "a.png").write_bytes(b"nope")
  config.data.ood_dir = str(tmp_path / "bad")
  with pytest.raises(images.InputError, match="no readable input"):
    invert.build_banks(config, str(tmp_path / "w"))
  config.data.on_bad_file = "error"
  with pytest.raises(images.InputError, match="a.png is not a readable image"):
    invert.build_banks(config, str(tmp_path / "w"))


def test_image_loading_matches_official_pipeline_and_handles_modes(tmp_path):
  folder = write_images(str(tmp_path / "imgs"), 5)
  options = images.ImageOptions(image_size=32)
  for name in sorted(os.listdir(folder)):
    x = images.load_image(os.path.join(folder, name), options)
    assert x.shape == (32, 32, 3) and x.dtype == np.float32 and -1 <= x.min() and x.max() <= 1
  # RGB 8-bit: exactly the official convert('RGB').resize(LANCZOS) -> ToTensor -> (x - 0.5) * 2.
  ref = np.asarray(Image.open(os.path.join(folder, "img000.png")).convert("RGB").resize((32, 32), Image.LANCZOS))
  np.testing.assert_array_equal(
      images.load_image(os.path.join(folder, "img000.png"), options),
      (ref.astype(np.float32) / np.float32(255) - np.float32(0.5)) * np.float32(2),
  )
  gray = images.load_image(os.path.join(folder, "img001.jpg"), options)
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # grayscale replicated to RGB.
  crop = images.load_image(os.path.join(folder, "img000.png"), images.ImageOptions(32, resize="center_crop"))
  assert not np.array_equal(crop, images.load_image(os.path.join(folder, "img000.png"), options))
  white = images.load_image(os.path.join(folder, "img002.png"), images.ImageOptions(32, alpha="white"))
  black = images.load_image(os.path.join(folder, "img002.png"), options)
  assert white.mean() > black.mean()


def test_quality_metrics():
  rng = np.random.default_rng(0)
  a = rng.uniform(-1, 1, (24, 24, 3))
  assert quality.compare(a, a) == {"mse": 0.0, "psnr": float("inf"), "ssim": pytest.approx(1.0)}
  noisy = quality.compare(a, np.clip(a + rng.normal(0, 0.1, a.shape), -1, 1))
  assert 20 < noisy["psnr"] < 35 and 0.5 < noisy["ssim"] < 1.0
  # PSNR of a constant offset is known exactly: offset 0.1 on [-1,1] = 0.05 on [0,1] -> 26.02 dB.
  b = np.full((16, 16, 3), 0.0)
  assert quality.compare(b, b + 0.1)["psnr"] == pytest.approx(10 * np.log10(1 / 0.05**2))
  assert quality.compare(a, -a)["ssim"] < 0


@pytest.mark.slow
def test_auto_t0_is_the_largest_candidate_that_reconstructs(tmp_path, converted):
  import dataclasses

  from discovery_jax.discovery import bandwidth

  folder = write_images(str(tmp_path / "imgs"), 3)
  config = make_config(converted["ddpm"], "ddpm", folder, t_0="auto", n_steps=3, batch_size=4)
  model = cli.load_model(config)
  options = settings.sampling_options(config)
  assert options.t_0 is None
  probe = dataclasses.replace(options, bandwidth=bandwidth.BandwidthOptions(tolerance=0.999, candidates=(20, 300)))
  search = cli.find_auto_t0(config, model, probe)
  assert set(search.errors) <= {20, 300} and search.t_0 in search.errors
  # The error the search reports is the error of that runner's reconstruction.
  runner = inversion.DDIMRunner(model.eps, search.t_0, 3, options.schedule, 4)
  from discovery_jax.data.inputs import open_inputs

  x = open_inputs(folder, settings.input_options(config)).load([0, 1, 2])
  assert bandwidth.structure_error(x, runner.generate(runner.invert(x))) == pytest.approx(
      search.errors[search.t_0], rel=1e-6
  )
  # A tolerance below every error: one line, and the runner is never built.
  tight = dataclasses.replace(
      options, bandwidth=bandwidth.BandwidthOptions(tolerance=0.5 * min(search.errors.values()), candidates=(20, 300))
  )
  with pytest.raises(bandwidth.BandwidthError, match="found no t_0 within tolerance"):
    cli.find_auto_t0(config, model, tight)


@pytest.mark.slow
def test_auto_t0_that_finds_nothing_ends_the_cli_in_one_line(tmp_path, converted):
  folder = write_images(str(tmp_path / "imgs"), 1)
  cfg = write_config_file(tmp_path / "c.py", converted["ddpm"], "ddpm", folder)
  proc = run_cli("invert", cfg, tmp_path / "w", "--config.sampling.t_0=auto", "--config.sampling.t_0_tolerance=1e-9")
  assert proc.returncode == 1
  assert "found no t_0 within tolerance 1e-09" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "w" / "banks")
