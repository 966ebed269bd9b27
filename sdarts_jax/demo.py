"""`make demo`: a short real SDARTS-ADV search end to end (configs/demo.py).

Data, in order: the image folder given with --data; CIFAR-10 from TFDS when it is
prepared (or can be prepared: TensorFlow installed and the network reachable); the folder
given with --fallback when it exists. With none of them it says what to do and exits 2.
"""
from __future__ import annotations

import importlib.util
import os
import sys

from absl import app, flags

flags.DEFINE_string("workdir", "runs/demo", "Where the demo writes its run.")
flags.DEFINE_string("data", "", "An image folder {train,test}/<class>/*.jpg.")
flags.DEFINE_string("fallback", "", "An image folder used when TFDS CIFAR-10 is unavailable.")


def _tfds_cifar10_ready(config) -> bool:
  from sdarts_jax import data
  try:
    data.load(config.data, "train")
    return True
  except data.DataError:
    pass
  if importlib.util.find_spec("tensorflow") is None:
    return False
  import tensorflow_datasets as tfds
  print("CIFAR-10 is not prepared for TFDS; trying to download and prepare it...")
  try:
    tfds.builder("cifar10").download_and_prepare(file_format="array_record")
    return True
  except Exception as e:  # no network, no disk: fall back to the folder options
    print(f"could not prepare CIFAR-10 with TFDS: {str(e).splitlines()[0]}")
    return False


def main(argv):
  del argv
  from configs import demo as demo_config
  from sdarts_jax import run, search
  run.quiet_libraries()
  config = demo_config.get_config()
  f = flags.FLAGS
  if f.data:
    config.data.folder = f.data
  elif not _tfds_cifar10_ready(config):
    if f.fallback and os.path.isdir(f.fallback):
      print(f"using the image folder {f.fallback}")
      config.data.folder = f.fallback
    else:
      print("error: no data for the demo. Either give an image folder laid out as "
            "{train,test}/<class>/*.jpg:\n  make demo DEMO_DATA=/path/to/cifar10-jpeg\n"
            "or prepare CIFAR-10 for TFDS (needs TensorFlow and the network):\n"
            "  .venv/bin/pip install -e '.[prepare]' && .venv/bin/tfds build cifar10 "
            "--file_format=array_record", file=sys.stderr)
      sys.exit(2)
  record = run.as_command(search.train_and_evaluate, config, f.workdir)
  print(f"\ndemo finished: genotype in {f.workdir}/genotype.json, metrics in "
        f"{f.workdir}/metrics.jsonl, checkpoints in {f.workdir}/checkpoints "
        f"(eval accuracy {record.get('eval_accuracy', float('nan')):.3f})")


if __name__ == "__main__":
  app.run(main)
