"""Run outputs: JSON lines, TensorBoard and a progress line; only process 0 writes."""
from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np


def is_writer() -> bool:
  return jax.process_index() == 0


def _plain(value):
  if isinstance(value, (np.ndarray, jax.Array)):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  return value


class MetricWriter:
  """Appends {"kind", "step", ...} records to workdir/metrics.jsonl and writes scalars to
  TensorBoard (workdir/tensorboard)."""

  def __init__(self, workdir: str):
    self.enabled = is_writer()
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter  # heavy import, writer process only
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, kind: str, step: int, values: dict) -> None:
    """values: name -> scalar (to TensorBoard as kind/name) or any JSON-able value."""
    if not self.enabled:
      return
    record = {"kind": kind, "step": int(step), **_plain(values)}
    self.jsonl.write(json.dumps(record) + "\n")
    self.jsonl.flush()
    for name, value in record.items():
      if name not in ("kind", "step") and isinstance(value, (int, float)):
        self.tb.add_scalar(f"{kind}/{name}", value, int(step))
    self.tb.flush()

  def text(self, tag: str, step: int, text: str) -> None:
    if self.enabled:
      self.tb.add_text(tag, text, int(step))

  def heatmap(self, tag: str, step: int, matrix: np.ndarray) -> None:
    """A [rows, cols] matrix in [0, 1] as a grey image, one pixel block per entry."""
    if self.enabled:
      image = np.kron(np.clip(matrix, 0, 1), np.ones((8, 8)))[None]
      self.tb.add_image(tag, image, int(step), dataformats="CHW")

  def close(self) -> None:
    if self.enabled:
      self.jsonl.close()
      self.tb.close()


class Progress:
  """A one-line progress report on stderr: position, images/s (train images, from step time
  alone), ETA and a few metrics.

  Rewrites the line in place on a terminal; prints a line every `every` steps otherwise.
  """

  def __init__(self, total_steps: int, images_per_step: int, every: int):
    self.total, self.images, self.every = total_steps, images_per_step, max(1, every)
    self.tty = sys.stderr.isatty()
    self.enabled = is_writer()
    self.calls, self.steps, self.seconds = 0, 0, 0.0

  def update(self, step: int, seconds: float, text: str) -> None:
    """step: steps done so far (after this one); seconds: how long this one took. The
    first step of a process (which compiles) is left out of the rate."""
    if not self.enabled:
      return
    self.calls += 1
    if self.calls > 1:
      self.steps, self.seconds = self.steps + 1, self.seconds + seconds
    if self.steps < 1 or (not self.tty and step % self.every and step != self.total):
      return
    rate = self.steps / max(self.seconds, 1e-9)
    eta = (self.total - step) / rate if rate else float("inf")
    line = (f"step {step}/{self.total} | {rate * self.images:.1f} img/s | "
            f"ETA {_clock(eta)} | {text}")
    if self.tty:
      sys.stderr.write("\r" + line[:200].ljust(120))
      if step == self.total:
        sys.stderr.write("\n")
    else:
      sys.stderr.write(line + "\n")
    sys.stderr.flush()

  def newline(self) -> None:
    if self.enabled and self.tty:
      sys.stderr.write("\n")


def _clock(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
