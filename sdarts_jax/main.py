"""Command line: python -m sdarts_jax.main --config=configs/cifar10_adv.py --workdir=DIR

`--config.field=value` overrides any config field. Configuration and data mistakes end
with one line on stderr and exit status 2, not a traceback.
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (path[:argument]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and genotypes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from sdarts_jax import parallel
  parallel.initialize_distributed()
  from sdarts_jax import run, search  # after distributed init: importing JAX modules is fine,
  config = flags.FLAGS.config     # touching devices is not
  run.quiet_libraries()
  if config.mode == "search":
    run.as_command(search.train_and_evaluate, config, flags.FLAGS.workdir)
  elif config.mode == "train":
    from sdarts_jax.evaluation import train
    run.as_command(train.train_and_evaluate, config, flags.FLAGS.workdir)
  else:
    print(f"error: unknown config.mode {config.mode!r}; known: search, train", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
