"""Compilation counts: the steps and epoch boundaries after the first epoch compile nothing."""
import collections

import jax

from conftest import tiny_config
from sdarts_jax import run, search

COMPILE = "/jax/core/compile/backend_compile_duration"  # every compile request (hit or miss)


def test_steps_and_epoch_ends_compile_nothing_new(tmp_path, monkeypatch):
  counts = collections.Counter()
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: counts.update([name]))
  config = tiny_config("darts", epochs=3)  # 4 steps per epoch
  per_step = []

  def on_sigterm():  # the flag is read once per step, before the step's epoch-end work
    return lambda: per_step.append(counts[COMPILE]) and False

  monkeypatch.setattr(run, "on_sigterm", on_sigterm)
  try:
    search.train_and_evaluate(config, str(tmp_path / "full"))
  finally:
    jax.monitoring.clear_event_listeners()
  assert len(per_step) == 12
  # Everything is compiled by the end of the first epoch (step, evaluation, epoch-end
  # helpers); the steps of epochs 2 and 3 and the end of epoch 2 compile nothing.
  assert per_step[0] > 0 and per_step[-1] == per_step[4], per_step
