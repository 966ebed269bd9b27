"""Several seeds as one program (config.seeds): N independent searches, compiled once.

Each seed has its own initialisation, data order, alpha, perturbation noise and optimizer
states: exactly what a one-seed run with config.seed = that seed has (tests/test_seeds.py
compares them). The run's state gets a leading seed axis,

  {"seeds": the one-seed search states (`run_search.init_state`, each with its own "seed"),
            every leaf stacked [S, ...],
   "alive": [S] bool, False once a seed has been frozen,
   "step":  the steps done},

and the step maps the one-seed step (`run_search.make_train_step`) over that axis, by
config.seed_axis: "map" (`lax.map`: one seed after the other, in one compiled body; the cost
of S one-seed steps, what CPUs want) or "vmap" (`jax.vmap`: every seed in one batched
program, for accelerators, where it amortises launches and small kernels; it does not cut
the step's memory traffic per seed, docs/seeds.md); "auto" picks map on CPU and vmap on TPU
and GPU. The
global batch [S, B, ...] is sharded over the mesh's data axis (dimension 1), the state
replicated.

A seed whose metrics or new state go non-finite is frozen at its last finite state (its
later metrics are NaN, and nothing more is written for it) and reported; the others go on.
Outputs: WORKDIR/seed_<seed>/ holds what a one-seed run writes in WORKDIR (metrics.jsonl,
TensorBoard, genotype.json, genotypes/); WORKDIR/checkpoints holds all seeds together, and
resume is exact. `python -m sdarts_jax.analysis.seeds WORKDIR...` aggregates them.
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sdarts_jax.data import pipeline
from sdarts_jax.run import checkpoint, lifecycle, loop, metrics, parallel, programs
from sdarts_jax.search import run_search

SEED_AXES = ("auto", "map", "vmap")


def seed_list(config) -> list[int]:
  """The seeds of a run: config.seeds is a count N (seeds config.seed .. config.seed + N - 1)
  or a list of seeds. ValueError for anything else."""
  seeds = config.seeds
  if isinstance(seeds, int) and not isinstance(seeds, bool):
    if seeds < 1:
      raise ValueError(f"config.seeds={seeds} must be a count >= 1 or a list of seeds")
    return [config.seed + i for i in range(seeds)]
  if not isinstance(seeds, (list, tuple)) or not all(
      isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
    raise ValueError(f"config.seeds={seeds!r} must be a count or a list of seeds (integers "
                     f">= 0), e.g. --config.seeds=4 or --config.seeds=0,5,9")
  if len(seeds) < 2 or len(set(seeds)) != len(seeds):
    raise ValueError(f"config.seeds={seeds!r}: a list needs at least two different seeds "
                     f"(one seed: --config.seed=S)")
  return list(seeds)


def is_multi_seed(config) -> bool:
  return len(seed_list(config)) > 1


def check_config(config) -> None:
  """ValueError for what a run of several seeds cannot do, after `run_search.check_config`."""
  seeds = seed_list(config)
  if config.seed_axis not in SEED_AXES:
    raise ValueError(f"config.seed_axis={config.seed_axis!r}; use one of {', '.join(SEED_AXES)}")
  if len(seeds) > 1 and config.hessian.early_stop:
    raise ValueError("config.hessian.early_stop (RobustDARTS's rule) stops a whole run; with "
                     "config.seeds it is not supported yet: run the seeds one by one")
  if min(seeds) < 0 or max(seeds) >= 2 ** 31:
    raise ValueError(f"config.seeds: seeds must be in [0, 2**31), got {seeds}")


def seed_axis(config, platform: str | None = None) -> str:
  """config.seed_axis with "auto" resolved for `platform` (default JAX's default backend)."""
  if config.seed_axis != "auto":
    return config.seed_axis
  return "map" if (platform or jax.default_backend()) == "cpu" else "vmap"


def seed_dir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f"seed_{seed}")


# ---------------------------------------------------------------- state and step

def init_states(model, config, image_shape, steps_per_epoch: int, seeds: list[int]) -> dict:
  """The state of a run of `seeds` at step 0 (see the module docstring); image_shape:
  (H, W, 3)."""
  def one(seed):
    return dict(run_search.init_state(model, config, image_shape, steps_per_epoch, seed),
                seed=seed)

  # lax.map: the one-seed initialisation compiled once and run for each seed.
  return {"seeds": lax.map(one, jnp.asarray(seeds, jnp.int32)),
          "alive": jnp.ones(len(seeds), jnp.bool_), "step": jnp.zeros((), jnp.int32)}


def make_step(one_seed_step: Callable, axis: str) -> Callable:
  """step(state, batch) -> (state, metrics [S]) of a run of several seeds.

  one_seed_step(state, batch) -> (state, metrics): one seed's step
  (`run_search.make_train_step`).
  batch: the one-seed batch's entries stacked, [S, B, ...]. axis: "map" or "vmap".
  A seed whose metrics or new state are not finite, or that was frozen before, keeps its
  state; its metrics are NaN from the step it failed on.
  """
  def step(state, batch):
    if axis == "vmap":
      new, m = jax.vmap(one_seed_step)(state["seeds"], batch)
    else:
      new, m = lax.map(lambda args: one_seed_step(*args), (state["seeds"], batch))
    alive = state["alive"] & _all_finite(m) & _all_finite(new)
    keep = lambda n, o: jnp.where(alive.reshape(alive.shape + (1,) * (n.ndim - 1)), n, o)
    m = {k: jnp.where(state["alive"], v, jnp.nan) for k, v in m.items()}
    return {"seeds": jax.tree.map(keep, new, state["seeds"]), "alive": alive,
            "step": state["step"] + 1}, m

  return step


def _all_finite(tree) -> jax.Array:
  """[S] bool: every floating entry of seed s's part of `tree` (leaves [S, ...]) is finite."""
  checks = [jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1)
            for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(checks), axis=0)


def take(state: dict, index) -> dict:
  """Seed `index`'s one-seed state (jit it: one program for every seed)."""
  return jax.tree.map(lambda x: x[index], state["seeds"])


class Batches:
  """The global batches of a run of several seeds: each seed's `pipeline.SearchBatches` (its
  own order), stacked [S, B, ...]."""

  def __init__(self, source: pipeline.Source, config, seeds: list[int]):
    self.per_seed = [pipeline.SearchBatches(source, config.data.train_portion,
                                        config.data.batch_size, s) for s in seeds]
    self.steps_per_epoch = self.per_seed[0].steps_per_epoch

  def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
    batches = [b.batch(epoch, index) for b in self.per_seed]
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


class Writers:
  """One `metrics.MetricWriter` per seed (in `seed_dir`), written to as one: a record's
  values are split by seed, and a seed whose values are not all finite (frozen) is left
  out."""

  def __init__(self, workdir: str, seeds: list[int]):
    self.per_seed = []
    for seed in seeds:
      if metrics.is_writer():
        os.makedirs(seed_dir(workdir, seed), exist_ok=True)
      self.per_seed.append(metrics.MetricWriter(seed_dir(workdir, seed)))

  def write(self, kind: str, step: int, values: dict) -> None:
    for i, writer in enumerate(self.per_seed):
      mine = {k: v[i] for k, v in values.items()}
      if all(np.isfinite(v) for v in mine.values()):
        writer.write(kind, step, mine)

  def close(self) -> None:
    for writer in self.per_seed:
      writer.close()


# ---------------------------------------------------------------- the run

def train_and_evaluate(config, workdir: str) -> list[dict]:
  """Run (or resume) the searches of config.seeds as one program (what `sdarts_jax.main` runs
  when config.seeds names several); returns each seed's last epoch record ({} for a seed
  frozen before it)."""
  run_search.check_config(config)
  check_config(config)
  seeds = seed_list(config)
  table = run_search.benchmark_for(config)
  lifecycle.start(config, workdir)

  mesh = parallel.make_mesh()
  parallel.check_batch(config.data.batch_size, mesh, "config.data.batch_size")
  replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  stacked = parallel.batch_sharded(mesh, axis=1)

  source, _, eval_source = run_search.search_data(config)
  batches = Batches(source, config, seeds)
  spe = batches.steps_per_epoch
  model = run_search.build_model(config, source.num_classes)
  init = loop.compile_init(
      lambda: init_states(model, config, source.images.shape[1:], spe, seeds), replicated)

  train_step = loop.compile_step(
      make_step(run_search.make_train_step(model, config, spe, source), seed_axis(config)),
      replicated, stacked)
  state_of = programs.jit(take, out_shardings=replicated)
  infer = programs.jit(
      lambda p, s, A, b, seed: run_search.make_infer(model, source, seed)(p, s, A, b),
      in_shardings=(replicated, replicated, replicated, sharded, replicated),
      out_shardings=replicated)
  estimate_bn = None
  if config.eval_bn == "clean_batch":
    estimate_bn = programs.jit(
        lambda p, s, A, x, seed: run_search.make_bn_estimate(model, source, seed)(p, s, A, x),
        in_shardings=(replicated, replicated, replicated, sharded, replicated),
        out_shardings=replicated)
  tracker = run_search.HessianTracker(config, model, eval_source, mesh)
  trackers = [tracker.for_seed(s) for s in seeds]

  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoints_to_keep)
  state, meta = lifecycle.restore_or_init(ckpt, init, replicated, workdir)
  for t, history in zip(trackers, meta.get("lambda_max", [[] for _ in seeds])):
    t.history = [tuple(h) for h in history]

  writers = Writers(workdir, seeds)
  if int(state["step"]) == 0:
    lifecycle.log(f"{len(seeds)} seeds ({', '.join(map(str, seeds))}) as one program "
                  f"({seed_axis(config)}); outputs in {seed_dir(workdir, '<seed>')}")
    lifecycle.log(run_search.start_line(config, source, spe, model, mesh))
  reports = [run_search.EpochReport(
      config, model, eval_source, _bind_seed(infer, s), sharded, w, seed_dir(workdir, s),
      table, estimate_bn and _bind_seed(estimate_bn, s), label=f"seed {s}: ")
      for s, w in zip(seeds, writers.per_seed)]
  batches_from = lambda start: (pipeline.to_global(batches.batch(*divmod(s, spe)), stacked)
                                for s in range(start, config.epochs * spe))
  task = seeds_task(seeds, spe, train_step, batches_from, reports, trackers, state_of,
                    writers, ckpt, workdir)
  return loop.Loop(config, ckpt, writers, workdir).run(state, meta, task)


def _bind_seed(fn: Callable, seed: int) -> Callable:
  """fn(..., seed) as a function of its other arguments, seed passed as an array (one
  compiled program serves every seed)."""
  seed = np.int32(seed)
  return lambda *args: fn(*args, seed)


def seeds_task(seeds: list[int], steps_per_epoch: int, train_step, batches_from,
               reports: list, trackers: list, state_of, writers: Writers, ckpt,
               workdir: str) -> loop.Task:
  """The searches of several seeds as the loop's task: each alive seed's end of epoch is a
  one-seed search's (`run_search.EpochReport`, the Hessian), in its own folder."""
  reported = np.zeros(len(seeds), bool)

  def end_of_epoch(state, epoch, means, seconds, done):
    alive = np.asarray(jax.device_get(state["alive"]))
    records = []
    for i, seed in enumerate(seeds):
      if not alive[i]:
        records.append({})
        continue
      one = state_of(state, i)
      record = reports[i](one, epoch, done, {k: float(v[i]) for k, v in means.items()},
                          seconds)
      record.update(trackers[i].measure(one, epoch, writers.per_seed[i], done))
      records.append(record)
    return records, False

  def check_finite(m, done):
    bad = ~np.all([np.isfinite(v) for v in m.values()], axis=0)
    for i in np.flatnonzero(bad & ~reported):
      metrics.warn(f"seed {seeds[i]}: non-finite metrics at step {done} or before "
                   f"({ {k: float(v[i]) for k, v in m.items()} }); it is frozen at its last "
                   f"finite state and the other seeds go on")
    reported[:] |= bad
    if reported.all():
      raise lifecycle.RunError(f"every seed's metrics are non-finite (step {done}). The run "
                               f"stops; {lifecycle.kept_checkpoint(ckpt, workdir)}.")

  def checkpoint_record(done, epochs_done):
    return {**loop.epoch_record(done, epochs_done),
            "lambda_max": [t.history for t in trackers]}

  def describe(m):
    mean = lambda k: float(np.nanmean(m[k])) if np.isfinite(m[k]).any() else float("nan")
    return (f"{int(np.isfinite(m['train_loss']).sum())}/{len(seeds)} seeds: loss "
            f"{mean('train_loss'):.3f} acc {mean('train_accuracy'):.3f} eps {mean('eps'):.3f}")

  return loop.Task(steps_per_epoch, train_step, batches_from, end_of_epoch, describe,
                   checkpoint_record, check_finite)
