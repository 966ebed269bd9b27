"""The training loop that the search and evaluation training share: the per-step bookkeeping
around a compiled step.

`Loop.train` runs steps start..total_steps-1 of a run. Around each step: the next batch is placed
on the devices while the step runs; the step's metrics stay on the devices until a log step,
an epoch end or a preemption fetches them, and are then checked for NaN/inf (the last good
checkpoint stays), summed into the epoch's means, shown on the progress line and written
every config.log_every_steps; at an epoch end the caller's `end_of_epoch` evaluates and logs;
checkpoints are saved every checkpoint_every_epochs epochs and at the end; SIGTERM saves the
state (mid-epoch with the epoch's partial sums, so the resumed epoch's means cover all of its
steps) and raises run.Preempted. What differs between the search and evaluation training
(the step, the data, the epoch's evaluation, the checkpoint's record) comes in as arguments.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable

import jax

from sdarts_jax import metrics, run


@dataclasses.dataclass
class Loop:
  """A run's loop: its config (the fields epochs, log_every_steps, checkpoint_every_epochs,
  data.batch_size), checkpointer (`checkpoint.Checkpointer`), metric writer and workdir."""
  config: object
  ckpt: object
  writer: metrics.MetricWriter
  workdir: str

  def train(self, state, meta: dict, steps_per_epoch: int, train_step: Callable,
            batches: Callable[[int], Iterable], end_of_epoch: Callable,
            checkpoint_record: Callable, describe: Callable[[dict], str]) -> dict:
    """Run (or resume) the steps of config.epochs epochs; returns the last epoch's record.

    state: the state restored or initialised (its "step" says where to start); meta: the
    checkpoint record it came with ({} when new). train_step(state, batch) -> (state, metrics
    of scalars). batches(start) -> the global batches of steps start, start + 1, ... .
    end_of_epoch(state, epoch, means, seconds, done) -> (record, stop): the epoch's evaluation
    and logs (epoch counts from 0, means are the epoch's step-metric means, done the steps done
    so far); stop ends the run after saving. checkpoint_record(done, epochs_done) -> the dict
    saved with a checkpoint. describe(metrics) -> the progress line's text.
    """
    c, spe = self.config, steps_per_epoch
    total_steps = c.epochs * spe
    start = int(state["step"])
    preempted = run.on_sigterm()
    progress = metrics.Progress(total_steps, c.data.batch_size, c.log_every_steps)
    record: dict = {}
    sums: dict[str, float] = dict(meta.get("epoch_sums", {})) if start % spe else {}
    pending: list[tuple[int, dict]] = []
    t_fetch = t_epoch = time.time()

    def fetch() -> None:
      """Fetch, check, sum, show and write the pending steps' metrics."""
      nonlocal pending, t_fetch
      fetched = jax.device_get([m for _, m in pending])
      seconds = (time.time() - t_fetch) / len(pending)
      for (done, _), m in zip(pending, fetched):
        m = {k: float(v) for k, v in m.items()}
        run.check_finite(m, done, self.ckpt, self.workdir)
        for k, v in m.items():
          sums[k] = sums.get(k, 0.0) + v
        progress.update(done, seconds, f"epoch {(done - 1) // spe + 1}/{c.epochs} {describe(m)}")
        if done % c.log_every_steps == 0:
          self.writer.write("train", done, m)
      pending, t_fetch = [], time.time()

    placed = iter(batches(start))
    batch = next(placed, None)
    for global_step in range(start, total_steps):
      epoch, index = divmod(global_step, spe)
      if index == 0:
        sums, t_epoch = {}, time.time()
      state, m = train_step(state, batch)
      done = global_step + 1
      pending.append((done, m))
      if done < total_steps:
        batch = next(placed)  # while the step runs
      stopping = preempted() and done < total_steps
      if done % c.log_every_steps == 0 or index == spe - 1 or stopping:
        fetch()
      if index == spe - 1:
        record, stop = end_of_epoch(state, epoch, {k: v / spe for k, v in sums.items()},
                                    time.time() - t_epoch, done)
        if stop:
          self.ckpt.save(done, state, checkpoint_record(done, epoch + 1))
          break
        # A run stopping now saves this step below (orbax refuses a step twice).
        if not stopping and ((epoch + 1) % c.checkpoint_every_epochs == 0
                             or done == total_steps):
          self.ckpt.save(done, state, checkpoint_record(done, epoch + 1))
        t_fetch = time.time()  # the progress rate counts step time alone
      if stopping:
        epochs_done = epoch + (index == spe - 1)
        run.preempt(self.ckpt, done, state, dict(checkpoint_record(done, epochs_done),
                                              epoch_sums=sums))
    self.ckpt.wait()
    return record
