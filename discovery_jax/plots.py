"""Figures without pyplot state: matplotlib's Agg canvas directly (no display, safe
in threads and on headless hosts), written atomically as PNG."""

from __future__ import annotations

import os

from discovery_jax import fileio


def new_figure(figsize: tuple[float, float] = (5.0, 3.6), dpi: int = 100):
  """A matplotlib Figure on its own Agg canvas."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=figsize, dpi=dpi)
  FigureCanvasAgg(fig)
  return fig


def save_figure(fig, path: str) -> str:
  """Lays out ``fig`` and writes it to ``path`` (PNG) atomically; returns ``path``."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.tight_layout()
  fileio.atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"), ".png")
  return path
