"""Search-step speed: compile time, seconds per step, images/s and peak memory.

  python benchmarks/search_step.py                      # 5 cells, C=8, batch 32; darts rs adv
  python benchmarks/search_step.py --layers=8 --channels=16 --batch=64 --methods=adv

Each method runs in its own process (peak memory is that process's maximum RSS), without
the persistent compilation cache, on random uint8 images, in the space given by --space.
Reference (official PyTorch SDARTS code on the same 2-core machines, 5 cells, C=8,
batch 32): 8.1 s per DARTS step, 8.4 s RS, 35.2 s ADV.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def measure(method: str, layers: int, channels: int, batch: int, space: str, steps: int) -> dict:
  import jax
  import numpy as np

  from sdarts_jax import data, defaults, search, step

  config = defaults.search_config(method)
  config.space = space
  config.model.layers, config.model.channels = layers, channels
  config.data.batch_size = batch
  spe = 390
  source = data.synthetic(16, 10, 32, 0)
  model = search.build_model(config, 10)
  state = jax.jit(lambda: search.init_state(model, config, (32, 32, 3), spe))()
  preprocess = lambda key, images: data.preprocess(key, images, source.mean, source.std, True)
  fn = jax.jit(step.make_step(model, config, spe, preprocess), donate_argnums=0)
  rng = np.random.default_rng(0)
  batch_of = lambda: {
      "train_image": rng.integers(0, 256, (batch, 32, 32, 3), np.uint8),
      "train_label": rng.integers(0, 10, (batch,), np.int32),
      "val_image": rng.integers(0, 256, (batch, 32, 32, 3), np.uint8),
      "val_label": rng.integers(0, 10, (batch,), np.int32)}
  t = time.time()
  compiled = fn.lower(state, batch_of()).compile()
  compile_s = time.time() - t
  if steps == 0:  # compile only
    return {"method": method, "layers": layers, "channels": channels, "batch": batch,
            "space": space, "device": jax.devices()[0].device_kind,
            "compile_s": round(compile_s, 1)}
  state, m = compiled(state, batch_of())  # warm-up
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    b = batch_of()
    t = time.time()
    state, m = compiled(state, b)
    jax.block_until_ready(m)
    times.append(time.time() - t)
  s_per_step = float(np.median(times))
  return {"method": method, "layers": layers, "channels": channels, "batch": batch,
          "space": space, "device": jax.devices()[0].device_kind,
          "compile_s": round(compile_s, 1), "s_per_step": round(s_per_step, 3),
          "img_per_s": round(batch / s_per_step, 1),
          "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
          "finite": bool(np.isfinite(float(m["train_loss"])))}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--methods", default="darts,rs,adv")
  p.add_argument("--layers", type=int, default=5)
  p.add_argument("--channels", type=int, default=8)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--space", default="s5")
  p.add_argument("--steps", type=int, default=3,
                 help="timed steps after one warm-up step (0: measure compilation only)")
  p.add_argument("--one", default="", help=argparse.SUPPRESS)  # child process mode
  args = p.parse_args()
  if args.one:
    print(json.dumps(measure(args.one, args.layers, args.channels, args.batch, args.space,
                             args.steps)))
    return
  for method in args.methods.split(","):
    cmd = [sys.executable, __file__, f"--one={method}", f"--layers={args.layers}",
           f"--channels={args.channels}", f"--batch={args.batch}", f"--space={args.space}",
           f"--steps={args.steps}"]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
      sys.exit(f"{method} failed:\n{out.stderr[-3000:]}")
    print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
  main()
