"""Field statistics for evaluating generated scientific data against held-out real data.

FID is meaningless for a radiation field; the field's own statistics are not
(docs/method.md, "Evaluation"). Two families, both computed on PHYSICAL values (after the
inverse transform), optionally on a log10/asinh value scale:

- One-point statistics: pixel-value histograms of both sets on COMMON bins
  (density-normalised), and their distances: Wasserstein-1 (earth mover's, in
  value units; also divided by the real set's std), histogram intersection
  (1 = identical), KL(real || generated) and Jensen-Shannon with additive
  smoothing (empty bins would make KL infinite).
- Two-point statistics: radially averaged power spectra. Per sample and
  channel: subtract the mean, 2-D FFT, |F|^2 / (H W), averaged over annuli of
  integer wavenumber k = round(|f| * min(H, W)) (cycles per image side),
  k = 1 .. min(H, W) // 2 (below Nyquist; k = 0, the mean, dropped); then the
  mean over samples and channels. Distance between spectra: the mean (and max)
  |log10(P_gen / P_real)| over k.

Everything returned is JSON-ready (floats and lists). Plots use matplotlib's
Agg canvas directly (no pyplot state, no display needed) and are written
atomically as PNG.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from discovery_jax import plots

SCALES = ("linear", "log10", "asinh")


def _as_batches(fields: np.ndarray | Sequence[np.ndarray] | Iterable[np.ndarray]) -> list[np.ndarray]:
  """An (N, H, W, C) array, one (H, W[, C]) sample, or an iterable of either -> list of (n, H, W, C).

  A 3-D array is ONE (H, W, C) sample; pass a stack of 2-D fields as (N, H, W, 1).
  """
  if isinstance(fields, np.ndarray):
    fields = [fields]
  out = []
  for f in fields:
    f = np.asarray(f, np.float64)
    if f.ndim == 2:
      f = f[None, ..., None]
    elif f.ndim == 3:
      f = f[None]
    if f.ndim != 4:
      raise ValueError(f"fields must be (H, W), (H, W, C) or (N, H, W, C), got shape {f.shape}")
    out.append(f)
  if not out:
    raise ValueError("no fields given")
  return out


def apply_scale(values: np.ndarray, scale: str = "linear", softening: float = 1.0) -> np.ndarray:
  """Value scale for histograms: 'linear', 'log10' (non-positive values dropped), 'asinh'(x / softening)."""
  values = np.asarray(values, np.float64)
  if scale == "linear":
    return values
  if scale == "log10":
    return np.log10(values[values > 0])
  if scale == "asinh":
    return np.arcsinh(values / softening)
  raise ValueError(f"histogram scale must be one of {', '.join(SCALES)}, got {scale!r}")


def _values(fields, scale: str, softening: float) -> tuple[np.ndarray, dict]:
  raw = np.concatenate([b.ravel() for b in _as_batches(fields)])
  finite = raw[np.isfinite(raw)]
  vals = apply_scale(finite, scale, softening)
  return vals, {
      "n_values": int(raw.size),
      "n_nonfinite": int(raw.size - finite.size),
      "n_dropped_nonpositive": int(finite.size - vals.size),
  }


def pixel_histograms(
    generated,
    real,
    *,
    bins: int = 64,
    value_range: tuple[float, float] | None = None,
    scale: str = "linear",
    softening: float = 1.0,
) -> dict:
  """Histograms of both sets on common bins (default: the pooled min..max of both)."""
  gen, gen_info = _values(generated, scale, softening)
  ref, ref_info = _values(real, scale, softening)
  if gen.size == 0 or ref.size == 0:
    raise ValueError(f"no usable values to histogram (generated {gen.size}, real {ref.size}; scale {scale})")
  if value_range is None:
    lo, hi = min(gen.min(), ref.min()), max(gen.max(), ref.max())
    if hi <= lo:
      lo, hi = lo - 0.5, hi + 0.5
  else:
    lo, hi = (float(v) for v in value_range)
  edges = np.linspace(lo, hi, int(bins) + 1)
  # Values outside a given range go to the edge bins (no mass is silently lost).
  count = lambda v: np.histogram(np.clip(v, lo, hi), bins=edges)[0]
  return {
      "edges": edges.tolist(),
      "generated": count(gen).tolist(),
      "real": count(ref).tolist(),
      "scale": scale,
      "softening": float(softening),
      "generated_info": gen_info,
      "real_info": ref_info,
      "generated_mean": float(gen.mean()),
      "generated_std": float(gen.std()),
      "real_mean": float(ref.mean()),
      "real_std": float(ref.std()),
  }


def histogram_distances(hist: dict, *, smoothing: float = 0.5) -> dict:
  """Distances between the two histograms of ``pixel_histograms`` (same bins).

  wasserstein1: between the binned distributions (bin centres weighted by
  counts; scipy.stats.wasserstein_distance), in scaled value units; 0 for
  identical sets. intersection: sum of min(p, q), 1 for identical sets.
  kl_real_generated and js use ``smoothing`` pseudo-counts per bin.
  """
  from scipy import stats

  edges = np.asarray(hist["edges"])
  centres = 0.5 * (edges[1:] + edges[:-1])
  g = np.asarray(hist["generated"], np.float64)
  r = np.asarray(hist["real"], np.float64)
  p_g, p_r = g / g.sum(), r / r.sum()
  w1 = float(stats.wasserstein_distance(centres, centres, u_weights=g, v_weights=r))
  sg = (g + smoothing) / (g.sum() + smoothing * g.size)
  sr = (r + smoothing) / (r.sum() + smoothing * r.size)
  m = 0.5 * (sg + sr)
  kl = lambda a, b: float(np.sum(a * np.log(a / b)))
  std = hist.get("real_std") or 0.0
  return {
      "wasserstein1": w1,
      "wasserstein1_over_real_std": w1 / std if std > 0 else None,
      "intersection": float(np.minimum(p_g, p_r).sum()),
      "kl_real_generated": kl(sr, sg),
      "js": 0.5 * kl(sr, m) + 0.5 * kl(sg, m),
      "smoothing": float(smoothing),
      "mean_difference": float(hist["generated_mean"] - hist["real_mean"]),
  }


# ---------------------------------------------------------------------------
# Power spectra.


def _k_bins(h: int, w: int) -> tuple[np.ndarray, int]:
  fy = np.fft.fftfreq(h)[:, None]
  fx = np.fft.fftfreq(w)[None, :]
  k = np.rint(np.sqrt(fx**2 + fy**2) * min(h, w)).astype(int)
  return k, min(h, w) // 2


def power_spectrum(fields, *, window: str | None = None) -> dict:
  """Radially averaged power spectrum, mean over samples and channels.

  ``window='hann'`` tapers non-periodic images (e.g. cutouts with bright edges)
  before the FFT; the default None suits periodic fields and images whose edges
  are sky. Returns {'k', 'power', 'power_std' (spread over sample-channels), 'n_spectra'}.
  """
  batches = _as_batches(fields)
  h, w = batches[0].shape[1:3]
  kmap, kmax = _k_bins(h, w)
  keep = (kmap >= 1) & (kmap <= kmax)
  counts = np.bincount(kmap[keep], minlength=kmax + 1)[1:]
  taper = 1.0
  if window == "hann":
    taper = (np.hanning(h)[:, None] * np.hanning(w)[None, :])[None, ..., None]
  elif window is not None:
    raise ValueError(f"window must be None or 'hann', got {window!r}")
  spectra = []
  for b in batches:
    if b.shape[1:3] != (h, w):
      raise ValueError(f"power spectra need fields of one size, got {(h, w)} and {b.shape[1:3]}")
    b = np.nan_to_num(b - np.nanmean(b, axis=(1, 2), keepdims=True)) * taper
    p2 = np.abs(np.fft.fft2(b, axes=(1, 2))) ** 2 / (h * w)  # (n, H, W, C)
    p2 = np.moveaxis(p2, -1, 1).reshape(-1, h, w)  # (n*C, H, W)
    for p in p2:
      spectra.append(np.bincount(kmap[keep], weights=p[keep], minlength=kmax + 1)[1:] / counts)
  spectra = np.asarray(spectra)
  return {
      "k": np.arange(1, kmax + 1).tolist(),
      "power": spectra.mean(axis=0).tolist(),
      "power_std": spectra.std(axis=0).tolist(),
      "n_spectra": int(len(spectra)),
  }


def spectrum_distance(ps_generated: dict, ps_real: dict, *, k_range: tuple[float, float] | None = None) -> dict:
  """Mean and max |log10(P_gen / P_real)| over the common k with positive power."""
  kg, pg = np.asarray(ps_generated["k"]), np.asarray(ps_generated["power"])
  kr, pr = np.asarray(ps_real["k"]), np.asarray(ps_real["power"])
  common, ig, ir = np.intersect1d(kg, kr, return_indices=True)
  ok = (pg[ig] > 0) & (pr[ir] > 0)
  if k_range is not None:
    ok &= (common >= k_range[0]) & (common <= k_range[1])
  if not ok.any():
    raise ValueError("the power spectra share no wavenumber with positive power")
  ratio = np.abs(np.log10(pg[ig][ok] / pr[ir][ok]))
  return {"mean_abs_log10_ratio": float(ratio.mean()), "max_abs_log10_ratio": float(ratio.max()), "n_k": int(ok.sum())}


def fit_power_law(ps: dict, *, k_range: tuple[float, float] = (2, np.inf)) -> dict:
  """Least-squares slope of log P vs log k: P ∝ k^-beta -> {'beta', 'amplitude'}."""
  k, p = np.asarray(ps["k"], np.float64), np.asarray(ps["power"], np.float64)
  ok = (k >= k_range[0]) & (k <= k_range[1]) & (p > 0)
  if ok.sum() < 2:
    raise ValueError(f"fewer than 2 wavenumbers in {k_range} to fit")
  slope, intercept = np.polyfit(np.log10(k[ok]), np.log10(p[ok]), 1)
  return {"beta": float(-slope), "amplitude": float(10**intercept), "k_range": [float(k[ok][0]), float(k[ok][-1])]}


# ---------------------------------------------------------------------------
# Plots.


def plot_histograms(
    hist: dict,
    path: str,
    *,
    labels: tuple[str, str] = ("generated", "real"),
    title: str | None = None,
    log_y: bool = True,
) -> str:
  """Density histograms of both sets overlaid (steps), saved as PNG."""
  fig = plots.new_figure()
  ax = fig.add_subplot(1, 1, 1)
  edges = np.asarray(hist["edges"])
  for key, label, color in (("real", labels[1], "black"), ("generated", labels[0], "tab:orange")):
    counts = np.asarray(hist[key], np.float64)
    density = counts / max(counts.sum(), 1) / np.diff(edges)
    ax.stairs(density, edges, label=f"{label}", color=color, linewidth=1.4)
  if log_y:
    ax.set_yscale("log")
  scale = hist.get("scale", "linear")
  ax.set_xlabel(
      {"linear": "pixel value", "log10": "log10 pixel value", "asinh": "asinh(pixel value / softening)"}.get(
          scale, "pixel value"
      )
  )
  ax.set_ylabel("density")
  ax.legend(frameon=False)
  if title:
    ax.set_title(title)
  return plots.save_figure(fig, path)


def plot_power_spectra(spectra: dict[str, dict], path: str, *, title: str | None = None) -> str:
  """Power spectra {label: power_spectrum(...)} on log-log axes (shaded: +-1 std), saved as PNG."""
  fig = plots.new_figure()
  ax = fig.add_subplot(1, 1, 1)
  for label, ps in spectra.items():
    k, p = np.asarray(ps["k"], np.float64), np.asarray(ps["power"], np.float64)
    ok = p > 0
    (line,) = ax.plot(k[ok], p[ok], label=label, linewidth=1.4)
    if "power_std" in ps:
      s = np.asarray(ps["power_std"], np.float64)[ok]
      ax.fill_between(
          k[ok], np.maximum(p[ok] - s, p[ok] * 1e-3), p[ok] + s, color=line.get_color(), alpha=0.2, linewidth=0
      )
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("k (cycles per image side)")
  ax.set_ylabel("P(k)")
  ax.legend(frameon=False)
  if title:
    ax.set_title(title)
  return plots.save_figure(fig, path)


def compare_fields(
    generated,
    real,
    *,
    bins: int = 64,
    scale: str = "linear",
    softening: float = 1.0,
    out_dir: str | None = None,
    prefix: str = "fields",
    labels: tuple[str, str] = ("generated", "real"),
    window: str | None = None,
) -> dict:
  """Histograms, their distances, power spectra and their distance; plots into ``out_dir``.

  JSON-ready; this is the astrophysical counterpart of FID for ``evaluate``.
  """
  hist = pixel_histograms(generated, real, bins=bins, scale=scale, softening=softening)
  ps_gen = power_spectrum(generated, window=window)
  ps_real = power_spectrum(real, window=window)
  result = {
      "histogram": hist,
      "histogram_distances": histogram_distances(hist),
      "power_spectrum": {labels[0]: ps_gen, labels[1]: ps_real},
      "power_spectrum_distance": spectrum_distance(ps_gen, ps_real),
  }
  if out_dir is not None:
    result["plots"] = {
        "histogram": plot_histograms(hist, os.path.join(out_dir, f"{prefix}_histogram.png"), labels=labels),
        "power_spectrum": plot_power_spectra(
            {labels[0]: ps_gen, labels[1]: ps_real}, os.path.join(out_dir, f"{prefix}_power_spectrum.png")
        ),
    }
  return result
