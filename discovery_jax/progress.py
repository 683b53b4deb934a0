"""Throughput and ETA logging for long loops (images/s, samples/s, candidates/s)."""

from __future__ import annotations

import time

from absl import logging


class Progress:
  """Logs ``done/total``, rate and ETA at most every ``interval`` seconds.

  >>> p = Progress(1000, "images", "invert")
  >>> p.update(8)   # after each batch
  """

  def __init__(self, total: int, unit: str = "items", desc: str = "", interval: float = 10.0, already_done: int = 0):
    self.total, self.unit, self.desc, self.interval = int(total), unit, desc, interval
    self.done = int(already_done)
    self.start = time.time()
    self.counted = 0
    self._last_log = 0.0

  @property
  def rate(self) -> float:
    elapsed = time.time() - self.start
    return self.counted / elapsed if elapsed > 0 else 0.0

  def update(self, n: int) -> None:
    self.done += n
    self.counted += n
    now = time.time()
    if now - self._last_log >= self.interval or self.done >= self.total:
      self._last_log = now
      logging.info("%s", self.line())

  def line(self) -> str:
    rate = self.rate
    remaining = max(self.total - self.done, 0)
    eta = remaining / rate if rate > 0 else float("inf")
    eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
    return (
        f"{self.desc}: {self.done}/{self.total} {self.unit} "
        f"({100.0 * self.done / max(self.total, 1):.0f}%), {rate:.2f} {self.unit}/s, ETA {eta_text}"
    )

  def summary(self) -> dict:
    return {
        "count": self.counted,
        "seconds": round(time.time() - self.start, 3),
        f"{self.unit}_per_second": round(self.rate, 3),
    }
