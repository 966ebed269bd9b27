"""Compilation counts: the steps and epoch boundaries after the first epoch compile nothing,
and a resumed run in a fresh process compiles nothing that a fresh start does not."""
import collections
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax

from conftest import tiny_config
from sdarts_jax.run import lifecycle, programs
from sdarts_jax.search import run_search

COMPILE = "/jax/core/compile/backend_compile_duration"  # every compile request (hit or miss)
ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_steps_and_epoch_ends_compile_nothing_new(tmp_path, monkeypatch):
  # An empty cache of shared executables, so that the first epoch compiles whatever
  # earlier tests of this process compiled already.
  monkeypatch.setattr(programs, "_EXECUTABLES", collections.OrderedDict())
  counts = collections.Counter()
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: counts.update([name]))
  config = tiny_config("darts", epochs=3)  # 4 steps per epoch
  per_step = []

  def on_sigterm():  # the flag is read once per step, before the step's epoch-end work
    return lambda: per_step.append(counts[COMPILE]) and False

  monkeypatch.setattr(lifecycle, "on_sigterm", on_sigterm)
  try:
    run_search.train_and_evaluate(config, str(tmp_path / "full"))
  finally:
    jax.monitoring.clear_event_listeners()
  assert len(per_step) == 12
  # Everything is compiled by the end of the first epoch (step, evaluation, epoch-end
  # helpers); the steps of epochs 2 and 3 and the end of epoch 2 compile nothing.
  assert per_step[0] > 0 and per_step[-1] == per_step[4], per_step


# A search in a fresh process that reports the compile requests its steps made (JAX's
# compile events; a persistent-cache hit still counts as a request, so this measures what
# the program asks XLA for, not what the cache holds).
_COUNT = textwrap.dedent("""
    import collections, json, sys
    sys.path.insert(0, sys.argv[1])
    from conftest import tiny_config, sigterm_after  # sets XLA_FLAGS: first
    import jax
    from sdarts_jax.run import lifecycle
    from sdarts_jax.search import run_search
    counts = collections.Counter()
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: counts.update([name]))
    if sys.argv[3] != "0":
      lifecycle.on_sigterm = sigterm_after(int(sys.argv[3]))
    config = tiny_config("darts", epochs=2, compilation_cache=sys.argv[4],
                         **{"data.synthetic_examples": 32})  # 2 steps per epoch
    try:
      run_search.train_and_evaluate(config, sys.argv[2])
    except lifecycle.Preempted:
      pass
    print(json.dumps(counts[sys.argv[5]]))
    """)


# One CPU device, on which the persistent cache is on (`lifecycle.enable_compilation_cache`),
# so that the resumed process loads its programs instead of compiling them again.
_ONE_DEVICE = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                       if not f.startswith("--xla_force_host_platform_device_count"))
_ONE_DEVICE += " --xla_force_host_platform_device_count=1"


def _compiles(workdir, stop_after: int) -> int:
  """Compile requests of a search in a new process (stopped by a simulated SIGTERM after
  `stop_after` steps unless 0); a persistent cache next to workdir keeps the second fast."""
  out = subprocess.run([sys.executable, "-c", _COUNT, str(ROOT / "tests"), str(workdir),
                        str(stop_after), str(workdir.parent / "xla"), COMPILE], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": _ONE_DEVICE})
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_resume_in_a_fresh_process_compiles_no_more_than_a_fresh_start(tmp_path):
  """A fresh start stopped by a simulated SIGTERM after 3 of 4 steps (past the first
  epoch's end, by which everything is compiled: see the test above), then resumed in a
  new process through the second epoch's end: the resumed process requests no more
  compilations than the fresh start did (restoring the checkpoint adds no programs and
  changes no shapes or shardings)."""
  fresh = _compiles(tmp_path / "run", 3)
  resumed = _compiles(tmp_path / "run", 0)
  assert fresh > 0 and resumed <= fresh, (fresh, resumed)
  metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in metrics]
  assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
  assert [r["step"] for r in records if r["kind"] == "epoch"] == [2, 4]


def test_runs_of_one_process_share_their_executables(monkeypatch):
  """`programs.jit`: a second function that lowers to the same program (a fresh closure of
  the same computation, as every run builds) reuses the first's executable; another
  constant, shape or device set compiles anew; results are those of `jax.jit`."""
  import numpy as np
  from sdarts_jax.run import parallel
  monkeypatch.setattr(programs, "_EXECUTABLES", collections.OrderedDict())
  counts = collections.Counter()
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: counts.update([name]))
  _, rep, shard = parallel.data_parallel(8)

  def step(scale):  # a new function object per call, as a run's step
    return programs.jit(lambda s, b: (s * scale + b.sum(), b.mean()), in_shardings=(rep, shard),
                        out_shardings=(rep, rep), donate_argnums=0)

  batch = np.arange(16, dtype=np.float32).reshape(8, 2)
  ones = [np.ones(3, np.float32) for _ in range(3)] + [np.ones(4, np.float32)]
  on_device = [jax.device_put(np.ones(3, np.float32), d) for d in jax.devices()[:2]]
  try:
    first = step(2.0)(ones[0], batch)
    n = counts[COMPILE]
    again = step(2.0)(ones[1], batch)
    assert counts[COMPILE] == n  # shared: no compile request at all
    other = step(3.0)(ones[2], batch)
    assert counts[COMPILE] == n + 1
    step(2.0)(ones[3], batch)
    assert counts[COMPILE] == n + 2
    # The same program text on another device is another executable.
    double = lambda x: x * 2.0
    on = [programs.jit(double)(x) for x in on_device]
    assert counts[COMPILE] == n + 4
    assert [o.devices() for o in on] == [{d} for d in jax.devices()[:2]]
  finally:
    jax.monitoring.clear_event_listeners()
  want = jax.jit(lambda s, b: (s * 2.0 + b.sum(), b.mean()))(np.ones(3, np.float32), batch)
  for got in (first, again):
    np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(other[0], np.ones(3) * 3.0 + batch.sum())
