"""The search (docs/method.md, sections 1, 2 and 5): epochs, schedules, metrics, genotype,
checkpoints.

`train_and_evaluate(config, workdir)` runs a whole search and is what `main.py` calls
(which then draws the final cell, `analysis.draw.draw_final_cell`). It reads top to bottom:
checks, mesh, data, model and state, compiled functions, checkpoint, then the loop that
evaluation training shares (`sdarts_jax.run.loop`) with the search as its task (`search_task`:
the end of an epoch, `EpochReport`, and the Hessian's early stop). The step itself is
defined in `sdarts_jax.search.step` and compiled by `sdarts_jax.search.scan_step` (CPU) or
`sdarts_jax.search.accel_step` (TPU/GPU).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from sdarts_jax.data import pipeline
from sdarts_jax.model import losses, ops, spaces, supernet
from sdarts_jax.run import checkpoint, lifecycle, loop, metrics, parallel, programs
from sdarts_jax.search import accel_step, genotype, hessian, optim, step
from sdarts_jax.tables import nb201, oneshot1


# ---------------------------------------------------------------- checks

def check_config(config) -> None:
  """One clear ValueError for configuration mistakes, before anything is loaded or compiled."""
  step.check_method(config.method)
  step.check_alpha_step(config.alpha)
  accel_step.step_kind(config)
  space = spaces.get_space(config.space)
  spaces.validate(space)
  nb = isinstance(space, spaces.SearchSpace) and space.topology == spaces.NB201_CELL
  field, example = ("cells_per_stage", "nb201_search") if nb else ("layers", "cifar10_adv")
  if field not in config.model:
    raise ValueError(f"config.space={config.space!r} needs config.model.{field}; start from "
                     f"configs/{example}.py")
  for field in ("eps_start", "eps_max"):
    value = config.perturb[field]
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"config.perturb.{field}={value} is outside [0, 1]: the mixing weights "
                       f"live on the simplex, so a perturbation radius above 1 is meaningless")
  positive = {"config.epochs": config.epochs, "config.data.batch_size": config.data.batch_size,
              "config.perturb.steps": config.perturb.steps,
              **{f"config.model.{k}": config.model[k]
                 for k in ("layers", "cells_per_stage", "channels") if k in config.model}}
  for field, value in positive.items():
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{field}={value!r} must be a positive integer")
  if not 0.0 < config.data.train_portion < 1.0:
    raise ValueError(f"config.data.train_portion={config.data.train_portion} must be in (0, 1)")
  if "partial_k" in config.model:
    k = config.model.partial_k
    if not isinstance(k, int) or k < 1 or config.model.channels % k:
      raise ValueError(f"config.model.partial_k={k!r} must be a positive integer that divides "
                       f"config.model.channels={config.model.channels} (1: DARTS; PC-DARTS "
                       f"uses 4)")
  if config.data.cutout < 0 or not 0.0 <= config.data.cutout_prob <= 1.0:
    raise ValueError(f"config.data.cutout={config.data.cutout} must be >= 0 (0: off) and "
                     f"config.data.cutout_prob={config.data.cutout_prob} in [0, 1]")
  if config.data.cutout_schedule not in pipeline.CUTOUT_SCHEDULES:
    raise ValueError(f"config.data.cutout_schedule={config.data.cutout_schedule!r}; use one "
                     f"of {', '.join(pipeline.CUTOUT_SCHEDULES)}")
  ops.impl_of(config.model.impl)  # an unknown implementation's error
  if config.eval_bn not in EVAL_BN:
    raise ValueError(f"config.eval_bn={config.eval_bn!r}; use one of {', '.join(EVAL_BN)}")


# ---------------------------------------------------------------- data, model and state

def search_data(config) -> tuple[pipeline.Source, pipeline.SearchBatches, pipeline.Source]:
  """(the train split, its search batches, its alpha half as a source for evaluation)."""
  source = pipeline.load(config.data, "train")
  batches = pipeline.SearchBatches(source, config.data.train_portion, config.data.batch_size,
                                   config.seed)
  _, alpha_half = pipeline.search_split(len(source.labels), config.data.train_portion)
  alpha_source = pipeline.Source(source.name, source.images[alpha_half], source.labels[alpha_half],
                                 source.num_classes, source.mean, source.std)
  return source, batches, alpha_source


def build_model(config, num_classes: int):
  """The supernet of the space: `supernet.Supernet` (PC-DARTS's with
  config.model.partial_k > 1), `supernet.NB201Supernet` or `supernet.OneShot1Supernet`."""
  m = config.model
  impl = ops.impl_of(m.impl)
  dtype = config.get("dtype", "float32")  # absent from configs saved before it existed
  supernet.compute_dtype(dtype)  # ValueError for an unknown name
  space = spaces.get_space(config.space)
  if isinstance(space, spaces.OneShot1Space):
    return supernet.OneShot1Supernet(space, num_classes, m.channels, m.layers, impl,
                                     m.bn_momentum, m.head_bn_momentum, dtype=dtype)
  if space.topology == spaces.NB201_CELL:
    return supernet.NB201Supernet(space, num_classes, m.channels, m.cells_per_stage, impl,
                                  m.bn_momentum, dtype=dtype)
  return supernet.Supernet(space, num_classes, m.channels, m.layers, m.stem_multiplier, impl,
                           m.bn_momentum, m.get("partial_k", 1), m.get("edge_norm", False),
                           dtype=dtype)


def init_state(model, config, image_shape, steps_per_epoch: int, seed=None) -> dict:
  """The search state at step 0. image_shape: (H, W, 3); seed: config.seed's stand-in (may
  be traced: `sdarts_jax.search.seeds` initialises every seed of a run in one program)."""
  key = jax.random.PRNGKey(config.seed if seed is None else seed)
  k_params, k_alpha, k_noise = jax.random.split(key, 3)
  shapes = model.alpha_shapes()
  alpha = {name: config.alpha.init_scale * jax.random.normal(k, shape)
           for (name, shape), k in zip(shapes.items(), jax.random.split(k_alpha, len(shapes)))}
  x = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  variables = model.init({"params": k_params, "noise": k_noise}, x,
                         supernet.mixing_weights(alpha), False)
  w_opt = optim.weight_optimizer(config.weights, config.epochs, steps_per_epoch)
  return {"params": variables["params"], "batch_stats": variables["batch_stats"],
          "alpha": alpha, "w_opt": w_opt.init(variables["params"]),
          "a_opt": optim.alpha_optimizer(config.alpha).init(alpha),
          "step": jnp.zeros((), jnp.int32)}


def cutout_prob(config, epoch):
  """The search's cutout probability in `epoch` (from 0; may be traced), by
  config.data.cutout_schedule (`pipeline.cutout_prob_at`): what the step applies and the epoch
  record reports."""
  d = config.data
  return pipeline.cutout_prob_at(d.cutout_prob, epoch, config.epochs, d.cutout_schedule)


def make_train_step(model, config, steps_per_epoch: int, source: pipeline.Source,
                    platform: str | None = None):
  """The search step for `platform` (`accel_step.step_for`: `scan_step.make_step` on CPU, the
  static-phase step on TPU and GPU; default JAX's default backend) with the search's
  augmentation (`pipeline.preprocess`): crop and flip,
  and with config.data.cutout > 0 a cutout square with the probability of the step's epoch
  (`cutout_prob`: constant by default, as the official scripts run; or ramped from 0), on
  the weights' and alpha's batches alike, as the reference's shared train transform. The
  step is built inside the trace so that its preprocessing sees the step count."""
  d = config.data

  def train_step(state, batch):
    prob = cutout_prob(config, state["step"] // steps_per_epoch)
    preprocess = lambda key, images: pipeline.preprocess(
        key, images, source.mean, source.std, d.augment, d.crop_padding, d.cutout, prob)
    return accel_step.step_for(model, config, steps_per_epoch, preprocess, platform)(
        state, batch)

  return train_step


# The BatchNorm statistics of the epoch's evaluation on the alpha half (config.eval_bn).
EVAL_BN = ("running", "clean_batch")


def make_bn_estimate(model, source: pipeline.Source, seed: int):
  """estimate(params, batch_stats, A, images) -> batch_stats after one train-mode pass on
  images [B, H, W, 3] uint8 (unaugmented): with the 1Shot1 spaces' BN momentum (0.003 in
  Flax's convention) that batch's statistics, as the reference's Hessian pass leaves them
  for its evaluation."""
  def estimate(params, batch_stats, A, images):
    x = pipeline.preprocess(None, images, source.mean, source.std, augment=False)
    _, new = model.apply({"params": params, "batch_stats": batch_stats}, x, A, True,
                         mutable=["batch_stats"], rngs={"noise": jax.random.PRNGKey(seed)})
    return new["batch_stats"]

  return estimate


def make_infer(model, source: pipeline.Source, seed: int):
  """infer(params, batch_stats, A, batch) -> (loss sum, correct count) over the valid rows
  of an evaluation batch (`pipeline.eval_batches`), BatchNorm in inference mode."""
  def infer(params, batch_stats, A, batch):
    x = pipeline.preprocess(None, batch["image"], source.mean, source.std, augment=False)
    logits = model.apply({"params": params, "batch_stats": batch_stats}, x, A, False,
                         rngs={"noise": jax.random.PRNGKey(seed)})
    labels, valid = batch["label"], batch["valid"]
    per_example = losses.cross_entropy_per_example(logits, labels)
    correct = jnp.argmax(logits, -1) == labels
    return jnp.sum(jnp.where(valid, per_example, 0.0)), jnp.sum(jnp.where(valid, correct, 0))

  return infer


# ---------------------------------------------------------------- the search

def benchmark_for(config):
  """The table that scores the derived cell every epoch, when the config names one: the
  NAS-Bench-201 table (`nb201.table_for`) or NAS-Bench-101's for a 1Shot1 space
  (`oneshot1.benchmark_for`); None otherwise."""
  benchmark = oneshot1.benchmark_for(config)
  return benchmark if benchmark is not None else nb201.table_for(config)


def train_and_evaluate(config, workdir: str) -> dict:
  """Run (or resume) a search; returns the last epoch's record. Raises lifecycle.Preempted
  after saving a checkpoint when SIGTERM arrives. A config of several seeds runs with
  `seeds.train_and_evaluate`."""
  check_config(config)
  if config.get("seeds", 1) != 1:
    raise ValueError(f"config.seeds={config.seeds!r}: several seeds run as one program with "
                     f"seeds.train_and_evaluate (python -m sdarts_jax.main does)")
  table = benchmark_for(config)
  lifecycle.start(config, workdir)

  # Mesh.
  mesh, replicated, sharded = parallel.data_parallel(config.data.batch_size)

  # Input.
  source, batches, eval_source = search_data(config)
  spe = batches.steps_per_epoch

  # Model and state.
  model = build_model(config, source.num_classes)
  init = loop.compile_init(lambda: init_state(model, config, source.images.shape[1:], spe),
                           replicated)

  # Compiled functions.
  train_step = loop.compile_step(make_train_step(model, config, spe, source), replicated,
                                 sharded)
  infer = programs.jit(make_infer(model, source, config.seed),
                       in_shardings=(replicated, replicated, replicated, sharded),
                       out_shardings=replicated)
  estimate_bn = None
  if config.eval_bn == "clean_batch":
    estimate_bn = programs.jit(make_bn_estimate(model, source, config.seed),
                               in_shardings=(replicated, replicated, replicated, sharded),
                               out_shardings=replicated)
  tracker = HessianTracker(config, model, eval_source, mesh)

  # Checkpoint.
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoints_to_keep)
  state, meta = lifecycle.restore_or_init(ckpt, init, replicated, workdir)
  tracker.history = [tuple(h) for h in meta.get("lambda_max", [])]
  if meta.get("early_stopped"):
    lifecycle.log(f"this run stopped early at epoch {meta['epoch']} (RobustDARTS rule); "
                  f"nothing to do")
    return {}

  # The loop.
  writer = metrics.MetricWriter(workdir)
  if int(state["step"]) == 0:
    lifecycle.log(start_line(config, source, spe, model, mesh))
  report = EpochReport(config, model, eval_source, infer, sharded, writer, workdir, table,
                       estimate_bn)
  batches_from = lambda start: (pipeline.to_global(batches.batch(*divmod(s, spe)), sharded)
                                for s in range(start, config.epochs * spe))
  return loop.Loop(config, ckpt, writer, workdir).run(
      state, meta, search_task(spe, train_step, batches_from, report, tracker))


def start_line(config, source: pipeline.Source, spe: int, model, mesh) -> str:
  """What a new search prints before compiling its step."""
  variant = f", second order (H v {config.alpha.hvp})" if config.alpha.order == 2 else ""
  if config.model.get("partial_k", 1) > 1:
    variant += f", PC-DARTS K={config.model.partial_k}"
  return (f"search: {config.method}{variant} on {source.name} ({len(source.labels)} images, "
          f"{spe} steps/epoch, {config.epochs} epochs), space {config.space}, "
          f"{model.num_cells} cells, C={config.model.channels}, batch "
          f"{config.data.batch_size}, {mesh.devices.size} device(s); compiling the step...")


def search_task(steps_per_epoch: int, train_step, batches_from, report: EpochReport,
                tracker: HessianTracker) -> loop.Task:
  """The search as the loop's task: at an epoch's end the report (`EpochReport`), then the
  Hessian measurement and RobustDARTS's early stop, which keeps the genotype of the epoch
  it names; the checkpoints also hold lambda_max's history and the early stop."""
  writer, workdir = report.writer, report.workdir

  def end_of_epoch(state, epoch, means, seconds, done):
    record = report(state, epoch, done, means, seconds)
    record.update(tracker.measure(state, epoch, writer, done))
    stop_epoch = tracker.stop_epoch()
    if stop_epoch is not None:
      lifecycle.log(f"early stop (RobustDARTS rule on lambda_max) at epoch {epoch + 1}: "
                    f"keeping the genotype of epoch {stop_epoch}")
      writer.write("early_stop", done, {"epoch": epoch + 1, "genotype_epoch": stop_epoch})
      if metrics.is_writer():
        genotype.save(genotype.load(_genotype_path(workdir, stop_epoch)),
                      os.path.join(workdir, "genotype.json"))
    return record, stop_epoch is not None

  def checkpoint_record(done, epochs_done):
    early_stopped = {"early_stopped": True} if tracker.stop_epoch() is not None else {}
    return {**loop.epoch_record(done, epochs_done), "lambda_max": tracker.history,
            **early_stopped}

  describe = lambda m: (f"loss {m['train_loss']:.3f} acc {m['train_accuracy']:.3f} "
                        f"eps {m['eps']:.3f}")
  return loop.Task(steps_per_epoch, train_step, batches_from, end_of_epoch, describe,
                   checkpoint_record)


@dataclasses.dataclass
class EpochReport:
  """The search's end of an epoch: the epoch's means, the accuracy on the alpha half
  (`infer`, with the BN statistics of config.eval_bn), the genotype and A, logged and
  written (metrics, TensorBoard, genotypes/); with a benchmark `table`, the cell's scores
  (`nb201.Table.query`: accuracies and ranks; `oneshot1.Benchmark.query`: accuracies and
  test regret)."""
  config: object
  model: object  # the supernet (`build_model`)
  eval_source: pipeline.Source
  infer: object
  sharded: object
  writer: metrics.MetricWriter
  workdir: str
  table: object = None
  estimate_bn: object = None  # config.eval_bn == "clean_batch": `make_bn_estimate`, jitted
  label: str = ""  # the log line's prefix (a run of several seeds: "seed 3: ")

  def __call__(self, state, epoch: int, done: int, means: dict, seconds: float) -> dict:
    """The epoch's record (epoch counts from 0; done: steps done)."""
    config, writer, workdir, eval_source = self.config, self.writer, self.workdir, self.eval_source
    A_dev = supernet.mixing_weights(state["alpha"])
    A = jax.device_get(A_dev)
    geno = genotype.derive(A, self.model.space)
    record = dict(means, epoch=epoch + 1, seconds=seconds)
    if config.data.cutout:
      record.update(cutout_prob=float(cutout_prob(config, epoch)))
    if config.eval_every_epochs and (epoch + 1) % config.eval_every_epochs == 0:
      loss, correct = 0.0, 0
      stats = state["batch_stats"]
      placed = (pipeline.to_global(b, self.sharded)
                for b in pipeline.eval_batches(eval_source, config.data.batch_size))
      first = next(placed)
      if self.estimate_bn is not None:  # the first batch's statistics, with clean A
        stats = self.estimate_bn(state["params"], stats, A_dev, first["image"])
      for batch in itertools.chain([first], placed):
        l, c = self.infer(state["params"], stats, A_dev, batch)
        loss, correct = loss + float(l), correct + int(c)
      record.update(eval_loss=loss / len(eval_source.labels),
                    eval_accuracy=correct / len(eval_source.labels))
    if self.table is not None:
      record.update(self.table.query(geno["nb201"] if "nb201" in geno else geno["nb101"]))
    writer.write("epoch", done, {**record, "genotype": geno,
                                 "A": {t: np.asarray(a) for t, a in A.items()}})
    writer.text("genotype", done, json.dumps(geno))
    for cell_type, a in A.items():
      writer.heatmap(f"A/{cell_type}", done, np.asarray(a))
    if metrics.is_writer():
      os.makedirs(os.path.join(workdir, "genotypes"), exist_ok=True)
      genotype.save(geno, _genotype_path(workdir, epoch + 1))
      genotype.save(geno, os.path.join(workdir, "genotype.json"))
    shown = {k: round(v, 4) for k, v in record.items() if isinstance(v, float)}
    lifecycle.log(f"\n{self.label}epoch {epoch + 1}/{config.epochs}: {shown}\n  genotype "
                  f"{json.dumps(geno)}")
    return record


def _genotype_path(workdir: str, epoch: int) -> str:
  return os.path.join(workdir, "genotypes", f"epoch_{epoch:03d}.json")


class HessianTracker:
  """lambda_max (and optionally top-k and the trace) of the validation-loss Hessian every
  config.hessian.every_epochs epochs, on the first config.hessian.batches batches of the
  alpha half without augmentation (the same images every time, so the trajectory compares
  like with like; the reference draws one random augmented batch), and RobustDARTS's
  early-stopping rule on it."""

  def __init__(self, config, model, eval_source: pipeline.Source, mesh):
    self.cfg, self.batch_size = config.hessian, config.data.batch_size
    self.seed, self.source, self.history = config.seed, eval_source, []
    self.fn = None
    if self.cfg.every_epochs:
      options = hessian.HessianLoss(self.cfg.wrt, self.cfg.train_bn, self.cfg.weight_decay)
      self.fn = hessian.Measure(model, options, self.cfg.top_k, self.cfg.lanczos_iters,
                                self.cfg.trace_samples).on_mesh(mesh)
      self.sharding = parallel.batch_sharded(mesh, axis=1)

  def for_seed(self, seed: int) -> HessianTracker:
    """A tracker of another seed's search (its own key and history), sharing this one's
    compiled measurement."""
    other = copy.copy(self)
    other.seed, other.history = seed, []
    return other

  def measure(self, state, epoch: int, writer, step_count: int) -> dict:
    if not self.fn or (epoch + 1) % self.cfg.every_epochs:
      return {}
    n = self.cfg.batches * self.batch_size
    if n > len(self.source.labels):
      raise ValueError(f"config.hessian.batches={self.cfg.batches} batches of "
                       f"{self.batch_size} exceed the {len(self.source.labels)} alpha images")
    shape = (self.cfg.batches, self.batch_size)
    images = pipeline.preprocess(None, self.source.images[:n], self.source.mean, self.source.std,
                                 False).reshape(shape + self.source.images.shape[1:])
    labels = self.source.labels[:n].reshape(shape)
    images = jax.device_put(images, self.sharding)
    labels = jax.device_put(labels, self.sharding)
    t = time.time()
    out = jax.device_get(self.fn(state["params"], state["batch_stats"], state["alpha"], images,
                                 labels, jax.random.PRNGKey(self.seed)))
    record = {"hessian_" + k: np.asarray(v).tolist() for k, v in out.items()}
    record["hessian_seconds"] = time.time() - t
    self.history.append((epoch + 1, float(out["lambda_max"])))
    writer.write("hessian", step_count, {"epoch": epoch + 1, **record})
    return record

  def stop_epoch(self) -> int | None:
    """The epoch whose genotype to keep when the early-stopping rule fires, else None."""
    c = self.cfg
    if not (c.early_stop and self.history and self.history[-1][0] > c.start_epoch):
      return None
    if hessian.early_stop([v for _, v in self.history], c.window, c.lag, c.factor):
      return self.history[-1 - c.lag][0]
    return None
