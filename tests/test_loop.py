"""The shared training loop (`loop.Loop`) with a stand-in step, checkpointer and writer: what
it fetches, sums, saves and stops on, checked against hand-computed values (no model)."""
import jax.numpy as jnp
import ml_collections
import pytest

from conftest import sigterm_after
from sdarts_jax.run import lifecycle, loop


class Checkpoints:
  """Records every save: [(step, state step, record)]."""

  def __init__(self):
    self.saved = []

  def save(self, step, state, record):
    self.saved.append((step, int(state["step"]), record))

  def wait(self):
    pass

  def latest_step(self):
    return self.saved[-1][0] if self.saved else None


class Writer:
  def __init__(self):
    self.rows = []

  def write(self, kind, step, values):
    self.rows.append((kind, step, dict(values)))


def config(epochs=2, log_every=3, checkpoint_every=1):
  return ml_collections.ConfigDict(dict(epochs=epochs, log_every_steps=log_every,
                                        checkpoint_every_epochs=checkpoint_every,
                                        data=dict(batch_size=4)))


def step_fn(state, batch):
  """Adds the batch's value to the state; its metric is the batch value (nan where batch
  is nan)."""
  return ({"step": state["step"] + 1, "total": state["total"] + batch},
          {"train_loss": batch * 1.0})


def train(c, state=None, meta=None, stop_at_epoch=None):
  """Run the loop over batches 1, 2, 3, ... (batch of step s is s + 1); returns (record,
  epoch records, checkpoints, writer)."""
  ckpt, writer, epochs = Checkpoints(), Writer(), []
  state = state or {"step": jnp.int32(0), "total": jnp.float32(0)}

  def end_of_epoch(state, epoch, means, seconds, done):
    record = dict(means, epoch=epoch + 1, done=done, total=float(state["total"]))
    epochs.append(record)
    return record, stop_at_epoch == epoch + 1

  record = loop.Loop(c, ckpt, writer, "unused").train(state, meta or {}, loop.Task(
      4, step_fn, lambda start: (jnp.float32(s + 1) for s in range(start, c.epochs * 4)),
      end_of_epoch, lambda m: f"loss {m['train_loss']}"))
  return record, epochs, ckpt, writer


def test_epoch_means_logs_and_checkpoints():
  record, epochs, ckpt, writer = train(config())
  # Batches 1..4 in epoch 1, 5..8 in epoch 2: means 2.5 and 6.5, totals 10 and 36.
  assert [(e["train_loss"], e["done"], e["total"]) for e in epochs] == [(2.5, 4, 10.0),
                                                                        (6.5, 8, 36.0)]
  assert record == epochs[-1]
  # Every log_every-th step written, with its own metrics.
  assert [(s, v["train_loss"]) for _, s, v in writer.rows] == [(3, 3.0), (6, 6.0)]
  assert [(s, r) for s, _, r in ckpt.saved] == [(4, {"step": 4, "epoch": 1}),
                                                (8, {"step": 8, "epoch": 2})]


def test_checkpoint_every_and_early_stop():
  _, _, ckpt, _ = train(config(epochs=3, checkpoint_every=2))
  assert [s for s, _, _ in ckpt.saved] == [8, 12]  # epoch 2, and the last
  record, epochs, ckpt, _ = train(config(epochs=3), stop_at_epoch=1)
  assert len(epochs) == 1 and record["epoch"] == 1
  assert [(s, r) for s, _, r in ckpt.saved] == [(4, {"step": 4, "epoch": 1})]


def test_non_finite_metric_stops_with_the_last_good_checkpoint():
  ckpt, writer = Checkpoints(), Writer()
  batches = lambda start: iter([1.0, 2.0, 3.0, 4.0, 5.0, float("nan"), 7.0, 8.0][start:])
  with pytest.raises(lifecycle.RunError, match="non-finite metrics at step 6.*step 4"):
    loop.Loop(config(), ckpt, writer, "w").train(
        {"step": jnp.int32(0), "total": jnp.float32(0)}, {},
        loop.Task(4, step_fn, batches, lambda *a: ({}, False), lambda m: "",
                  lambda d, e: {"step": d}))
  assert [s for s, _, _ in ckpt.saved] == [4]


def test_preemption_mid_epoch_saves_partial_sums_and_resumes_to_the_same_means(monkeypatch):
  saved = []
  monkeypatch.setattr(Checkpoints, "save", lambda self, s, st, r: saved.append((s, st, r)))
  monkeypatch.setattr(lifecycle, "on_sigterm", sigterm_after(6))  # raised during step 6
  with pytest.raises(lifecycle.Preempted):
    train(config())
  monkeypatch.undo()
  assert [s for s, _, _ in saved] == [4, 6]
  _, state, record = saved[-1]
  assert int(state["step"]) == 6 and float(state["total"]) == 21.0  # 1 + ... + 6
  assert record == {"step": 6, "epoch": 1, "epoch_sums": {"train_loss": 11.0},  # 5 + 6
                    "preempted": True}
  resumed, epochs, _, _ = train(config(), state, record)
  full, _, _, _ = train(config())
  assert [e["epoch"] for e in epochs] == [2]
  assert resumed == full  # the resumed epoch's mean covers steps 5-8: 6.5
