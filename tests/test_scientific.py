"""Scientific data in and out: FITS/npy readers, intensity transforms, FITS/PNG
writers, field statistics and the synthetic generators (CPU, small arrays)."""

import gzip
import json
import os
import shutil

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from discovery_jax.metrics import physics as science
from discovery_jax.data import fits_output, scientific, transforms
from tests import synthetic_fields as synthetic
from discovery_jax.data.images import InputError
from discovery_jax.data.scientific import ScientificOptions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write(path, data, header=None, extra_hdus=()):
  hdus = [fits.PrimaryHDU(data, header=fits.Header(header or {}))] + list(extra_hdus)
  fits.HDUList(hdus).writeto(path, overwrite=True)
  return str(path)


def _positive(seed=0, n=4, size=32):
  return synthetic.lognormal_fields(n, size, beta=3.0, sigma=1.2, seed=seed)


def _signed(seed=0, n=4, size=32, bands=1):
  return synthetic.sersic_galaxies(n, size, seed=seed, bands=bands, noise=0.05)[0]


def _assert_png(path, size=None):
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  with Image.open(path) as img:
    img.verify()
  with Image.open(path) as img:
    assert img.mode == "RGB" or img.mode == "RGBA"
    if size is not None:
      assert img.size == size


# ---------------------------------------------------------------------------
# Round trip and provenance.


def test_fits_round_trip_through_model_space_keeps_values_nans_and_headers(tmp_path):
  field = _positive(seed=3, n=1)[0, ..., 0] * 1e-3
  field[5, :] = np.nan
  field[7, 9] = np.inf
  src = _write(
      tmp_path / "cloud.fits",
      field.astype(np.float32),
      {"BUNIT": "erg/s/cm2", "OBJECT": "Orion B", "TELESCOP": "sim", "NAXIS": 2},
  )
  f = scientific.read_field(src, ScientificOptions())
  assert f.info["n_nan"] == 32 and f.info["n_inf"] == 1 and f.info["n_nonfinite"] == 33
  assert f.mask.sum() == 33 and np.isfinite(f.data).all()
  assert f.info["header"] == {"BUNIT": "erg/s/cm2", "OBJECT": "Orion B", "TELESCOP": "sim"}

  t = transforms.fit_transform("asinh", [f.data])
  x = scientific.to_model_input(f.data, t, channels=3)
  assert x.dtype == np.float32 and x.shape == (32, 32, 3) and np.isfinite(x).all()
  assert np.array_equal(x[..., 0], x[..., 2]) and x.min() >= -1 and x.max() <= 1
  back = scientific.from_model_output(x, t, channels=1)
  out = str(tmp_path / "out" / "sample.fits")
  fits_output.write_fits(
      out,
      back,
      header_cards=f.info["header"],
      transform=t,
      model_fingerprint="ab" * 16,
      config_name="galaxy_zoo_" + "x" * 80,
      seed=7,
      sample_index=3,
      nan_mask=f.mask,
  )
  assert os.listdir(tmp_path / "out") == ["sample.fits"]  # no temporary left behind.

  with fits.open(out, checksum=True) as hdul:
    hdul.verify("exception")
    data, header = hdul[0].data.astype(np.float64), hdul[0].header
  original = fits.getdata(src).astype(np.float64)
  finite = np.isfinite(original)
  assert np.array_equal(np.isnan(data), ~finite)
  np.testing.assert_allclose(data[finite], original[finite], rtol=1e-5)  # float32 model space.
  for key in ("BUNIT", "OBJECT", "TELESCOP"):
    assert header[key] == f.info["header"][key]
  prov = fits_output.read_provenance(out)
  assert prov["transform"].to_dict() == t.to_dict()
  assert (prov["model_fingerprint"], prov["seed"], prov["sample_index"]) == ("ab" * 16, 7, 3)
  assert prov["config_name"] == "galaxy_zoo_" + "x" * 80

  # Read back with the library: same values (NaNs filled again), same cards.
  again = scientific.read_field(out)
  assert again.info["header"]["BUNIT"] == "erg/s/cm2" and again.info["n_nonfinite"] == 33


def test_multichannel_sample_round_trips_as_cube(tmp_path):
  gal = _signed(n=1, bands=3)[0]
  path = fits_output.write_fits(str(tmp_path / "g.fits"), gal, dtype=np.float64, header_cards={"FILTER": "gri"})
  assert fits.getdata(path).shape == (3, 32, 32)
  f = scientific.read_field(path)
  np.testing.assert_array_equal(f.data, gal)
  t = transforms.fit_transform("asinh", [gal], per_channel=True)
  np.testing.assert_allclose(
      scientific.from_model_output(scientific.to_model_input(gal, t), t, channels=3), gal, atol=1e-5 * np.abs(gal).max()
  )


# ---------------------------------------------------------------------------
# Transforms.


@pytest.mark.parametrize("kind", transforms.KINDS)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("signed", [False, True])
def test_transform_inverse_of_forward(kind, per_channel, signed):
  data = _signed(bands=3) if signed else np.concatenate([_positive(1), 10 * _positive(2), _positive(3)], -1)
  t = transforms.fit_transform(kind, list(data), per_channel=per_channel)
  y = t.forward(data)
  axes = (0, 1, 2) if per_channel else None
  np.testing.assert_allclose(y.min(axis=axes), -1, atol=1e-12)
  np.testing.assert_allclose(y.max(axis=axes), 1, atol=1e-12)
  np.testing.assert_allclose(t.inverse(y), data, rtol=1e-9, atol=1e-12 * np.abs(data).max())
  assert t.clipped_fraction(data) == 0.0 and t.fit_info["clipped_fraction"] == 0.0
  # Survives JSON storage bit for bit.
  t2 = transforms.Transform.from_dict(json.loads(json.dumps(t.to_dict())))
  assert np.array_equal(t2.forward(data), y) and np.array_equal(t2.inverse(y), t.inverse(y))
  assert transforms.Transform.from_json(t.to_json()).to_dict() == t.to_dict()


def test_percentile_clipping_is_the_only_loss_and_is_reported():
  data = _signed(n=6)
  t = transforms.fit_transform("asinh", list(data), clip_percentiles=(1, 99))
  frac = t.fit_info["clipped_fraction"]
  assert 0.015 < frac < 0.025 and t.clipped_fraction(data) == pytest.approx(frac)
  back = t.inverse(t.forward(data))
  inside = (data >= t.clip_lo) & (data <= t.clip_hi)
  np.testing.assert_allclose(back[inside], data[inside], rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(back[~inside], np.clip(data, t.clip_lo, t.clip_hi)[~inside], rtol=1e-9, atol=1e-12)
  assert np.mean(~inside) == pytest.approx(frac)
  assert "clip to percentiles 1-99" in t.describe()


def test_log_transform_offsets_and_new_data_never_nan():
  pos = _positive()
  assert transforms.fit_transform("log", [pos]).offset.tolist() == [0.0]
  signed = _signed()
  t = transforms.fit_transform("log", [signed])
  assert t.offset[0] > -signed.min()
  y = t.forward(signed.min() - 10.0 * np.ones((2, 2, 1)))  # below the fitted range: floored, not NaN.
  assert np.isfinite(y).all() and np.allclose(y, -1) and t.clipped_fraction(y * 0 + signed.min() - 10) == 1.0
  with pytest.raises(transforms.TransformError, match="constant"):
    transforms.fit_transform("linear", [np.ones((4, 4, 1))])
  with pytest.raises(transforms.TransformError, match="NaN"):
    transforms.fit_transform("linear", [np.full((4, 4, 1), np.nan)])
  with pytest.raises(transforms.TransformError, match="per channel on 3"):
    transforms.fit_transform("linear", [_signed(bands=3)[0]], per_channel=True).forward(np.zeros((4, 4, 1)))


# ---------------------------------------------------------------------------
# Reading: NaNs, cubes, HDUs, numpy.


@pytest.mark.parametrize("fill, expected", [("median", None), ("zero", 0.0), ("min", 2.0), (-5.0, -5.0), ("3", 3.0)])
def test_nonfinite_filled_and_counted(tmp_path, fill, expected):
  data = np.arange(1.0, 37.0).reshape(6, 6)
  data[0, 0], data[1, 1], data[2, 2] = np.nan, np.inf, -np.inf
  path = str(tmp_path / "a.npy")
  np.save(path, data)
  f = scientific.read_field(path, ScientificOptions(fill=fill))
  value = np.median(data[np.isfinite(data)]) if expected is None else expected
  assert f.info["n_nonfinite"] == 3 and f.info["fill_value"] == [value]
  assert f.data[0, 0, 0] == value and f.data[1, 1, 0] == value and np.isfinite(f.data).all()
  x = scientific.to_model_input(f.data, transforms.fit_transform("log", [f.data]))
  assert np.isfinite(x).all()
  with pytest.raises(InputError, match="NaN"):
    scientific.to_model_input(data[..., None], transforms.fit_transform("linear", [f.data]), name=path)


def test_cubes_hdus_and_numpy_layouts(tmp_path):
  cube = np.stack([np.full((8, 8), float(i)) + np.eye(8) for i in range(5)])  # (planes, H, W) as FITS stores it.
  path = _write(
      tmp_path / "cube.fits",
      None,
      {"OBJECT": "multi"},
      [fits.ImageHDU(cube, name="SCI"), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1])], name="CAT")],
  )
  fields = scientific.read_fields(path, ScientificOptions(cube_slices="all"))
  assert len(fields) == 5 and fields[3].data.shape == (8, 8, 1) and fields[3].data[0, 1, 0] == 3.0
  assert fields[3].info["hdu"] == 1 and fields[3].info["extname"] == "SCI" and fields[3].name == "cube.fits[3]"
  assert fields[0].info["header"]["OBJECT"] == "multi"  # from the primary header.
  assert scientific.read_fields(path, ScientificOptions(cube_slices=(0,), keep_cards="all"))[0].info["header"] == {
      "EXTNAME": "SCI"
  }
  f = scientific.read_field(path, ScientificOptions(hdu="sci", cube_channels=(4, 0, 2)))
  assert f.data.shape == (8, 8, 3) and f.data[0, 1].tolist() == [4.0, 0.0, 2.0]
  picked = scientific.read_fields(path, ScientificOptions(hdu=1, cube_slices=(-1, 1)))
  assert [x.data[0, 1, 0] for x in picked] == [4, 1]
  # Degenerate axes dropped; gzip read transparently.
  gz = str(tmp_path / "img.fits.gz")
  with open(_write(tmp_path / "img.fits", np.ones((1, 1, 6, 7))), "rb") as src, gzip.open(gz, "wb") as dst:
    shutil.copyfileobj(src, dst)
  assert scientific.read_field(gz).data.shape == (6, 7, 1)
  # numpy: channel-last by default; npz by key or single array.
  np.save(tmp_path / "rgb.npy", np.ones((6, 6, 3)))
  assert scientific.read_field(str(tmp_path / "rgb.npy")).data.shape == (6, 6, 3)
  np.savez(tmp_path / "one.npz", field=np.ones((6, 6)))
  assert scientific.read_field(str(tmp_path / "one.npz")).info["npz_key"] == "field"
  np.savez(tmp_path / "two.npz", a=np.ones((6, 6)), b=2 * np.ones((6, 6)))
  assert scientific.read_field(str(tmp_path / "two.npz"), ScientificOptions(npz_key="b")).data.max() == 2
  assert len(scientific.list_scientific_files(str(tmp_path))) == 6


def _raises(match, path, options=ScientificOptions()):
  with pytest.raises(InputError, match=match) as e:
    scientific.read_fields(path, options)
  assert path in str(e.value)


def test_bad_inputs_name_the_file_and_the_problem(tmp_path):
  empty = _write(tmp_path / "empty.fits", None)
  _raises("no HDU with image data", empty)
  _raises("HDU 0 .* is empty", empty, ScientificOptions(hdu=0))
  table = _write(
      tmp_path / "table.fits",
      None,
      None,
      [fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])], name="EVENTS")],
  )
  _raises("no HDU with image data .*EVENTS", table)
  _raises("is a BinTableHDU, not an image", table, ScientificOptions(hdu="EVENTS"))
  _raises("HDU 5 does not exist", table, ScientificOptions(hdu=5))
  _raises("no HDU with EXTNAME 'SCI'", table, ScientificOptions(hdu="SCI"))
  _raises("1 dimensions", _write(tmp_path / "line.fits", np.ones(10)))
  _raises("4 dimensions", _write(tmp_path / "hyper.fits", np.ones((2, 2, 4, 4))))
  _raises("5 planes .*cube_slices", _write(tmp_path / "cube.fits", np.ones((5, 4, 4))))
  _raises("plane 9 does not exist", str(tmp_path / "cube.fits"), ScientificOptions(cube_slices=(9,)))
  _raises("all 16 pixels of channel 0 are NaN", _write(tmp_path / "nan.fits", np.full((4, 4), np.nan)))
  np.savez(tmp_path / "k.npz", a=np.ones((4, 4)), b=np.ones((4, 4)))
  _raises("no array 'c' \\(keys: a, b\\)", str(tmp_path / "k.npz"), ScientificOptions(npz_key="c"))
  _raises("holds 2 arrays", str(tmp_path / "k.npz"))
  (tmp_path / "junk.fits").write_bytes(b"not a fits file at all" * 10)
  _raises("not a readable FITS file", str(tmp_path / "junk.fits"))
  np.save(tmp_path / "str.npy", np.array(["a", "b"]))
  _raises("not real numbers", str(tmp_path / "str.npy"))
  # A set whose sizes differ: names the first odd file and both shapes.
  a, b, c = (_write(tmp_path / f"{n}.fits", np.ones(s)) for n, s in (("a", (8, 8)), ("b", (8, 8)), ("c", (8, 9))))
  with pytest.raises(InputError, match=r"c\.fits: shape \(8, 9, 1\) differs from \(8, 8, 1\) of .*a\.fits"):
    scientific.load_field_set([a, b, c], ScientificOptions())
  assert len(scientific.load_field_set([a, c], ScientificOptions(image_size=4, same_size=False))) == 2
  with pytest.raises(InputError, match="x2: shape"):
    scientific.check_same_shape([np.ones((2, 2)), np.ones((2, 2)), np.ones((3, 2))], ["x0", "x1", "x2"])
  with pytest.raises(InputError, match="2 channels"):
    scientific.to_model_channels(np.ones((4, 4, 2)), 3)


# ---------------------------------------------------------------------------
# Resizing and channels.


def test_resize_area_conserves_mean_and_bilinear_has_no_overshoot():
  data = _positive(n=1, size=64)[0]
  down = scientific.resize_field(data, 32)
  np.testing.assert_allclose(down, data.reshape(32, 2, 32, 2, 1).mean(axis=(1, 3)), rtol=1e-12)
  odd = scientific.resize_field(data[:50, :50], 32)
  assert odd.shape == (32, 32, 1) and odd.mean() == pytest.approx(data[:50, :50].mean(), rel=1e-12)
  up = scientific.resize_field(data[:16, :16], 40)
  assert up.min() >= data[:16, :16].min() and up.max() <= data[:16, :16].max()
  assert scientific.resize_field(data[:30], 16, resize="center_crop").shape == (16, 16, 1)
  assert scientific.resize_field(data, 20, resample="bicubic").shape == (20, 20, 1)
  assert np.array_equal(scientific.resize_field(data, 64), data)


def test_channel_mapping_replicates_and_averages():
  x = np.random.default_rng(0).normal(size=(4, 4, 1))
  rgb = scientific.to_model_channels(x, 3)
  assert rgb.shape == (4, 4, 3) and np.array_equal(rgb[..., 1:2], x)
  noisy = rgb + np.array([0.1, 0.0, -0.1])
  np.testing.assert_allclose(scientific.from_model_channels(noisy, 1), x, atol=1e-15)


# ---------------------------------------------------------------------------
# Field statistics.


@pytest.mark.parametrize("beta", [2.0, 3.0])
def test_power_spectrum_recovers_grf_slope(beta):
  g = synthetic.gaussian_random_field(64, beta, seed=4, count=4)[..., None]
  ps = science.power_spectrum(g)
  assert ps["k"][0] == 1 and ps["k"][-1] == 32 and ps["n_spectra"] == 4
  assert science.fit_power_law(ps, k_range=(2, 24))["beta"] == pytest.approx(beta, abs=0.15)


def test_histogram_and_spectrum_distances():
  real = _positive(seed=1, n=4)
  same = science.histogram_distances(science.pixel_histograms(real, real.copy()))
  assert same["wasserstein1"] == 0 and same["intersection"] == pytest.approx(1) and same["kl_real_generated"] < 1e-12
  w = [science.histogram_distances(science.pixel_histograms(real + s, real))["wasserstein1"] for s in (0.1, 0.3, 1.0)]
  assert w[0] < w[1] < w[2] and w[2] == pytest.approx(1.0, rel=0.05)
  log = science.pixel_histograms(real, real * 10, scale="log10")
  assert science.histogram_distances(log)["wasserstein1"] == pytest.approx(1.0, rel=0.05)
  ps = science.power_spectrum(real)
  assert science.spectrum_distance(ps, ps)["mean_abs_log10_ratio"] == 0
  other = science.power_spectrum(synthetic.lognormal_fields(4, 32, beta=1.5, sigma=1.2, seed=1))
  assert science.spectrum_distance(other, ps)["mean_abs_log10_ratio"] > 0.1


def test_plots_and_previews_are_valid_pngs(tmp_path):
  gen, real = _positive(seed=1), _positive(seed=2)
  result = science.compare_fields(gen, real, bins=32, scale="log10", out_dir=str(tmp_path / "eval"))
  json.dumps(result)  # JSON-ready.
  for path in result["plots"].values():
    _assert_png(path)
  _assert_png(fits_output.save_preview(str(tmp_path / "one.png"), gen[0]), (32, 32))
  _assert_png(fits_output.save_preview(str(tmp_path / "rgb.png"), _signed(bands=3)[0]), (32, 32))
  _assert_png(
      fits_output.save_preview_grid(str(tmp_path / "grid.png"), list(gen) + list(real), ncol=4),
      (4 * 34 + 2, 2 * 34 + 2),
  )
  paths = fits_output.write_sample(str(tmp_path / "samples"), 12, gen[0], formats=("fits", "npy", "png"), seed=1)
  assert sorted(os.listdir(tmp_path / "samples")) == ["sample_000012.fits", "sample_000012.npy", "sample_000012.png"]
  assert fits.getheader(paths["fits"])["DJXINDEX"] == 12 and np.load(paths["npy"]).shape == (32, 32, 1)


# ---------------------------------------------------------------------------
# Synthetic data.


def test_synthetic_generators_are_deterministic_and_write_readable_sets(tmp_path):
  a, pa = synthetic.sersic_galaxies(3, 32, seed=5, bands=3)
  b, pb = synthetic.sersic_galaxies(3, 32, seed=5, bands=3)
  assert np.array_equal(a, b) and pa == pb
  assert not np.array_equal(a, synthetic.sersic_galaxies(3, 32, seed=6, bands=3)[0])
  assert np.array_equal(synthetic.lognormal_fields(2, 16, seed=3), synthetic.lognormal_fields(2, 16, seed=3))
  assert synthetic.lognormal_fields(2, 16, seed=3).min() > 0
  # Sersic: half the light inside r_e (the definition of b_n).
  img = synthetic.sersic_image(257, n=2.5, r_eff=20.0, oversample=1)
  r = np.hypot(*np.meshgrid(np.arange(257) - 128.0, np.arange(257) - 128.0))
  assert img[r <= 20].sum() / synthetic.sersic_image(257 * 4, n=2.5, r_eff=20.0, oversample=1).sum() == pytest.approx(
      0.5, abs=0.03
  )

  rad = synthetic.write_radiation_set(str(tmp_path / "rad"), count=3, size=16, seed=2, cube_planes=2)
  fields = scientific.load_field_set(
      scientific.list_scientific_files(str(tmp_path / "rad")), ScientificOptions(cube_slices="all", image_size=8)
  )
  assert len(fields) == 5 and all(f.data.shape == (8, 8, 1) for f in fields)
  assert [f.info["n_nonfinite"] > 0 for f in fields] == [False, False, False, False, True]  # cube, field_000..002.
  assert fields[0].info["header"]["BUNIT"] == "G0"
  again = synthetic.write_radiation_set(str(tmp_path / "rad2"), count=3, size=16, seed=2, cube_planes=2)
  for p, q in zip(rad["fields"] + [rad["cube"]], again["fields"] + [again["cube"]]):
    assert np.array_equal(fits.getdata(p), fits.getdata(q), equal_nan=True)
  gals = synthetic.write_galaxy_set(str(tmp_path / "gal"), count=2, size=16, bands=3)
  g = scientific.read_field(gals[0])
  assert g.data.shape == (16, 16, 3) and g.info["header"]["FILTER"] == "gri"
