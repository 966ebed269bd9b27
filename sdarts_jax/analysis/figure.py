"""The paper's central figure at CPU size: lambda_max during DARTS, SDARTS-RS and SDARTS-ADV.

  python -m sdarts_jax.analysis.figure --data=../shared/data/cifar10-jpeg \
      --workdir=runs/figure --out=docs/lambda_max_cpu.png

Runs the three searches on a small supernet with the Hessian tracked every epoch (each a
normal, resumable search workdir under --workdir), then plots lambda_max against epoch for
the three in one PNG and prints the numbers. Rerunning resumes or reuses finished runs.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags


def config_for(method: str):
  from sdarts_jax import defaults
  f = flags.FLAGS
  c = defaults.search_config(method)  # configs/cifar10_<method>.py without arguments
  c.space = f.space
  c.epochs = f.epochs
  c.model.layers, c.model.channels = f.layers, f.channels
  c.data.batch_size, c.data.max_examples = f.batch, f.examples
  c.data.folder = f.data
  c.hessian.every_epochs = 1
  c.hessian.batches = f.hessian_batches
  c.log_every_steps = 10
  return c


def main(argv):
  del argv
  from sdarts_jax import metrics, run, search
  from sdarts_jax.analysis import plots
  run.quiet_libraries()
  f = flags.FLAGS
  series = {}
  for method in f.methods.split(","):
    workdir = os.path.join(f.workdir, method)
    try:
      search.train_and_evaluate(config_for(method), workdir)
    except run.Preempted as e:
      sys.exit(f"{e} (python -m sdarts_jax.analysis.figure with the same flags)")
    points = [(r["epoch"], r["hessian_lambda_max"])
              for r in metrics.read_records(workdir, "hessian")]
    series[plots.run_label(workdir)] = points
    print(json.dumps({"method": method, "lambda_max": points}))
  os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
  plots.trajectories(series, f.out)
  print(f"wrote {f.out}")


def define_flags() -> None:
  flags.DEFINE_string("data", "", "Image folder ({train,test}/<class>/*.jpg); empty: TFDS cifar10.")
  flags.DEFINE_string("workdir", "runs/figure", "Parent directory of the three runs.")
  flags.DEFINE_string("out", "docs/lambda_max_cpu.png", "Output PNG.")
  flags.DEFINE_string("methods", "darts,rs,adv", "Methods to run.")
  flags.DEFINE_integer("epochs", 15, "Search epochs.")
  flags.DEFINE_integer("layers", 5, "Cells.")
  flags.DEFINE_integer("channels", 4, "Initial channels.")
  flags.DEFINE_integer("batch", 32, "Batch size.")
  flags.DEFINE_integer("examples", 2048, "Training images used (half weights, half alpha).")
  flags.DEFINE_integer("hessian_batches", 2, "Validation batches averaged in each Hessian.")
  flags.DEFINE_string("space", "s5", "Search space.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
