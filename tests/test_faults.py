"""A real search process killed with SIGKILL, once while a checkpoint is being written and
once in the middle of an epoch, resumes to the same final state, bit for bit, as a run that
was never interrupted.

The processes share a persistent compilation cache, so only the first one compiles; the
method is DARTS, whose step compiles in about half the time of SDARTS-ADV's and draws random
numbers from the step count as they do (data augmentation).
"""
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import final_state
from sdarts_jax.run import metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 8  # 128 synthetic images, half for the weights, batch 8
EPOCHS = 4
TOTAL = STEPS_PER_EPOCH * EPOCHS
# conftest's tiny search, with checkpoints every epoch, the progress line every step and
# no evaluation (it leaves the state alone; one function less to compile in each process).
OVERRIDES = {"space": "s3", "epochs": EPOCHS, "model.layers": 1, "model.channels": 4,
             "data.name": "synthetic", "data.image_size": 8,
             "data.synthetic_examples": 128, "data.batch_size": 8, "log_every_steps": 1,
             "checkpoint_every_epochs": 1, "eval_every_epochs": 0}
POLL_S = 0.001
WAIT_S = 300


class Search:
  """`python -m sdarts_jax.main` on the tiny config in `workdir`, its output in files."""

  def __init__(self, workdir: pathlib.Path, cache: pathlib.Path, name: str):
    self.workdir, self.log = workdir, workdir.parent / f"{name}.log"
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0",
               PYTHONUNBUFFERED="1")  # one CPU device, LLVM at -O0 as conftest
    with open(self.log, "w") as log:
      self.process = subprocess.Popen(
          [sys.executable, "-m", "sdarts_jax.main", "--config=configs/cifar10_darts.py",
           f"--workdir={workdir}", f"--config.compilation_cache={cache}", *flags],
          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

  def output(self) -> str:
    return self.log.read_text()

  def checkpoints(self) -> list[str]:
    """Names in the checkpoints folder: finished steps ("16") and writes under way."""
    folder = self.workdir / "checkpoints"
    return sorted(os.listdir(folder)) if folder.is_dir() else []

  def steps_done(self) -> list[int]:
    """The steps whose progress line the run printed ("step 19/32 | ...")."""
    return [int(step) for step in re.findall(r"^step (\d+)/", self.output(), re.M)]

  def kill_when(self, condition) -> None:
    """SIGKILL the process as soon as condition() holds; fails if it ends first."""
    deadline = time.time() + WAIT_S
    while not condition():
      assert self.process.poll() is None, f"the run ended before the kill:\n{self.output()}"
      assert time.time() < deadline, f"no kill point within {WAIT_S} s:\n{self.output()}"
      time.sleep(POLL_S)
    assert self.process.poll() is None, "the run ended before the kill"
    self.process.send_signal(signal.SIGKILL)
    assert self.process.wait() == -signal.SIGKILL

  def finish(self) -> str:
    assert self.process.wait(timeout=WAIT_S) == 0, self.output()
    return self.output()


def writing(names: list[str]) -> int | None:
  """The step whose checkpoint orbax is writing in a checkpoints folder with these names
  ("16.orbax-checkpoint-tmp"), else None."""
  steps = [int(n.split(".")[0]) for n in names if "tmp" in n]
  return max(steps, default=None)


# Python log lines, as absl prints them ("W1128 18:23:59.626 140402 file_utils.py:394] ...").
LIBRARY_LOG = re.compile(r"^[IWE]\d{4} .*\.py:\d+\] |Unable to initialize backend", re.M)


@pytest.fixture
def search(tmp_path):
  """search(workdir, name) starts a Search sharing tmp_path's compilation cache; one still
  running when the test ends (a failed test) is killed."""
  started = []

  def start(workdir: pathlib.Path, name: str) -> Search:
    started.append(Search(workdir, tmp_path / "xla_cache", name))
    return started[-1]

  yield start
  for run in started:
    if run.process.poll() is None:
      run.process.kill()
      run.process.wait()


def test_sigkill_mid_save_and_mid_epoch_resumes_bit_identical(tmp_path, search):
  full = search(tmp_path / "full", "full").finish()
  assert not LIBRARY_LOG.search(full) and "Traceback" not in full, full

  # 1. Killed while a checkpoint after epoch 1's is being written (at step `saving`).
  killed = tmp_path / "killed"
  run = search(killed, "run1")
  run.kill_when(lambda: (writing(run.checkpoints()) or 0) > STEPS_PER_EPOCH)
  names = run.checkpoints()
  saving = writing(names)
  assert saving, f"the kill came after the write had finished: {names}"
  last = saving - STEPS_PER_EPOCH
  assert str(saving) not in names and str(last) in names, names

  # 2. Resumed from the checkpoint before (the unfinished one is passed over), killed in
  # the middle of the next epoch: no save is under way then, so the kill does not race one.
  run = search(killed, "run2")
  run.kill_when(lambda: max(run.steps_done(), default=0) > last)
  assert f"resumed from step {last}" in run.output()
  assert last < max(run.steps_done()) < saving and str(saving) not in run.checkpoints()

  # 3. Resumed from the same checkpoint again, run to the end.
  out = search(killed, "run3").finish()
  assert f"resumed from step {last}" in out and "Traceback" not in out

  (s1, a), (s2, b) = final_state(tmp_path / "full"), final_state(killed)
  assert s1 == s2 == TOTAL
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert (killed / "genotype.json").read_text() == (tmp_path / "full" / "genotype.json").read_text()
  # The metrics read back (a line cut by a kill is dropped) and, keeping the last record of
  # each step, are those of the uninterrupted run.
  for kind in ("train", "epoch"):
    last = lambda workdir: {r["step"]: {k: v for k, v in r.items() if k != "seconds"}
                            for r in metrics.read_records(str(workdir), kind)}
    assert last(killed) == last(tmp_path / "full"), kind
