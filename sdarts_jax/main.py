"""Command line: python -m sdarts_jax.main --config=configs/cifar10_adv.py --workdir=DIR

`--config.field=value` overrides any config field. Configuration and data mistakes (a
flag, a config file that is missing or rejects its argument, a bad field) end with one
line on stderr and exit status 2, not a traceback.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (path[:argument]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and genotypes.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a mistake in a flag or the config file as one `error:` line
  and exit status 2."""
  try:
    argv = flags.FLAGS(argv)
    flags.FLAGS.config.mode  # a config file that failed to load raises when first read
    return argv
  except flags.Error as e:
    # A config file's own error comes as its traceback after the flag: keep the last line.
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    flag = lines[0].split(": Error whilst parsing config file")[0]
    text = flag if len(lines) == 1 else f"{flag}: {lines[-1].split(': ', 1)[-1]}"
  except OSError as e:
    text = f"--config: cannot load the config file: {str(e).strip().splitlines()[-1].strip()}"
  except AttributeError as e:  # --config.FIELD=... for a field the config does not have
    name, *hint = str(e.args[0].args[0] if isinstance(e.args[0], KeyError) else e).splitlines()
    text = f"--config.*: the config has no field {name}" + "".join(f"; {h}" for h in hint)
  print(f"error: {text}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  del argv
  from sdarts_jax.run import parallel
  try:
    parallel.initialize_distributed()
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  # After distributed init: importing JAX modules is fine, touching devices is not.
  from sdarts_jax.run import lifecycle
  from sdarts_jax.search import run_search, seeds
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  lifecycle.quiet_libraries()
  with parallel.end_with_the_others():
    if config.mode == "search":
      several = lifecycle.as_command(seeds.is_multi_seed, config)
      lifecycle.as_command(seeds.train_and_evaluate if several else run_search.train_and_evaluate,
                           config, workdir)
      # matplotlib only now: importing it can build its font cache and log about it.
      from sdarts_jax.analysis import draw
      for folder in ([seeds.seed_dir(workdir, s) for s in seeds.seed_list(config)]
                     if several else [workdir]):
        draw.draw_final_cell(os.path.join(folder, "genotype.json"))
    elif config.mode == "train":
      from sdarts_jax.evaluation import train
      lifecycle.as_command(train.train_and_evaluate, config, workdir)
    else:
      print(f"error: unknown config.mode {config.mode!r}; known: search, train", file=sys.stderr)
      sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
