r"""Tests the paper's two claims on your own data: inverted OOD latents are Gaussian,
and separable from the model's own (ID) latents.

  python -m discovery_jax.analyze --config=configs/galaxy.py --workdir=runs/galaxy

Builds (or reuses) the banks exactly as ``sample`` does, then writes
``WORKDIR/analysis/report.json`` and plots: histograms of norms (with the chi
prediction), pairwise distances, angles at the origin and at a vertex, and of
per-dimension normality-test p-values (uniform if Gaussian).
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from discovery_jax import cli, discovery, plots, settings
from discovery_jax.data.bank import prepare_banks

PLOTS = ("norms", "distances", "angles_origin", "angles_vertex", "normality_pvalues")


def _hist_plot(path: str, series: dict, xlabel: str, title: str, vlines: dict | None = None) -> str:
  fig = plots.new_figure((6, 3.6), dpi=110)
  ax = fig.add_subplot(1, 1, 1)
  values = [np.asarray(v, np.float64).ravel() for v in series.values() if len(np.ravel(v))]
  lo, hi = min(v.min() for v in values), max(v.max() for v in values)
  bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
  for (label, v), color in zip(series.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
    if len(np.ravel(v)):
      ax.hist(np.ravel(v), bins=bins, alpha=0.55, density=True, label=f"{label} (n={len(np.ravel(v))})", color=color)
  for label, x in (vlines or {}).items():
    ax.axvline(x, color="k", ls="--", lw=1)
    ax.text(x, ax.get_ylim()[1] * 0.95, f" {label}", fontsize=7, va="top")
  ax.set_xlabel(xlabel)
  ax.set_ylabel("density")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  return plots.save_figure(fig, path)


def _offdiag(m: np.ndarray) -> np.ndarray:
  return m[np.triu_indices(m.shape[0], 1)] if m.shape[0] == m.shape[1] else m.ravel()


def analyze_banks(
    ood: np.ndarray, idb: np.ndarray, out_dir: str, *, num_dims: int = 1000, seed: int = 0, num_triples: int = 2000
) -> dict:
  """The report (JSON-ready) and plots for an OOD and an ID bank."""
  os.makedirs(out_dir, exist_ok=True)
  report = {
      "ood": discovery.describe_bank(ood, num_triples=num_triples, seed=seed),
      "id": discovery.describe_bank(idb, num_triples=num_triples, seed=seed),
      "ood_norm_vs_chi": discovery.norm_vs_chi(ood),
      "id_norm_vs_chi": discovery.norm_vs_chi(idb),
  }
  gauss_ood = discovery.gaussianity(ood, num_dims=num_dims, seed=seed, return_pvalues=True)
  gauss_id = discovery.gaussianity(idb, num_dims=num_dims, seed=seed, return_pvalues=True)
  p_ood, p_id = gauss_ood.pop("pvalues"), gauss_id.pop("pvalues")
  report["ood_gaussianity"], report["id_gaussianity"] = gauss_ood, gauss_id
  folds = max(2, min(5, ood.shape[0], idb.shape[0]))
  report["separability"] = discovery.separability(ood, idb, num_folds=folds, seed=seed)

  plots = {}
  prior_o, prior_i = discovery.fit_prior(ood), discovery.fit_prior(idb)
  plots["norms"] = _hist_plot(
      os.path.join(out_dir, "norms.png"),
      {"OOD": discovery.norms(ood), "ID": discovery.norms(idb)},
      "|x_t0|",
      "latent norms: a thin shell (dashed: sqrt(d) sigma of each fitted prior)",
      {"OOD shell": prior_o.shell_radius(), "ID shell": prior_i.shell_radius()},
  )
  plots["distances"] = _hist_plot(
      os.path.join(out_dir, "distances.png"),
      {
          "OOD-OOD": _offdiag(discovery.pairwise_distances(ood)),
          "ID-ID": _offdiag(discovery.pairwise_distances(idb)),
          "OOD-ID": discovery.pairwise_distances(ood, idb),
      },
      "pairwise distance",
      "pairwise distances (a Gaussian predicts sqrt(2d) sigma)",
  )
  plots["angles_origin"] = _hist_plot(
      os.path.join(out_dir, "angles_origin.png"),
      {
          "OOD-OOD": _offdiag(discovery.angles_at_origin(ood)),
          "ID-ID": _offdiag(discovery.angles_at_origin(idb)),
          "OOD-ID": discovery.angles_at_origin(ood, idb),
      },
      "angle at the origin (deg)",
      "angles between latents at the origin (independent Gaussian draws: ~90 deg)",
      {"90": 90.0},
  )
  plots["angles_vertex"] = _hist_plot(
      os.path.join(out_dir, "angles_vertex.png"),
      {
          "OOD": discovery.angles_at_vertex(ood, discovery.random_triples(ood.shape[0], num_triples, seed)),
          "ID": discovery.angles_at_vertex(idb, discovery.random_triples(idb.shape[0], num_triples, seed)),
      },
      "triangle angle at a vertex (deg)",
      "angles of latent triangles (Gaussian: ~60 deg)",
      {"60": 60.0},
  )
  plots["normality_pvalues"] = _hist_plot(
      os.path.join(out_dir, "normality_pvalues.png"),
      {"OOD": p_ood, "ID": p_id},
      f"per-dimension p-value ({gauss_ood['test']})",
      "normality tests per dimension (Gaussian: uniform)",
      {"alpha": 0.05},
  )
  report["plots"] = plots
  # What typical discovery's default ('auto') step reads off this bank: the residuals' spectral slope.
  step, info = discovery.resolve_step(discovery.TypicalOptions(), ood, prior_o)
  report["ood_step_spectrum"] = {
      "residual_slope": info["residual_slope"],
      "auto_power": step.step_spectrum,
      "auto_strength_range": list(step.strength_range),
  }
  sep = report["separability"]
  report["claims"] = {
      "ood_gaussian": {
          "fraction_of_dims_rejecting_normality": gauss_ood["fraction_rejected"],
          "expected_under_gaussianity": gauss_ood["expected_fraction"],
          "norm_ks_pvalue_vs_chi": report["ood_norm_vs_chi"]["ks_pvalue"],
      },
      "separable_from_id": {
          "heldout_accuracy": sep.get("heldout_accuracy"),
          "centre_distance": sep.get("centre_distance"),
          "d_quarter_ratio": sep.get("d_quarter_ratio"),
      },
  }
  return report


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  cli.prepare_workdir(workdir, config, "analyze")
  model = cli.load_model(config)
  runner = cli.make_runner(config, model, cli.make_mesh(config))
  from discovery_jax import sample  # the same keys as `sample`, so both reuse one ID bank.

  root = jax.random.key(int(config.seed))
  banks = prepare_banks(
      settings.bank_sources(config),
      workdir,
      runner,
      model_fingerprint=model.fingerprint,
      key=jax.random.fold_in(root, sample.KEY_ID_BANK),
  )
  a = config.get("analyze", ml_collections.ConfigDict())
  report = analyze_banks(
      banks["ood"].latents(),
      banks["id"].latents(),
      os.path.join(workdir, "analysis"),
      num_dims=int(a.get("num_dims", 1000)),
      seed=int(config.seed),
      num_triples=int(a.get("num_triples", 2000)),
  )
  report["banks"] = {k: {"path": b.path, "count": b.count} for k, b in banks.items()}
  cli.write_json(os.path.join(workdir, "analysis", "report.json"), report)
  g, sep = report["claims"]["ood_gaussian"], report["claims"]["separable_from_id"]
  print(
      f"Gaussian OOD prior: {100 * g['fraction_of_dims_rejecting_normality']:.1f}% of dimensions reject normality "
      f"at 5% (expected {100 * g['expected_under_gaussianity']:.0f}%); norm KS p = {g['norm_ks_pvalue_vs_chi']:.3g}"
  )
  print(
      f"Separable from ID: held-out linear accuracy {sep['heldout_accuracy']:.3f}; centre distance "
      f"{sep['centre_distance']:.2f} = {sep['d_quarter_ratio']:.2f} x sigma d^(1/4)"
  )
  step = report["ood_step_spectrum"]
  if step["residual_slope"] is not None:
    print(
        f"Discovery's step ('auto'): residual spectral slope {step['residual_slope']:.2f} -> power "
        f"{step['auto_power']:.2f}, strengths {tuple(step['auto_strength_range'])}"
    )
  print(f"-> {os.path.join(workdir, 'analysis')}")


if __name__ == "__main__":
  cli.run(main, "analyze")
