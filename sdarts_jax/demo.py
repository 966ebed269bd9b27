"""`make demo`: a short real SDARTS-ADV search end to end (configs/demo.py).

Data, in order: the folder given with --data (an image folder, or CIFAR-10's
cifar-10-batches-py); CIFAR-10 from TFDS when it is prepared (or can be prepared:
TensorFlow installed and the network reachable); the folder given with --fallback when it
exists; CIFAR-10's python archive from --url, downloaded once into the user's cache and
checked against --checksums (`sdarts_jax.data.download`). With none of them it says what to do
and exits 2.
"""
from __future__ import annotations

import importlib.util
import os
import sys

from absl import app, flags

from sdarts_jax.data import download

flags.DEFINE_string("workdir", "runs/demo", "Where the demo writes its run.")
flags.DEFINE_string("data", "", "An image folder {train,test}/<class>/*.jpg, or CIFAR-10's "
                    "cifar-10-batches-py folder.")
flags.DEFINE_string("fallback", "", "A data folder used when TFDS CIFAR-10 is unavailable.")
flags.DEFINE_string("url", download.CIFAR10_URL,
                    "CIFAR-10's python archive, downloaded when there is no other data.")
flags.DEFINE_string("checksums", ",".join(f"{k}:{v}" for k, v in
                                          download.CIFAR10_CHECKSUMS.items()),
                    "What the archive at --url must match: md5:HEX and/or sha256:HEX.")


def _tfds_cifar10_ready(config) -> bool:
  from sdarts_jax.data import pipeline
  try:
    pipeline.load(config.data, "train")
    return True
  except pipeline.DataError:
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


def choose_data(config, given: str, fallback: str, url: str, checksums: dict[str, str]) -> str:
  """The demo's config.data.folder: `given`; "" when TFDS's CIFAR-10 is ready; `fallback`
  when it is a directory; else the cifar-10-batches-py folder of the archive at `url`
  (downloaded once, cached). download.DownloadError when that download fails."""
  if given:
    print(f"data: {given}")
    return given
  if _tfds_cifar10_ready(config):
    print("data: CIFAR-10 from TFDS")
    return ""
  if fallback and os.path.isdir(fallback):
    print(f"data: {fallback} (CIFAR-10 is not prepared for TFDS)")
    return fallback
  print("data: CIFAR-10 is not prepared for TFDS and there is no folder "
        f"{fallback or '(no --fallback)'}; using CIFAR-10's python archive from {url}")
  return str(download.cifar10(url, checksums))


def no_data_message(reason: str, fallback: str) -> str:
  """What to do when the demo has no data: one `error:` line, then the options."""
  return (f"error: no data for the demo: CIFAR-10 is not prepared for TFDS, there is no "
          f"folder {fallback or '(no --fallback)'}, and {reason}. Either:\n"
          "  give a data folder ({train,test}/<class>/*.jpg, or CIFAR-10's unpacked "
          "cifar-10-batches-py):\n    make demo DEMO_DATA=/path/to/folder\n"
          "  or point the download at a reachable copy of cifar-10-python.tar.gz:\n"
          "    make demo DEMO_URL=file:///path/to/cifar-10-python.tar.gz\n"
          "  or prepare CIFAR-10 for TFDS (needs TensorFlow and the network):\n"
          "    .venv/bin/pip install -e '.[prepare]' && .venv/bin/tfds build cifar10 "
          "--file_format=array_record")


def main(argv):
  del argv
  from sdarts_jax import defaults
  from sdarts_jax.run import lifecycle
  from sdarts_jax.search import run_search
  lifecycle.quiet_libraries()
  config = defaults.from_file("demo")
  f = flags.FLAGS
  try:
    checksums = download.parse_checksums(f.checksums)
  except ValueError as e:
    print(f"error: --checksums={f.checksums}: {e}", file=sys.stderr)
    sys.exit(2)
  try:
    config.data.folder = choose_data(config, f.data, f.fallback, f.url, checksums)
  except download.DownloadError as e:
    print(no_data_message(str(e), f.fallback), file=sys.stderr)
    sys.exit(2)
  record = lifecycle.as_command(run_search.train_and_evaluate, config, f.workdir)
  from sdarts_jax.analysis import draw  # matplotlib only now (it may log building its cache)
  draw.draw_final_cell(os.path.join(f.workdir, "genotype.json"))
  print(f"\ndemo finished: genotype in {f.workdir}/genotype.json, metrics in "
        f"{f.workdir}/metrics.jsonl, checkpoints in {f.workdir}/checkpoints "
        f"(eval accuracy {record.get('eval_accuracy', float('nan')):.3f})")


if __name__ == "__main__":
  app.run(main)
