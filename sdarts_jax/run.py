"""Pieces every run shares (search and evaluation training): workdir checks, the saved
config, the persistent compilation cache, preemption, logging."""
from __future__ import annotations

import json
import os
import signal
import tempfile

import jax
from absl import logging as absl_logging

from sdarts_jax import metrics

# Config fields that may change when a run resumes; any other difference is an error.
RESUMABLE_FIELDS = ("log_every_steps", "compilation_cache", "checkpoints_to_keep",
                    "eval_every_epochs", "checkpoint_every_epochs")


class RunError(RuntimeError):
  """A run that cannot go on (non-finite loss, incompatible workdir)."""


def check_workdir(workdir: str) -> None:
  """ValueError unless `workdir` can be created and written."""
  if not workdir:
    raise ValueError("--workdir is required: the directory for checkpoints, metrics and "
                     "genotypes")
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ValueError(f"--workdir={workdir} is not a writable directory ({e.strerror})") from None


def check_resume(config, workdir: str) -> None:
  """Save config.json, or check that the one already in workdir describes the same run."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    differ = sorted(k for k in set(saved) | set(current)
                    if k not in RESUMABLE_FIELDS and saved.get(k) != current.get(k))
    if differ:
      raise ValueError(f"--workdir={workdir} holds a run with a different configuration "
                       f"(fields {', '.join(differ)}); resume it with the same config or use "
                       f"a new --workdir")
  if metrics.is_writer():
    with open(path, "w") as f:
      json.dump(current, f, indent=1, sort_keys=True)


def enable_compilation_cache(directory: str) -> None:
  """JAX's persistent compilation cache: a rerun or resumed run does not compile again."""
  if directory:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def on_sigterm():
  """Install a SIGTERM handler; returns a function telling whether SIGTERM arrived."""
  flag = {"set": False}

  def handler(signum, frame):
    flag["set"] = True

  signal.signal(signal.SIGTERM, handler)
  return lambda: flag["set"]


def quiet_libraries() -> None:
  """Keep library INFO logs (orbax writes several lines per checkpoint) off the console."""
  absl_logging.set_verbosity(absl_logging.WARNING)


def log(text: str) -> None:
  if metrics.is_writer():
    print(text, flush=True)
