"""The cost of DARTS's second-order alpha step: seconds per search step of DARTS with the
first-order alpha step, the second order with H v exact, and with the reference's central
difference, timed interleaved in one process (each timed step of one variant is followed by
one of each other), so that a machine shared with other work slows all three alike.

  python benchmarks/second_order_step.py                      # 5 cells, C=8, batch 32
  python benchmarks/second_order_step.py --layers=3 --steps=4

Prints one JSON line: compile seconds, median seconds per step, and the ratio to the first
order, per variant. Random uint8 images; no persistent compilation cache.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> (the configs' method name, config.alpha.hvp)
VARIANTS = {"first_order": ("darts", "exact"), "second_order_exact": ("darts2", "exact"),
            "second_order_fd": ("darts2", "finite_difference")}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--layers", type=int, default=5)
  p.add_argument("--channels", type=int, default=8)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--space", default="s5")
  p.add_argument("--steps", type=int, default=3, help="timed steps per variant")
  args = p.parse_args()

  import jax
  import numpy as np

  from sdarts_jax import defaults
  from sdarts_jax.data import pipeline
  from sdarts_jax.search import run_search, scan_step

  source = pipeline.synthetic(16, 10, 32, 0)
  rng = np.random.default_rng(0)
  batch_of = lambda: {
      "train_image": rng.integers(0, 256, (args.batch, 32, 32, 3), np.uint8),
      "train_label": rng.integers(0, 10, (args.batch,), np.int32),
      "val_image": rng.integers(0, 256, (args.batch, 32, 32, 3), np.uint8),
      "val_label": rng.integers(0, 10, (args.batch,), np.int32)}
  preprocess = lambda key, images: pipeline.preprocess(key, images, source.mean, source.std, True)
  spe = 390
  compiled, states, compile_s = {}, {}, {}
  for name, (method, hvp) in VARIANTS.items():
    config = defaults.search_config(method)
    config.space = args.space
    config.model.layers, config.model.channels = args.layers, args.channels
    config.data.batch_size = args.batch
    config.alpha.hvp = hvp
    model = run_search.build_model(config, 10)
    states[name] = jax.jit(lambda: run_search.init_state(model, config, (32, 32, 3), spe))()
    t = time.time()
    compiled[name] = jax.jit(scan_step.make_step(model, config, spe, preprocess)).lower(
        states[name], batch_of()).compile()
    compile_s[name] = round(time.time() - t, 1)
    states[name], m = compiled[name](states[name], batch_of())  # warm-up
    jax.block_until_ready(m)
  times = {name: [] for name in VARIANTS}
  for _ in range(args.steps):
    for name in VARIANTS:
      batch = batch_of()
      t = time.time()
      states[name], m = compiled[name](states[name], batch)
      jax.block_until_ready(m)
      times[name].append(time.time() - t)
  s_per_step = {name: float(np.median(t)) for name, t in times.items()}
  print(json.dumps({
      "layers": args.layers, "channels": args.channels, "batch": args.batch,
      "space": args.space, "device": jax.devices()[0].device_kind, "jax": jax.__version__,
      "cores": len(os.sched_getaffinity(0)), "compile_s": compile_s,
      "s_per_step": {k: round(v, 3) for k, v in s_per_step.items()},
      "ratio_to_first_order": {k: round(v / s_per_step["first_order"], 2)
                               for k, v in s_per_step.items()}}))


if __name__ == "__main__":
  main()
