"""Training a found cell from scratch (docs/method.md, section 7): the evaluation loop.

`train_and_evaluate(config, workdir)` trains the network of `config.arch` and is what
`main.py` calls for `config.mode == "train"`. It has the search's shape (checks, mesh,
input, model and state, compiled functions, checkpoint) and runs the search's loop
(`sdarts_jax.run.loop`) with its own step, batches and end-of-epoch evaluation.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import optax

from sdarts_jax.evaluation import input_pipeline, network
from sdarts_jax.model import losses, ops
from sdarts_jax.run import checkpoint, lifecycle, loop, metrics, parallel, programs
from sdarts_jax.search import genotype, optim


# ---------------------------------------------------------------- checks

def check_config(config) -> None:
  """One clear ValueError for configuration mistakes, before anything is loaded or compiled."""
  genotype.resolve(config.arch)
  positive = {"config.epochs": config.epochs, "config.data.batch_size": config.data.batch_size,
              "config.model.layers": config.model.layers,
              "config.model.channels": config.model.channels}
  for field, value in positive.items():
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{field}={value!r} must be a positive integer")
  if config.model.stem not in network.STEMS:
    raise ValueError(f"config.model.stem={config.model.stem!r}; use one of "
                     f"{', '.join(network.STEMS)}")
  ops.impl_of(config.model.impl)  # an unknown implementation's error
  if config.optim.schedule not in optim.TRAINING_SCHEDULES:
    raise ValueError(f"config.optim.schedule={config.optim.schedule!r}; use one of "
                     f"{', '.join(optim.TRAINING_SCHEDULES)}")
  if config.optim.schedule == "linear" and config.epochs <= config.optim.linear_tail_epochs:
    raise ValueError(f"config.epochs={config.epochs} must exceed "
                     f"config.optim.linear_tail_epochs={config.optim.linear_tail_epochs} for "
                     "the linear schedule")
  unit = {"config.drop_path": config.drop_path,
          "config.loss.label_smoothing": config.loss.label_smoothing}
  for field, value in unit.items():
    if not 0.0 <= value < 1.0:
      raise ValueError(f"{field}={value} must be in [0, 1)")
  if config.loss.aux_weight < 0:
    raise ValueError(f"config.loss.aux_weight={config.loss.aux_weight} must be >= 0")


# ---------------------------------------------------------------- schedules

def drop_prob_at(count, max_prob: float, epochs: int, steps_per_epoch: int):
  """Drop-path probability max_prob * epoch / epochs (0 in the first epoch)."""
  return max_prob * optim.epoch_of(count, steps_per_epoch) / epochs


# ---------------------------------------------------------------- model and state

def build_model(config, num_classes: int) -> network.Network:
  m = config.model
  impl = ops.impl_of(m.impl)
  return network.build(genotype.resolve(config.arch), num_classes, m.channels, m.layers,
                       m.stem, m.auxiliary, impl, m.bn_momentum)


def init_state(model: network.Network, config, image_shape, steps_per_epoch: int) -> dict:
  """{"params", "batch_stats", "opt", "step"} at step 0. image_shape: (H, W, 3)."""
  variables = network.init(model, jax.random.PRNGKey(config.seed), image_shape)
  tx = optim.training_optimizer(config.optim, config.epochs, steps_per_epoch)
  return {"params": variables["params"], "batch_stats": variables["batch_stats"],
          "opt": tx.init(variables["params"]), "step": jnp.zeros((), jnp.int32)}


def make_train_step(model: network.Network, config, steps_per_epoch: int, preprocess):
  """train_step(state, batch) -> (state, metrics), pure; jit it.

  batch: {"image": [B, H, W, 3] uint8, "label": [B] int32} (global). preprocess(key,
  images, train) -> float images. Loss = cross-entropy (label-smoothed by
  config.loss.label_smoothing) + aux_weight * the same on the auxiliary logits.
  Augmentation, drop-path masks and `noise` ops draw from fold_in(PRNGKey(config.seed), step).
  """
  tx = optim.training_optimizer(config.optim, config.epochs, steps_per_epoch)
  lr_of = optim.training_lr(config.optim, config.epochs, steps_per_epoch)
  smoothing, aux_weight = config.loss.label_smoothing, config.loss.aux_weight

  def loss_fn(params, batch_stats, x, y, drop_prob, key):
    (logits, aux), new = model.apply({"params": params, "batch_stats": batch_stats}, x, True,
                                     drop_prob, mutable=["batch_stats"],
                                     rngs=network.rngs(key))
    loss = losses.cross_entropy(logits, y, smoothing)
    if aux is not None:
      loss = loss + aux_weight * losses.cross_entropy(aux, y, smoothing)
    return loss, (logits, new["batch_stats"])

  def train_step(state, batch):
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), state["step"])
    k_aug, k_drop = jax.random.split(key)
    x, y = preprocess(k_aug, batch["image"], True), batch["label"]
    drop_prob = drop_prob_at(state["step"], config.drop_path, config.epochs, steps_per_epoch)
    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["batch_stats"], x, y, drop_prob, k_drop)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    new_state = {"params": optax.apply_updates(state["params"], updates), "batch_stats": stats,
                 "opt": opt, "step": state["step"] + 1}
    return new_state, {"train_loss": loss,
                       "train_accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
                       "lr": lr_of(state["step"]), "drop_prob": jnp.asarray(drop_prob, jnp.float32)}

  return train_step


def make_infer(model: network.Network, preprocess, seed: int):
  """infer(params, batch_stats, batch) -> sums over the valid rows of batch["valid"]:
  {"loss" (plain cross-entropy), "top1", "top5", "count"}; BatchNorm in inference mode.
  A `noise` op draws its Gaussian from PRNGKey(seed), the same draw for every batch (the
  reference draws afresh; the noise does not depend on the input either way)."""
  def infer(params, batch_stats, batch):
    x = preprocess(None, batch["image"], False)
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, False,
                            rngs=network.rngs(jax.random.PRNGKey(seed)))
    y, valid = batch["label"], batch["valid"]
    per_example = losses.cross_entropy_per_example(logits, y)
    k = min(5, logits.shape[-1])
    top5 = jnp.any(jax.lax.top_k(logits, k)[1] == y[:, None], axis=-1)
    total = lambda v: jnp.sum(jnp.where(valid, v, 0).astype(jnp.float32))
    return {"loss": total(per_example), "top1": total(jnp.argmax(logits, -1) == y),
            "top5": total(top5), "count": total(jnp.ones_like(per_example))}

  return infer


# ---------------------------------------------------------------- training

def train_and_evaluate(config, workdir: str) -> dict:
  """Train (or resume) the network of config.arch; returns the last epoch's record."""
  check_config(config)
  lifecycle.start(config, workdir)

  # Mesh.
  mesh, replicated, sharded = parallel.data_parallel(config.data.batch_size)

  # Input.
  inputs = input_pipeline.make_input(config.data, config.seed, mesh)
  spe = inputs.steps_per_epoch

  # Model and state.
  model = build_model(config, inputs.num_classes)
  init = loop.compile_init(lambda: init_state(model, config, inputs.image_shape, spe),
                           replicated)
  num_params = network.count_params(init.eval_shape()["params"])

  # Compiled functions.
  train_step = loop.compile_step(make_train_step(model, config, spe, inputs.preprocess),
                                 replicated, sharded)
  infer = programs.jit(make_infer(model, inputs.preprocess, config.seed),
                       in_shardings=(replicated, replicated, sharded), out_shardings=replicated)

  # Checkpoint.
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoints_to_keep)
  state, meta = lifecycle.restore_or_init(ckpt, init, replicated, workdir)

  # The loop.
  writer = metrics.MetricWriter(workdir)
  if int(state["step"]) == 0:
    lifecycle.log(f"train: {config.arch} on {config.data.folder or config.data.name} "
                  f"({spe} steps/epoch, {config.epochs} epochs), {config.model.layers} cells, "
                  f"C={config.model.channels}, {num_params:,} parameters without the auxiliary "
                  f"head, batch {config.data.batch_size}, {mesh.devices.size} device(s); "
                  f"compiling the step...")
  task = training_task(config, inputs, train_step, infer, writer, num_params)
  return loop.Loop(config, ckpt, writer, workdir).run(state, meta, task)


def training_task(config, inputs, train_step, infer, writer: metrics.MetricWriter,
                  num_params: int) -> loop.Task:
  """Evaluation training as the loop's task: the batches of `inputs`
  (`input_pipeline.make_input`) from any step on, and at an epoch's end the means of the
  train metrics and the test loss / top-1 / top-5 (every config.eval_every_epochs epochs and
  after the last), logged and written."""
  def end_of_epoch(state, epoch, means, seconds, done):
    record = dict(means, epoch=epoch + 1, seconds=seconds, params=num_params)
    if config.eval_every_epochs and ((epoch + 1) % config.eval_every_epochs == 0
                                     or epoch + 1 == config.epochs):
      totals: dict[str, float] = {}
      for batch in inputs.eval_batches():
        out = jax.device_get(infer(state["params"], state["batch_stats"], batch))
        for k, v in out.items():
          totals[k] = totals.get(k, 0.0) + float(v)
      n = max(totals["count"], 1.0)
      record.update(test_loss=totals["loss"] / n, test_accuracy=totals["top1"] / n,
                    test_top5_accuracy=totals["top5"] / n)
    writer.write("epoch", done, record)
    shown = {k: round(v, 4) for k, v in record.items() if isinstance(v, float)}
    lifecycle.log(f"\nepoch {epoch + 1}/{config.epochs}: {shown}")
    return record, False

  def batches_from(start):
    first_epoch, offset = divmod(start, inputs.steps_per_epoch)
    for epoch in range(first_epoch, config.epochs):
      yield from inputs.train_epoch(epoch, offset if epoch == first_epoch else 0)

  describe = lambda m: (f"loss {m['train_loss']:.3f} acc {m['train_accuracy']:.3f} "
                        f"lr {m['lr']:.4f}")
  return loop.Task(inputs.steps_per_epoch, train_step, batches_from, end_of_epoch, describe)
