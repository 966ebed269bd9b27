"""Checkpoints with orbax's CheckpointManager: the whole search state plus a JSON record.

The state pytree holds weights, BatchNorm statistics, alpha, both optimizer states and the
step; random numbers and data order are functions of (seed, step), so restoring the state
restores the run exactly.
"""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores {"state": pytree, "meta": JSON dict} under `directory`; keeps the
  newest `max_to_keep` checkpoints (0: all of them, for analyses over a run)."""

  def __init__(self, directory: str, max_to_keep: int):
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep or None, create=True),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Write asynchronously; `wait` blocks until it is on disk."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore(self, step: int, abstract_state: Any = None) -> tuple[Any, dict]:
    """abstract_state: jax.ShapeDtypeStruct pytree (with shardings) of the state; None
    restores the arrays as saved, on the default device (for analysis)."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out.state, out.meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
