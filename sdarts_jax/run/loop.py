"""The training loop that the search and evaluation training share: the per-step bookkeeping
around a compiled step.

`Loop.train` runs steps start..total_steps-1 of a run. Around each step: the next batch is placed
on the devices while the step runs; the step's metrics stay on the devices until a log step,
an epoch end or a preemption fetches them, and are then checked for NaN/inf (the last good
checkpoint stays), summed into the epoch's means, shown on the progress line and written
every config.log_every_steps; at an epoch end the caller's `end_of_epoch` evaluates and logs;
checkpoints are saved every checkpoint_every_epochs epochs and at the end; SIGTERM saves the
state (mid-epoch with the epoch's partial sums, so the resumed epoch's means cover all of its
steps) and raises lifecycle.Preempted. What differs between the search and evaluation training
(the step, the data, the epoch's evaluation, the checkpoint's record) comes in as a `Task`.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable

import jax
import numpy as np

from sdarts_jax.run import lifecycle, metrics, programs


def compile_step(train_step: Callable, replicated, sharded) -> Callable:
  """train_step(state, batch) jitted as every run compiles it: the state replicated and
  donated, the batch sharded over the data axis, the metrics replicated; the executable
  shared with any earlier run of this process that compiled the same program
  (`programs`)."""
  return programs.jit(train_step, in_shardings=(replicated, sharded),
                      out_shardings=(replicated, replicated), donate_argnums=0)


def compile_init(init: Callable, replicated) -> Callable:
  """init() -> the initial state, jitted as every run compiles it: replicated. The program
  runs once, so on CPU it is compiled for compile time, with XLA's LLVM at -O0: the initial
  state is hundreds of threefry draws, one per parameter (the smoke supernet's took 131 s
  of CPU to compile at the default -O2 and 14 s at -O0, 2026-12-06). The draws are the
  same; of the normal ones, some entries differ from an -O2 compile in the last bit (540 of
  671 arrays bit-equal, the largest difference 3e-8), as the two fuse multiply-adds
  differently."""
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return programs.jit(init, out_shardings=replicated, compiler_options=options)


def epoch_record(done: int, epochs_done: int) -> dict:
  """The record saved with a checkpoint: the steps and epochs done."""
  return {"step": done, "epoch": epochs_done}


@dataclasses.dataclass
class Task:
  """What a run trains: the parts in which the search and evaluation training differ.

  train_step(state, batch) -> (state, metrics of scalars), compiled.
  batches(start) -> the global batches of steps start, start + 1, ... .
  end_of_epoch(state, epoch, means, seconds, done) -> (record, stop): the epoch's evaluation
    and logs (epoch counts from 0, means are the epoch's step-metric means, done the steps
    done so far); stop ends the run after saving.
  describe(metrics) -> the progress line's text.
  checkpoint_record(done, epochs_done) -> the dict saved with a checkpoint.
  check_finite(metrics, done) -> None, or raises lifecycle.RunError: what non-finite metrics do
    (default `lifecycle.check_finite`: the run stops).
  A step's metrics are scalars, or arrays of one value per seed in a run of several seeds
  (`sdarts_jax.search.seeds`); the loop sums and passes them on either way.
  """
  steps_per_epoch: int
  train_step: Callable
  batches: Callable[[int], Iterable]
  end_of_epoch: Callable
  describe: Callable[[dict], str]
  checkpoint_record: Callable[[int, int], dict] = epoch_record
  check_finite: Callable[[dict, int], None] | None = None


@dataclasses.dataclass
class Loop:
  """A run's loop: its config (the fields epochs, log_every_steps, checkpoint_every_epochs,
  data.batch_size), checkpointer (`checkpoint.Checkpointer`), metric writer and workdir."""
  config: object
  ckpt: object
  writer: metrics.MetricWriter
  workdir: str

  def train(self, state, meta: dict, task: Task) -> dict:
    """Run (or resume) the steps of config.epochs epochs of `task`; returns the last epoch's
    record. state: the state restored or initialised (its "step" says where to start);
    meta: the checkpoint record it came with ({} when new)."""
    c, spe = self.config, task.steps_per_epoch
    total_steps = c.epochs * spe
    start = int(state["step"])
    preempted = lifecycle.on_sigterm()
    log = _StepLog(self, task, total_steps)
    if start % spe:
      log.sums = {k: np.asarray(v) if isinstance(v, list) else v
                  for k, v in meta.get("epoch_sums", {}).items()}
    record: dict = {}
    placed = iter(task.batches(start))
    batch = next(placed, None)
    for global_step in range(start, total_steps):
      epoch, index = divmod(global_step, spe)
      if index == 0:
        log.new_epoch()
      state, m = task.train_step(state, batch)
      done = global_step + 1
      log.pending.append((done, m))
      if done < total_steps:
        batch = next(placed)  # while the step runs
      stopping = preempted() and done < total_steps
      if done % c.log_every_steps == 0 or index == spe - 1 or stopping:
        log.fetch()
      if index == spe - 1:
        record, stop = task.end_of_epoch(state, epoch, log.means(),
                                         time.time() - log.t_epoch, done)
        # A run stopping now saves this step below (orbax refuses a step twice).
        if stop or (not stopping and ((epoch + 1) % c.checkpoint_every_epochs == 0
                                      or done == total_steps)):
          self.ckpt.save(done, state, task.checkpoint_record(done, epoch + 1))
        if stop:
          break
        log.t_fetch = time.time()  # the progress rate counts step time alone
      if stopping:
        epochs_done = epoch + (index == spe - 1)
        sums = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in log.sums.items()}
        lifecycle.preempt(self.ckpt, done, state, dict(task.checkpoint_record(done, epochs_done),
                                                       epoch_sums=sums))
    self.ckpt.wait()
    return record

  def run(self, state, meta: dict, task: Task) -> dict:
    """`train`, then close the checkpointer (waiting for the last save) and the writer."""
    record = self.train(state, meta, task)
    self.ckpt.close()
    self.writer.close()
    return record


class _StepLog:
  """The step metrics of one run: pending on the devices until `fetch` checks them for
  NaN/inf, sums them into the epoch's, shows them and writes every log_every_steps."""

  def __init__(self, loop: Loop, task: Task, total_steps: int):
    c = loop.config
    self.loop, self.task = loop, task
    self.progress = metrics.Progress(total_steps, c.data.batch_size, c.log_every_steps)
    self.sums: dict[str, float] = {}
    self.pending: list[tuple[int, dict]] = []
    self.t_fetch = self.t_epoch = time.time()

  def new_epoch(self) -> None:
    self.sums, self.t_epoch = {}, time.time()

  def means(self) -> dict:
    return {k: v / self.task.steps_per_epoch for k, v in self.sums.items()}

  def fetch(self) -> None:
    """Fetch, check, sum, show and write the pending steps' metrics."""
    loop, c, spe = self.loop, self.loop.config, self.task.steps_per_epoch
    fetched = jax.device_get([m for _, m in self.pending])
    seconds = (time.time() - self.t_fetch) / len(self.pending)
    check = self.task.check_finite or (
        lambda m, done: lifecycle.check_finite(m, done, loop.ckpt, loop.workdir))
    for (done, _), m in zip(self.pending, fetched):
      m = {k: float(v) if np.ndim(v) == 0 else np.asarray(v, np.float64)
           for k, v in m.items()}
      check(m, done)
      for k, v in m.items():
        self.sums[k] = self.sums.get(k, 0.0) + v
      self.progress.update(done, seconds,
                           f"epoch {(done - 1) // spe + 1}/{c.epochs} {self.task.describe(m)}")
      if done % c.log_every_steps == 0:
        loop.writer.write("train", done, m)
    self.pending, self.t_fetch = [], time.time()
