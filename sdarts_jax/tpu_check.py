"""Compile a run's programs for a TPU slice on this machine, with no TPU: the TPU
compiler's verdict per chip (memory, FLOPs, bytes) and an estimated step and run time.

  python -m sdarts_jax.tpu_check --config=configs/cifar10_adv.py --topology=v5e:4x4
  make tpu-check TOPOLOGY=v5e:4x4 CONFIG=configs/cifar10_adv.py   (installs libtpu once)

With libtpu installed (the `tpu` extra), `jax.experimental.topologies` describes every
chip of a slice (every host's) as a compile-only device; the run's mesh is built over them
by `parallel.make_mesh` as on the slice, the configured global batch sharded over all
chips, the state replicated, and `jit(...).lower(...).compile()` runs the real TPU
compiler here. The programs are the run's own functions with the run's shardings: for a
search config the step (`run_search.make_train_step`), the epoch's evaluation
(`run_search.make_infer`) and the Hessian's compiled Lanczos loop of HVPs
(`hessian.Measure`, host=False as on accelerators); for an evaluation-training config its
training step and test step.

Estimates, not measurements: the step time is the roofline max(FLOPs / peak, bytes /
HBM bandwidth) of the compiled per-chip program (`estimate`), a lower bound, with loops
counted by their trip counts; the compiler's own `optimal_seconds` is shown where it is
positive (it is negative for most of these programs). The memory is the compiled
program's per-chip buffers against the chip's HBM (`CHIPS`).

Exit status 2 with one `error:` line for a bad topology name, a missing libtpu, or a
program that does not fit a chip (with the largest per-chip batch that would).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
from typing import Callable

# Before JAX starts: this process only compiles. JAX's own devices stay the CPU's (no TPU
# runtime is started, so this runs on a TPU VM's host too); libtpu is told it is on no
# TPU host, which keeps its start-up quiet (without these it prints two warnings and an
# error about the metadata server), and that several compile-only processes may load it
# at once (its lock file guards real chips).
COMPILE_ONLY_ENV = {"JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1",
                    "TPU_WORKER_HOSTNAMES": "localhost",
                    "TPU_ACCELERATOR_TYPE": "v5litepod-16", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
for _name, _value in COMPILE_ONLY_ENV.items():
  os.environ.setdefault(_name, _value)

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (path[:argument]).",
                                lock_config=False)
flags.DEFINE_string("topology", "v5e:2x2", "TPU slice, e.g. v5e:2x2, v5e:2x4, v5e:4x4, "
                    "v4:2x2x1, v5p:2x2x1, v6e:2x4.")
flags.DEFINE_list("programs", [], "Programs to compile (default: all of the config's): "
                  "step, infer, hessian (search); train_step, test_step (evaluation).")
flags.DEFINE_string("json", "", "Also write the table as JSON to this file.")
flags.DEFINE_float("effort", 0.0, "XLA's exec_time_optimization_effort in [-1, 1]: 0 (the "
                   "default) compiles what a run compiles; -1 compiles faster, a program "
                   "that runs slower and needs more memory (docs/tpu.md).")


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU generation's per-chip peaks (public specifications)."""
  name: str
  hbm_gib: float
  bf16_flops: float    # peak FLOP/s of the matrix units (float32 matmuls at JAX's default
                       # precision run as bfloat16 passes on TPU)
  hbm_bytes_s: float   # HBM bandwidth, bytes/s


# By the device_kind that the TPU runtime reports.
CHIPS = {
    "TPU v4": Chip("v4", 32, 275e12, 1228e9),
    "TPU v5 lite": Chip("v5e", 16, 197e12, 819e9),
    "TPU v5": Chip("v5p", 95, 459e12, 2765e9),
    "TPU v6 lite": Chip("v6e", 32, 918e12, 1640e9),
}

# Split sizes of the datasets the configs name (for steps per epoch without loading data).
SPLIT_SIZES = {"cifar10": (50000, 10000), "cifar100": (50000, 10000),
               "svhn_cropped": (73257, 26032), "imagenet2012": (1281167, 50000)}


class CheckError(Exception):
  """A mistake or a verdict that ends the check with one `error:` line."""


# ---------------------------------------------------------------- the slice

def topology_devices(name: str) -> list:
  """The compile-only devices of every chip of TPU slice `name` (e.g. "v5e:4x4").
  CheckError when libtpu is missing or the name is unknown."""
  if importlib.util.find_spec("libtpu") is None:
    raise CheckError("libtpu is not installed, so JAX cannot compile for TPU here: run "
                     "`make tpu-check` (it installs the `tpu` extra into .venv-tpu once), or "
                     "`pip install -e '.[tpu]'` in a venv of its own")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
  except Exception as e:  # noqa: BLE001 (libtpu raises several types for a bad name)
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise CheckError(f"--topology={name!r} is not a TPU slice libtpu knows ({first}); use "
                     f"GENERATION:SHAPE, e.g. v5e:2x2, v5e:4x4, v4:2x2x1, v5p:2x2x1, "
                     f"v6e:2x4") from None


def chip_of(devices) -> Chip:
  """What one device of the slice has. A chip with several TensorCores that the topology
  lists as devices of their own (v4 and v5p give one device per core, `core_on_chip` 0
  and 1) shares its HBM and peaks among them: each device gets its share."""
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise CheckError(f"no peak figures for TPU device kind {kind!r}; known: "
                     f"{', '.join(CHIPS)} (sdarts_jax/tpu_check.py, CHIPS)")
  chip = CHIPS[kind]
  cores = len({getattr(d, "core_on_chip", 0) for d in devices})
  if cores == 1:
    return chip
  return Chip(f"{chip.name} TensorCore (1/{cores} of a chip)", chip.hbm_gib / cores,
              chip.bf16_flops / cores, chip.hbm_bytes_s / cores)


# ---------------------------------------------------------------- programs

@dataclasses.dataclass
class Program:
  """One compiled function of a run: `lower()` gives its jax Lowered; `per_run` calls in the
  whole configured run; `batch` its global batch (rows sharded over the chips);
  `loop_factor` the work a call does over the work its cost analysis counts (`loop_factor`,
  `step_loop_factor`), 1 for a loop-free program."""
  name: str
  lower: Callable
  per_run: int
  batch: int
  loop_factor: float = 1.0


def _abstract(tree, sharding):
  """ShapeDtypeStructs of `tree` (arrays or shape structs) laid out as `sharding`."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def _source(config, image_shape, num_classes):
  """A `pipeline.Source` with no images: the programs need only its normalisation."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from sdarts_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  return pipeline.Source(config.data.name, np.zeros((0,) + tuple(image_shape), np.uint8),
                         np.zeros((0,), np.int32), num_classes, np.full(3, 0.5), np.full(3, 0.25))


def _split_sizes(config) -> tuple[int, int]:
  d = config.data
  if d.name == "synthetic":
    return d.synthetic_examples, d.synthetic_examples
  if d.name not in SPLIT_SIZES:
    raise CheckError(f"config.data.name={d.name!r}: no split sizes for it in "
                     f"sdarts_jax/tpu_check.py (SPLIT_SIZES); known: {', '.join(SPLIT_SIZES)}")
  train, test = SPLIT_SIZES[d.name]
  return (min(train, d.max_examples) if d.max_examples else train), test


def search_programs(config, mesh) -> list[Program]:
  """The search's step, epoch evaluation and Hessian measurement, as the search jits them
  (`run_search.train_and_evaluate`), on abstract arguments."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from sdarts_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from sdarts_jax.model import supernet  # pylint: disable=import-outside-toplevel
  from sdarts_jax.run import parallel  # pylint: disable=import-outside-toplevel
  from sdarts_jax.search import accel_step, hessian, run_search, seeds  # pylint: disable=import-outside-toplevel
  run_search.check_config(config)
  seeds.check_config(config)
  rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  size = 32 if config.data.name != "synthetic" else config.data.image_size
  image_shape, num_classes = (size, size, 3), 100 if config.data.name == "cifar100" else 10
  n_train, _ = _split_sizes(config)
  weights_half, alpha_half = (len(i) for i in pipeline.search_split(n_train,
                                                                    config.data.train_portion))
  b = config.data.batch_size
  spe = min(weights_half, alpha_half) // b
  source = _source(config, image_shape, num_classes)
  model = run_search.build_model(config, num_classes)
  state = _abstract(jax.eval_shape(lambda: run_search.init_state(model, config, image_shape, spe)),
                    rep)
  images = lambda n: jax.ShapeDtypeStruct((n,) + image_shape, jnp.uint8, sharding=shard)
  labels = lambda n: jax.ShapeDtypeStruct((n,), jnp.int32, sharding=shard)
  batch = {"train_image": images(b), "train_label": labels(b), "val_image": images(b),
           "val_label": labels(b)}
  one_seed_step = run_search.make_train_step(model, config, spe, source, "tpu")
  step_factor = step_loop_factor(config, accel_step.step_kind(config, "tpu"))
  n_seeds = len(seeds.seed_list(config))
  if n_seeds == 1:
    step_state, step_batch, step_shard, train_fn = state, batch, shard, one_seed_step
  else:  # the step of several seeds (`seeds.train_and_evaluate`): batch [S, B, ...]
    step_state = _abstract(jax.eval_shape(lambda: seeds.init_states(
        model, config, image_shape, spe, seeds.seed_list(config))), rep)
    step_shard = parallel.batch_sharded(mesh, axis=1)
    step_batch = {k: jax.ShapeDtypeStruct((n_seeds,) + v.shape, v.dtype, sharding=step_shard)
                  for k, v in batch.items()}
    axis = seeds.seed_axis(config, "tpu")
    train_fn = seeds.make_step(one_seed_step, axis)
    step_factor *= n_seeds if axis == "map" else 1  # lax.map: a loop over the seeds
  train_step = jax.jit(train_fn, in_shardings=(rep, step_shard), out_shardings=(rep, rep),
                       donate_argnums=0)
  A = _abstract(jax.eval_shape(supernet.mixing_weights, state["alpha"]), rep)
  eval_batch = {"image": images(b), "label": labels(b),
                "valid": jax.ShapeDtypeStruct((b,), jnp.bool_, sharding=shard)}
  infer = jax.jit(run_search.make_infer(model, source, config.seed),
                  in_shardings=(rep, rep, rep, shard), out_shardings=rep)
  epochs_evaluated = config.epochs // config.eval_every_epochs if config.eval_every_epochs else 0
  h = config.hessian
  options = hessian.HessianLoss(h.wrt, h.train_bn, h.weight_decay)
  measure = hessian.Measure(model, options, h.top_k, h.lanczos_iters, h.trace_samples,
                            host=False).on_mesh(mesh)
  hshard = parallel.batch_sharded(mesh, axis=1)
  h_images = jax.ShapeDtypeStruct((h.batches, b) + image_shape, jnp.float32, sharding=hshard)
  h_labels = jax.ShapeDtypeStruct((h.batches, b), jnp.int32, sharding=hshard)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
  measured = config.epochs // h.every_epochs if h.every_epochs else 0
  dim = sum(math.prod(a.shape) for a in jax.tree.leaves(state["alpha"]))
  hvps = (min(h.lanczos_iters, dim),) + ((h.trace_samples,) if h.trace_samples else ())
  return [
      Program("step", lambda: train_step.lower(step_state, step_batch), config.epochs * spe,
              b * n_seeds, step_factor),
      Program("infer", lambda: infer.lower(state["params"], state["batch_stats"], A, eval_batch),
              n_seeds * epochs_evaluated * math.ceil(alpha_half / b), b),
      Program("hessian", lambda: measure.lower(state["params"], state["batch_stats"],
                                               state["alpha"], h_images, h_labels, key),
              n_seeds * measured, b, loop_factor(hvps)),
  ]


def evaluation_programs(config, mesh) -> list[Program]:
  """Evaluation training's step and test step, as `evaluation.train` jits them."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from sdarts_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from sdarts_jax.evaluation import train  # pylint: disable=import-outside-toplevel
  from sdarts_jax.run import parallel  # pylint: disable=import-outside-toplevel
  train.check_config(config)
  rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  imagenet = config.data.name.startswith("imagenet")
  size = config.data.image_size if imagenet else 32
  image_shape = (size, size, 3)
  num_classes = 1000 if imagenet else (100 if config.data.name == "cifar100" else 10)
  n_train, n_test = _split_sizes(config)
  b = config.data.batch_size
  spe = n_train // b
  source = _source(config, image_shape, num_classes)
  preprocess = lambda key, images, training: pipeline.preprocess(
      key, images, source.mean, source.std, training and config.data.augment,
      config.data.crop_padding, config.data.cutout)
  model = train.build_model(config, num_classes)
  state = _abstract(jax.eval_shape(lambda: train.init_state(model, config, image_shape, spe)),
                    rep)
  images = jax.ShapeDtypeStruct((b,) + image_shape, jnp.uint8, sharding=shard)
  labels = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=shard)
  train_step = jax.jit(train.make_train_step(model, config, spe, preprocess),
                       in_shardings=(rep, shard), out_shardings=(rep, rep), donate_argnums=0)
  infer = jax.jit(train.make_infer(model, preprocess, config.seed),
                  in_shardings=(rep, rep, shard), out_shardings=rep)
  test_batch = {"image": images, "label": labels,
                "valid": jax.ShapeDtypeStruct((b,), jnp.bool_, sharding=shard)}
  evaluated = config.epochs // config.eval_every_epochs if config.eval_every_epochs else 1
  return [
      Program("train_step", lambda: train_step.lower(state, {"image": images, "label": labels}),
              config.epochs * spe, b),
      Program("test_step", lambda: infer.lower(state["params"], state["batch_stats"], test_batch),
              evaluated * math.ceil(n_test / b), b),
  ]


# ---------------------------------------------------------------- the compiler's verdict

@dataclasses.dataclass
class Verdict:
  """One compiled program's figures, per chip."""
  name: str
  lower_s: float
  compile_s: float
  memory_bytes: int        # arguments + outputs - aliased + temporaries + generated code
  argument_bytes: int
  temp_bytes: int
  flops: float             # the cost analysis's figures: a loop body counted once
  bytes_accessed: float
  loop_factor: float       # calls of a loop body per call (1 for a loop-free program)
  optimal_seconds: float   # the compiler's own estimate (-1 when it gives none)
  step_s: float            # `estimate`
  estimated_by: str
  per_run: int
  batch_per_chip: int
  compile_cpu_s: float = 0.0  # the compiler's CPU time (all its threads): unlike compile_s,
                              # about the same on a busy machine as on a quiet one


def loop_factor(loops: tuple[int, ...]) -> float:
  """How many times the cost analysis's figures to count for a program made of loops of
  equal bodies (the Hessian's Lanczos and Hutchinson loops, one HVP each) with trip counts
  `loops`: XLA's cost analysis counts a while loop's body once (checked: a 10-step
  fori_loop of a matmul reports one matmul's FLOPs), and the bodies are nearly all of the
  work, so the program costs about (sum of trip counts) / (number of loops) times them."""
  return sum(loops) / len(loops) if loops else 1.0


# A forward pass alone (the attack's clean and attacked losses) against a forward and a
# backward pass (every evaluation with gradients), in units of one forward pass.
FORWARD_ONLY = ("clean", "attacked")


def step_loop_factor(config, kind: str) -> float:
  """The search step's work over what its cost analysis counts (see `loop_factor`), each
  evaluation weighted 1 (forward only) or 3 (forward and backward): the scan step
  ("scan") counts one body, a full evaluation; the static step ("static") counts each
  distinct phase once (the PGD loop's body once for its `steps` iterations)."""
  from sdarts_jax.search import step  # pylint: disable=import-outside-toplevel
  plan = step.phases(config.method, config.perturb.steps, config.alpha.order, config.alpha.hvp)
  units = lambda phases: sum(1 if p in FORWARD_ONLY else 3 for p in phases)
  counted = 3 if kind == "scan" else units(dict.fromkeys(plan))
  return units(plan) / counted


def estimate(flops: float, bytes_accessed: float, factor: float, chip: Chip,
             optimal_seconds: float) -> tuple[float, str]:
  """(seconds per call, how): the compiler's optimal_seconds where it is valid (positive,
  for a loop-free program), else the roofline max(FLOPs / peak, bytes / bandwidth) of the
  figures times the loop factor. A lower bound either way: small-channel convolutions use a
  fraction of the matrix units."""
  if factor == 1 and optimal_seconds > 0:
    return optimal_seconds, "compiler"
  roofline = max(flops / chip.bf16_flops, bytes_accessed / chip.hbm_bytes_s)
  return roofline * factor, "roofline" + (f" x{factor:g} (loops)" if factor != 1 else "")


def compile_program(program: Program, chip: Chip, num_devices: int, effort: float):
  """(the program's Verdict, its compiled executable) for `num_devices` devices, each a `chip`."""
  t = time.perf_counter()
  lowered = program.lower()
  lower_s = time.perf_counter() - t
  t, cpu = time.perf_counter(), time.process_time()
  compiled = lowered.compile({"exec_time_optimization_effort": effort})
  compile_s, compile_cpu_s = time.perf_counter() - t, time.process_time() - cpu
  m = compiled.memory_analysis()
  memory = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes + m.generated_code_size_in_bytes)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  factor = program.loop_factor
  optimal = float(cost.get("optimal_seconds", -1.0))
  flops, accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  step_s, how = estimate(flops, accessed, factor, chip, optimal)
  return Verdict(program.name, lower_s, compile_s, int(memory), int(m.argument_size_in_bytes),
                 int(m.temp_size_in_bytes), flops, accessed, factor, optimal, step_s, how,
                 program.per_run, program.batch // num_devices, compile_cpu_s), compiled


def largest_batch_that_fits(v: Verdict, chip: Chip) -> int:
  """The largest per-chip batch whose buffers would fit the chip, by scaling the
  temporaries (which grow with the batch) linearly: an estimate."""
  fixed = v.memory_bytes - v.temp_bytes
  per_example = v.temp_bytes / max(v.batch_per_chip, 1)
  return max(0, int((chip.hbm_gib * 2**30 - fixed) // max(per_example, 1)))


def report(verdicts: list[Verdict], chip: Chip, topology: str, num_devices: int) -> str:
  """The table (one row per program) and the projected run time."""
  gib = 2**30
  lines = [f"TPU {topology}: {num_devices} devices, each a {chip.name} ({chip.hbm_gib:g} GiB HBM, "
           f"{chip.bf16_flops / 1e12:g} TFLOP/s bf16, {chip.hbm_bytes_s / 1e9:g} GB/s); figures "
           f"per device, from the TPU compiler on this machine (estimates, not measurements)",
           f"{'program':<11}{'compile s':>10}{'memory GiB':>11}{'GFLOP':>9}{'GB accessed':>12}"
           f"{'est. s/call':>12}  {'calls/run':>9}  how"]
  total = 0.0
  for v in verdicts:
    lines.append(f"{v.name:<11}{v.compile_s:>10.1f}{v.memory_bytes / gib:>11.3f}"
                 f"{v.flops * v.loop_factor / 1e9:>9.2f}{v.bytes_accessed * v.loop_factor / 1e9:>12.2f}"
                 f"{v.step_s:>12.4f}  {v.per_run:>9}  {v.estimated_by}")
    total += v.step_s * v.per_run
  lines.append(f"projected run: {total / 3600:.2f} h ({total:.0f} s) on the slice "
               f"(estimate: calls x estimated s/call, compute only)")
  return "\n".join(lines)


def check(config, topology: str, programs: list[str], effort: float = 0.0,
          log: Callable[[str], None] = print) -> tuple[list[Verdict], Chip, int]:
  """Compile the config's programs for `topology`; (verdicts, chip, chip count).
  CheckError for a bad topology, a missing libtpu, or a program that does not fit."""
  from sdarts_jax.model import ops  # pylint: disable=import-outside-toplevel
  from sdarts_jax.run import parallel  # pylint: disable=import-outside-toplevel
  devices = topology_devices(topology)
  chip = chip_of(devices)
  mesh = parallel.make_mesh(devices=devices)
  parallel.check_batch(config.data.batch_size, mesh, "config.data.batch_size")
  if config.model.impl == "auto":
    config.model.impl = ops.depthwise_impl("tpu")
  build = search_programs if config.mode == "search" else evaluation_programs
  chosen = build(config, mesh)
  unknown = set(programs) - {p.name for p in chosen}
  if unknown:
    raise CheckError(f"--programs: {', '.join(sorted(unknown))} not among this config's "
                     f"programs ({', '.join(p.name for p in chosen)})")
  verdicts = []
  for program in chosen:
    if programs and program.name not in programs:
      continue
    log(f"compiling {program.name} for {topology} ({len(devices)} devices, impl "
        f"{config.model.impl}, {config.get('dtype', 'float32')})...")
    v, _ = compile_program(program, chip, len(devices), effort)
    log(f"  {program.name}: lowered in {v.lower_s:.1f} s, compiled in {v.compile_s:.1f} s "
        f"({v.compile_cpu_s:.1f} s of CPU), "
        f"{v.memory_bytes / 2**30:.3f} GiB per chip")
    verdicts.append(v)
    if v.memory_bytes > chip.hbm_gib * 2**30:
      raise CheckError(
          f"{program.name} does not fit one {chip.name} chip: it needs "
          f"{v.memory_bytes / 2**30:.2f} GiB per chip (batch {v.batch_per_chip} per chip), the "
          f"chip has {chip.hbm_gib:g} GiB HBM; the largest per-chip batch that fits is about "
          f"{largest_batch_that_fits(v, chip)} (estimate)")
  return verdicts, chip, len(devices)


def main(argv):
  del argv
  config = flags.FLAGS.config
  if config is None:
    print("error: --config is required, e.g. --config=configs/cifar10_adv.py", file=sys.stderr)
    sys.exit(2)
  try:
    verdicts, chip, num_devices = check(config, flags.FLAGS.topology, flags.FLAGS.programs,
                                        flags.FLAGS.effort, log=lambda s: print(s, flush=True))
  except (CheckError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(report(verdicts, chip, flags.FLAGS.topology, num_devices))
  if flags.FLAGS.json:
    with open(flags.FLAGS.json, "w") as f:
      json.dump({"topology": flags.FLAGS.topology, "chip": dataclasses.asdict(chip),
                 "programs": [dataclasses.asdict(v) for v in verdicts]}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
