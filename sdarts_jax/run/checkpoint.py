"""Checkpoints with orbax's CheckpointManager: the whole search state plus a JSON record.

The state pytree holds weights, BatchNorm statistics, alpha, both optimizer states and the
step; random numbers and data order are functions of (seed, step), so restoring the state
restores the run exactly. The record carries a sha256 of the state's arrays, checked on
restore, so damaged files are an error rather than a run that goes on from garbage.
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

# The record's key for the state's checksum (`state_checksum`); `restore` removes it.
CHECKSUM_KEY = "state_sha256"


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored: unreadable files, a state that does not fit the
  restore target, or arrays that do not match the checksum saved with them."""


class Checkpointer:
  """Saves and restores {"state": pytree, "meta": JSON dict} under `directory`; keeps the
  newest `max_to_keep` checkpoints (0: all of them, for analyses over a run)."""

  def __init__(self, directory: str, max_to_keep: int):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep or None, create=True),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Write asynchronously; `wait` blocks until it is on disk. The checksum of `state` is
    computed now (it waits for `state`'s arrays) and stored in the record."""
    meta = dict(meta, **{CHECKSUM_KEY: state_checksum(state)})
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore(self, step: int, abstract_state: Any = None) -> tuple[Any, dict]:
    """abstract_state: jax.ShapeDtypeStruct pytree (with shardings) of the state; None
    restores the arrays as saved, on the default device (for analysis).

    CheckpointError naming the step's folder when the files cannot be read or the arrays
    do not match their checksum (checkpoints written before checksums are not checked).
    """
    path = self.step_path(step)
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises TensorStore's read errors as a bare Exception
      raise CheckpointError(f"the checkpoint of step {step} ({path}) cannot be read: "
                            f"{_root_cause(e)}") from e
    meta = dict(out.meta)
    saved = meta.pop(CHECKSUM_KEY, None)
    if saved is not None and state_checksum(out.state) != saved:
      raise CheckpointError(f"the checkpoint of step {step} ({path}) is damaged: its arrays do "
                            f"not match the sha256 saved with them")
    return out.state, meta

  def set_aside(self, step: int) -> str:
    """Move the checkpoint of `step` to <directory>_damaged/ (kept for inspection, out of
    the manager's sight, so the step can be saved again); returns its new folder."""
    target = os.path.join(f"{self.directory}_damaged", f"{step}_{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.rename(self.step_path(step), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint set aside {step}")
    self.manager.reload()
    return target

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def state_checksum(state: Any) -> str:
  """sha256 (hex) over every array leaf of `state`: its dtype, shape and bytes.

  Leaves go in the order of their paths written as text ("opt/2/0/trace/w"), so a state
  restored without a target (tuples as lists, namedtuples as dicts) hashes the same.
  Replicated multi-host arrays are read from this process's copy.
  """
  leaves = sorted(jax.tree_util.tree_flatten_with_path(state)[0],
                  key=lambda item: "/".join(_key_text(k) for k in item[0]))
  digest = hashlib.sha256()
  for _, leaf in leaves:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      if not leaf.is_fully_replicated:
        raise ValueError("state_checksum needs the state replicated across processes")
      leaf = leaf.addressable_data(0)
    array = np.ascontiguousarray(jax.device_get(leaf))
    digest.update(f"{array.dtype.str}{array.shape};".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def _key_text(key) -> str:
  for field in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
    if hasattr(key, field):
      return str(getattr(key, field))
  return str(key)


def _root_cause(error: BaseException) -> str:
  """The first line of the innermost cause (TensorStore's, which names the file)."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).strip().splitlines()
  return (text[0] if text else type(error).__name__)[:400]
