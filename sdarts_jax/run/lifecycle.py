"""Pieces every run shares (search and evaluation training): workdir checks, the saved
config, the persistent compilation cache, preemption, logging."""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import tempfile
from typing import Callable

import jax
from absl import logging as absl_logging

from sdarts_jax.run import checkpoint, metrics

# Config fields (dotted paths) that may change when a run resumes; any other difference
# is an error. (nb201.table_sha256 only checks the file; runs made before it resume too.)
RESUMABLE_FIELDS = ("log_every_steps", "compilation_cache", "checkpoints_to_keep",
                    "eval_every_epochs", "eval_bn", "checkpoint_every_epochs", "data.workers",
                    "data.threads", "nb201.table_sha256")
# Fields added to the config after runs were already being made, with the value that a
# saved config.json without them means (the behaviour before the field existed): a run
# started before second order landed resumes as the first-order run it is, one started
# before PC-DARTS and search cutout as the plain DARTS-family supernet without cutout, one
# started before cutout_schedule with the ramp that it then ran.
ADDED_FIELDS = {"alpha.order": 1, "alpha.hvp": "exact", "alpha.hvp_r": 0.01,
                "model.partial_k": 1, "model.edge_norm": False, "data.cutout": 0,
                "data.cutout_prob": 1.0, "data.cutout_schedule": "linear_ramp",
                "step": "auto", "seeds": 1, "seed_axis": "auto",
                "dtype": "float32"}


class RunError(RuntimeError):
  """A run that cannot go on (non-finite loss, incompatible workdir)."""


class Preempted(Exception):
  """SIGTERM arrived; the run saved a checkpoint and stopped. Rerun it to resume."""


# Exit status after preemption (128 + SIGTERM), so schedulers see an interrupted job.
PREEMPTED_EXIT = 143


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


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def check_resume(config, workdir: str) -> None:
  """Save config.json, or check that the one already in workdir describes the same run."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json())
  if os.path.exists(path):
    saved, now = _flatten(metrics.read_json(path)), _flatten(current)
    filled = {k: v for k, v in ADDED_FIELDS.items() if k in now and k not in saved}
    if "data.cutout_schedule" in filled and not saved.get("data.cutout", 0):
      filled["data.cutout_schedule"] = now["data.cutout_schedule"]  # no cutout: no schedule
    saved.update(filled)
    differ = sorted(k for k in set(saved) | set(now)
                    if k not in RESUMABLE_FIELDS and saved.get(k) != now.get(k))
    if differ:
      raise ValueError(f"--workdir={workdir} holds a run with a different configuration "
                       f"(fields {', '.join(differ)}); resume it with the same config or use "
                       f"a new --workdir")
  if metrics.is_writer():
    metrics.write_json(path, current, sort_keys=True)


def start(config, workdir: str) -> None:
  """Before a run loads anything: the workdir, the saved config, the compilation cache."""
  check_workdir(workdir)
  check_resume(config, workdir)
  enable_compilation_cache(config.compilation_cache)


def restore_or_init(ckpt, init: Callable, sharding, workdir: str) -> tuple[dict, dict]:
  """(state, checkpoint record) from the newest checkpoint that restores intact, else
  (init(), {}) when there is none.

  init: a jitted function returning the initial state (its shapes are the restore target).
  A checkpoint that cannot be read or fails its checksum is reported, and the one before it
  tried; once one restores, the bad ones are moved to checkpoints_damaged/. RunError when
  none restores (nothing is moved then).
  """
  steps = ckpt.all_steps()
  if not steps:
    return init(), {}
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                          jax.eval_shape(init))
  bad = []
  for step in reversed(steps):
    try:
      state, meta = ckpt.restore(step, abstract)
    except checkpoint.CheckpointError as e:
      metrics.warn(f"{e}" + ("; trying the checkpoint before it" if step != steps[0] else ""))
      bad.append(step)
      continue
    for b in bad:
      metrics.warn(f"moved the damaged checkpoint of step {b} to {ckpt.set_aside(b)}")
    log(f"resumed from step {step}")
    return state, meta
  raise RunError(f"none of the checkpoints in {ckpt.directory} (steps "
                 f"{', '.join(map(str, steps))}) can be restored (see the warnings above), so "
                 f"the run cannot resume. To start it afresh, remove {workdir} (or move it "
                 f"away) and rerun, or use a new --workdir")


def preempt(ckpt, step: int, state, meta: dict) -> None:
  """Save `state` at `step` (meta gains "preempted": True), wait for it, raise Preempted."""
  ckpt.save(step, state, dict(meta, preempted=True))
  ckpt.wait()
  raise Preempted(f"SIGTERM: saved step {step}; rerun the same command to resume")


def check_finite(values: dict[str, float], step: int, ckpt, workdir: str) -> None:
  """RunError if a metric is NaN or infinite; the last good checkpoint, if any, stays on
  disk."""
  if not all(math.isfinite(v) for v in values.values()):
    raise RunError(f"non-finite metrics at step {step}: {values}. The run stops; "
                   f"{kept_checkpoint(ckpt, workdir)}.")


def kept_checkpoint(ckpt, workdir: str) -> str:
  """What a run stopping on non-finite metrics leaves: its last good checkpoint, if any."""
  latest = ckpt.latest_step()
  return (f"the last good checkpoint (step {latest}) is kept in {workdir}/checkpoints"
          if latest is not None else "no checkpoint has been saved yet")


def enable_compilation_cache(directory: str) -> None:
  """JAX's persistent compilation cache: a rerun or resumed run does not compile again.

  Off for CPU runs over more than one device, where executables loaded from the cache
  deadlock in their collectives with jax 0.10.2: across processes, their first gloo
  collective failed (a 30 s key-value timeout) in 3 of 3 tries; in one process over 4
  devices (`--xla_force_host_platform_device_count`), a device ran two all-reduces of one
  step at once while the others waited in one of them, until XLA aborted the process after
  40 s ("Termination timeout for all reduce"): 1 of 4 tiny searches that loaded their
  programs from a warm cache, and the test suite's occasional "Fatal Python error:
  Aborted". Freshly compiled executables never did."""
  if directory and jax.default_backend() == "cpu" and jax.device_count() > 1:
    log("the compilation cache is off for CPU runs over several devices (executables "
        "loaded from it deadlock in their collectives with this JAX)")
    return
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


def as_command(fn: Callable, *args):
  """fn(*args) for a command line: a configuration, data or run error ends the process
  with one `error:` line on stderr and status 2 (no traceback), a preemption with
  PREEMPTED_EXIT."""
  try:
    return fn(*args)
  except (ValueError, RunError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Preempted as e:
    print(f"\n{e}", file=sys.stderr)
    sys.exit(PREEMPTED_EXIT)


# Library log lines that tell the person running a command nothing (below ERROR): JAX
# probing for accelerator backends that are not installed, and TFDS probing for a dataset
# that is not prepared (`sdarts_jax.data.pipeline` says itself what is missing and what to do).
LOG_NOISE = ("Unable to initialize backend", "is experimental and not all JAX functionality")
NOISY_PACKAGES = (f"{os.sep}tensorflow_datasets{os.sep}",)


def quiet_libraries() -> None:
  """Keep library INFO logs (orbax writes several lines per checkpoint) and the noise above
  off the console."""
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in ("jax._src.xla_bridge", "absl"):  # TFDS logs through absl's logger
    logging.getLogger(name).addFilter(_not_noise)
  logging.getLogger("matplotlib").setLevel(logging.WARNING)  # "generated new fontManager"


def _not_noise(record: logging.LogRecord) -> bool:
  """False for a record quiet_libraries drops (LOG_NOISE, NOISY_PACKAGES)."""
  return record.levelno >= logging.ERROR or not (
      any(text in record.getMessage() for text in LOG_NOISE)
      or any(package in record.pathname for package in NOISY_PACKAGES))


def log(text: str) -> None:
  if metrics.is_writer():
    print(text, flush=True)
