"""Compilation counts: steps, epoch boundaries and a resume compile nothing new."""
import collections

import jax
import pytest

from conftest import sigterm_after, tiny_config
from sdarts_jax import run, search

COMPILE = "/jax/core/compile/backend_compile_duration"  # every compile request (hit or miss)
REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"
HITS = "/jax/compilation_cache/cache_hits"


@pytest.fixture
def events(tmp_path):
  """Counts of JAX's compilation events, with a fresh persistent cache that keeps every
  executable (as a user's cache keeps the step)."""
  counts = collections.Counter()
  jax.monitoring.register_event_listener(lambda name, **kw: counts.update([name]))
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: counts.update([name]))
  before = (jax.config.jax_compilation_cache_dir,
            jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield counts
  jax.config.update("jax_compilation_cache_dir", before[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
  jax.monitoring.clear_event_listeners()


def test_steps_epoch_ends_and_resume_compile_nothing_new(tmp_path, monkeypatch, events):
  config = tiny_config("darts", epochs=3)  # 4 steps per epoch
  per_step = []

  def on_sigterm():  # the flag is read once per step, before the step's epoch-end work
    return lambda: per_step.append(events[COMPILE]) and False

  monkeypatch.setattr(run, "on_sigterm", on_sigterm)
  search.train_and_evaluate(config, str(tmp_path / "full"))
  assert len(per_step) == 12
  # Everything is compiled by the end of the first epoch (step, evaluation, epoch-end
  # helpers); the steps of epochs 2 and 3 and the end of epoch 2 compile nothing.
  assert per_step[0] > 0 and per_step[-1] == per_step[4], per_step

  # A run preempted mid-epoch and resumed in a new process finds every executable in the
  # persistent cache (a fresh process has no in-memory cache; clearing it stands in).
  monkeypatch.setattr(run, "on_sigterm", sigterm_after(6))
  with pytest.raises(run.Preempted):
    search.train_and_evaluate(config, str(tmp_path / "resumed"))
  monkeypatch.undo()
  jax.clear_caches()
  requests, hits = events[REQUESTS], events[HITS]
  search.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert events[REQUESTS] - requests > 0
  assert events[HITS] - hits == events[REQUESTS] - requests
