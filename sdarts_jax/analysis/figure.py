"""The paper's central figure at CPU size: lambda_max during DARTS, SDARTS-RS and SDARTS-ADV.

  python -m sdarts_jax.analysis.figure --data=../shared/data/cifar10-jpeg \
      --workdir=runs/figure --out=docs/lambda_max_cpu.png

Runs the three searches on a small supernet with the Hessian tracked every epoch (each a
normal, resumable search workdir under --workdir), then plots lambda_max against epoch for
the three in one PNG and prints the numbers. Rerunning resumes or reuses finished runs.

The runner and the size flags here are shared with the NAS-Bench-201 trajectory figure
(`sdarts_jax.analysis.trajectory`): `define_size_flags`, `sized`, `run_searches`.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags


def define_size_flags(workdir: str, out: str, epochs: int, channels: int, batch: int,
                      examples: int, hessian_batches: int) -> None:
  """The flags of a command that runs one small search per method, with its defaults."""
  flags.DEFINE_string("data", "", "Image folder ({train,test}/<class>/*.jpg); empty: TFDS.")
  flags.DEFINE_string("workdir", workdir, "Parent directory of the runs (one per method).")
  flags.DEFINE_string("out", out, "Output PNG.")
  flags.DEFINE_string("methods", "darts,rs,adv", "Methods to run.")
  flags.DEFINE_integer("epochs", epochs, "Search epochs.")
  flags.DEFINE_integer("channels", channels, "Initial channels.")
  flags.DEFINE_integer("batch", batch, "Batch size.")
  flags.DEFINE_integer("examples", examples, "Training images used (half weights, half alpha).")
  flags.DEFINE_integer("hessian_batches", hessian_batches,
                       "Validation batches averaged in each Hessian.")


def define_trajectory_flags() -> None:
  """The flags the trajectory figures add to `define_size_flags`'s: --hessian_every (read
  by their configs) and --run (read by `searches`)."""
  flags.DEFINE_integer("hessian_every", 2, "Track lambda_max every this many epochs (0: off).")
  flags.DEFINE_boolean("run", True, "Run (or resume) the searches; --norun only reads them.")
  flags.DEFINE_integer("seeds", 1, "Seeds per method (config.seeds: one program per method); "
                       "above 1 the figure and tables are their mean ± std "
                       "(`sdarts_jax.analysis.seeds`).")


def write_json_beside(out: str, payload: dict) -> str:
  """payload as JSON beside the figure `out` (the same name, .json); returns its path."""
  from sdarts_jax.run import metrics
  path = os.path.splitext(out)[0] + ".json"
  metrics.write_json(path, payload)
  return path


def sized(c, f):
  """Search config `c` with the sizes of `define_size_flags`'s flags `f` (data, epochs,
  channels, batch, images, Hessian batches); returns c."""
  c.epochs = f.epochs
  c.model.channels = f.channels
  c.data.batch_size, c.data.max_examples = f.batch, f.examples
  c.data.folder = f.data
  c.hessian.batches = f.hessian_batches
  c.seeds = getattr(f, "seeds", 1)  # the trajectory figures' --seeds
  c.log_every_steps = 10
  return c


def run_searches(configs: dict, parent: str, command: str) -> dict[str, str]:
  """Run one search per method, one after another, each in parent/<method>: started, resumed
  from its last checkpoint, or (when finished) reused as it is. configs: method -> search
  config. Returns method -> workdir. A preemption (SIGTERM) exits naming `command` (a module)
  to rerun; a configuration another run left in a workdir is refused (`lifecycle.check_resume`)."""
  from sdarts_jax.run import lifecycle
  from sdarts_jax.search import run_search, seeds
  workdirs = {}
  for method, config in configs.items():
    workdir = os.path.join(parent, method)
    several = seeds.is_multi_seed(config)
    try:
      (seeds.train_and_evaluate if several else run_search.train_and_evaluate)(config, workdir)
    except lifecycle.Preempted as e:
      sys.exit(f"{e} (python -m {command} with the same flags)")
    workdirs[method] = workdir
  return workdirs


def searches(f, config_for, command: str) -> dict[str, str]:
  """method -> workdir for the methods of --methods: `run_searches` of config_for(method, f)
  with --run, else the workdirs already under --workdir (a method without one is left out
  with a warning; ValueError when none is there)."""
  from sdarts_jax.run import metrics
  methods = f.methods.split(",")
  if f.run:
    return run_searches({m: config_for(m, f) for m in methods}, f.workdir, command)
  workdirs = {m: os.path.join(f.workdir, m) for m in methods}
  for m in [m for m, w in workdirs.items() if not os.path.exists(os.path.join(w, "config.json"))]:
    metrics.warn(f"{workdirs.pop(m)} is not a search workdir (yet): {m} left out")
  if not workdirs:
    raise ValueError(f"no search workdirs in {f.workdir} (--norun reads existing ones)")
  return workdirs


def describe(workdir: str, model: str) -> str:
  """The size of a run, from its config.json, for a figure's title; model: the part naming
  the model's size (config.model's fields may be named in braces, e.g. "{layers} cells")."""
  from sdarts_jax.run import metrics
  c = metrics.read_json(os.path.join(workdir, "config.json"))
  images = c["data"]["max_examples"] or "all"
  n = c.get("seeds", 1)
  seeds = (range(c["seed"], c["seed"] + n) if isinstance(n, int) else n) if n != 1 else [c["seed"]]
  return (f"C={c['model']['channels']}, {model.format(**c['model'])}, batch "
          f"{c['data']['batch_size']}, {images} training images, {c['epochs']} epochs, "
          f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}")


def config_for(method: str):
  from sdarts_jax import defaults
  f = flags.FLAGS
  c = sized(defaults.search_config(method), f)  # configs/cifar10_<method>.py without arguments
  c.space = f.space
  c.model.layers = f.layers
  c.hessian.every_epochs = 1
  return c


def main(argv):
  del argv
  from sdarts_jax.analysis import plots
  from sdarts_jax.run import lifecycle, metrics
  lifecycle.quiet_libraries()
  f = flags.FLAGS
  configs = {method: config_for(method) for method in f.methods.split(",")}
  series = {}
  for method, workdir in run_searches(configs, f.workdir, "sdarts_jax.analysis.figure").items():
    points = [(r["epoch"], r["hessian_lambda_max"])
              for r in metrics.read_records(workdir, "hessian")]
    series[plots.run_label(workdir)] = points
    print(json.dumps({"method": method, "lambda_max": points}))
  os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
  plots.trajectories(series, f.out)
  print(f"wrote {f.out}")


def define_flags() -> None:
  define_size_flags("runs/figure", "docs/lambda_max_cpu.png", epochs=15, channels=4, batch=32,
                    examples=2048, hessian_batches=2)
  flags.DEFINE_integer("layers", 5, "Cells.")
  flags.DEFINE_string("space", "s5", "Search space.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
