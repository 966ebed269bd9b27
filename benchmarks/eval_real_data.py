"""Real-data check of the evaluation training: a small network of a published cell trained
from scratch on the 10,000 shared CIFAR-10 training images, top-1 on the 2,000 test images.

  python benchmarks/eval_real_data.py                       # darts_v2, 8 cells, C=16, 5 epochs
  python benchmarks/eval_real_data.py --arch=c10_s5_pgd --epochs=20 --workdir=runs/bench

The run is `sdarts_jax.evaluation.train.train_and_evaluate` with the CIFAR protocol (SGD
0.025 cosine, batch 96, cutout 16, auxiliary weight 0.4, drop-path ramp to 0.2, clip 5)
at a size the 2 CPU cores train in minutes (RobustDARTS's small setting, 8 cells and 16
channels, by default), except that epoch e uses the cosine at e rather than the
reference's e + 1, which would leave the last epoch of a short run at lr 0. Prints one
JSON line: accuracy, epochs, minutes (wall clock, compilation included), median seconds
per epoch (train + test).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = next((str(p) for p in (ROOT.parent / "shared/data/cifar10-jpeg",) if p.is_dir()),
                    "")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default=DEFAULT_DATA,
                      help="image folder {train,test}/<class>/*.jpg")
  parser.add_argument("--arch", default="darts_v2")
  parser.add_argument("--layers", type=int, default=8)
  parser.add_argument("--channels", type=int, default=16)
  parser.add_argument("--epochs", type=int, default=5)
  parser.add_argument("--batch", type=int, default=96)
  parser.add_argument("--workdir", default="", help="default: a temporary directory")
  args = parser.parse_args()
  if not args.data:
    sys.exit("error: no image folder; pass --data=PATH/cifar10-jpeg")

  from sdarts_jax.evaluation import defaults, train

  config = defaults.cifar_config("cifar10")
  config.arch = args.arch
  config.epochs = args.epochs
  config.model.layers, config.model.channels = args.layers, args.channels
  config.data.folder = args.data
  config.data.batch_size = args.batch
  config.optim.lr_epoch_offset = 0  # the reference's offset would leave a short run's
  config.log_every_steps = 20       # last epoch at lr 0
  config.compilation_cache = ""
  workdir = args.workdir or tempfile.mkdtemp(prefix="eval_real_data_")
  t = time.time()
  record = train.train_and_evaluate(config, workdir)
  minutes = (time.time() - t) / 60
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    epochs = [json.loads(line) for line in f if '"kind": "epoch"' in line]
  result = {
      "arch": args.arch, "layers": args.layers, "channels": args.channels,
      "params": record["params"], "batch": args.batch, "epochs": record["epoch"],
      "test_accuracy": round(record["test_accuracy"], 4),
      "test_top5_accuracy": round(record["test_top5_accuracy"], 4),
      "train_accuracy": round(record["train_accuracy"], 4),
      "test_accuracy_per_epoch": [round(e["test_accuracy"], 4) for e in epochs],
      "minutes": round(minutes, 1),
      "seconds_per_epoch": round(sorted(e["seconds"] for e in epochs)[len(epochs) // 2], 1),
      "workdir": workdir,
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
