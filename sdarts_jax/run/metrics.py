"""Run outputs: JSON files and lines, TensorBoard and a progress line; only process 0 writes.

Readers name the file they could not parse; a half-written last line of metrics.jsonl (a
process killed mid-write) is skipped with a warning, and cut off before a resumed run
appends to the file.
"""
from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np


def is_writer() -> bool:
  return jax.process_index() == 0


def warn(text: str) -> None:
  """A `warning:` line on stderr (process 0 only)."""
  if is_writer():
    print(f"warning: {text}", file=sys.stderr, flush=True)


def read_json(path: str):
  """The JSON value in `path`; ValueError naming the file and the place when it is not JSON."""
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON (line {e.lineno} col {e.colno}: "
                       f"{e.msg})") from None


def write_json(path: str, value, **dump_options) -> None:
  """Write `value` to `path` indented, through a temporary file, so that a process killed
  meanwhile leaves the old file or the new one, never half of one."""
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=1, **dump_options)
    f.write("\n")
  os.replace(path + ".tmp", path)


def read_records(workdir: str, kind: str | None = None) -> list[dict]:
  """The records of workdir/metrics.jsonl (those of one `kind`, "epoch", "hessian", ...,
  when given), in order. ValueError naming the file and line for an unreadable line, except
  a half-written last one, which is skipped with a warning."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise ValueError(f"{workdir} has no metrics.jsonl: is it a run's workdir?")
  with open(path) as f:
    lines = f.read().split("\n")
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if number == len(lines):  # no newline after it: the writer was killed mid-line
        warn(f"{path}: skipped the half-written last line {number} ({len(line)} characters)")
        continue
      raise ValueError(f"{path}: line {number} is not valid JSON (col {e.colno}: "
                       f"{e.msg})") from None
  return [r for r in records if kind is None or r["kind"] == kind]


def _drop_partial_line(path: str) -> None:
  """Cut a half-written last line off `path` (a process killed mid-write), with a warning,
  so that appended records start on a line of their own."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    data = f.read()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
      f.truncate(keep)
      warn(f"{path}: removed a half-written last line ({len(data) - keep} bytes) left by an "
           f"interrupted run")


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
    path = os.path.join(workdir, "metrics.jsonl")
    _drop_partial_line(path)
    self.jsonl = open(path, "a")
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
