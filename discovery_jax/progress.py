"""Throughput and ETA logging for long loops (images/s, samples/s, candidates/s), and
the few lines a user of an entry point needs.

Libraries log through absl at INFO. The entry points (``cli.run``) keep absl quiet by
default and call ``set_console(True)``: progress and ``say`` lines then go to stderr
as plain one-line messages (``--verbosity=0`` brings back the full INFO log).
"""

from __future__ import annotations

import sys
import time

from absl import logging

_console = {"on": False, "prefix": ""}


def set_console(on: bool, prefix: str = "") -> None:
  """Progress lines and ``say`` messages to stderr (``prefix: message``) instead of the log."""
  _console["on"], _console["prefix"] = bool(on), prefix


def say(message: str, *args) -> None:
  """One line for the user: stderr in an entry point's console mode, else an INFO log line."""
  text = message % args if args else message
  if _console["on"]:
    prefix = _console["prefix"]
    print(f"{prefix}: {text}" if prefix else text, file=sys.stderr, flush=True)
  else:
    logging.info("%s", text)


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
      say("%s", self.line())

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
