"""XLA compile options A/B on the whole search step, in one process: the step compiled with
each set of options, then stepped alternately (pairs), so that machine noise hits both.

  python benchmarks/compile_options_ab.py --pairs=4 \
      '{"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_ELTWISE"}'

The default options always run first; each argument is one more variant (a JSON object of
XLA debug options). Prints the tracing and lowering time and the StableHLO size, then per
variant the compile seconds (wall and CPU) and the optimised HLO's size, the largest state
difference after one step, the median s/step of each and the per-pair speed-up over the
default.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ops(text: str) -> int:
  """The operations in an (MLIR or HLO) module's text: lines that assign a value."""
  return sum(" = " in line for line in text.splitlines())


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("variants", nargs="*", help="JSON objects of XLA options")
  p.add_argument("--method", default="darts")
  p.add_argument("--layers", type=int, default=5)
  p.add_argument("--channels", type=int, default=8)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--pairs", type=int, default=4)
  args = p.parse_args()

  import jax
  import numpy as np

  from sdarts_jax import defaults
  from sdarts_jax.data import pipeline
  from sdarts_jax.run import loop
  from sdarts_jax.search import run_search, scan_step

  config = defaults.search_config(args.method)
  config.model.layers, config.model.channels = args.layers, args.channels
  config.data.batch_size = args.batch
  spe = 390
  source = pipeline.synthetic(16, 10, 32, 0)
  model = run_search.build_model(config, 10)
  state = loop.compile_init(lambda: run_search.init_state(model, config, (32, 32, 3), spe), None)()
  preprocess = lambda key, images: pipeline.preprocess(key, images, source.mean, source.std, True)
  fn = jax.jit(scan_step.make_step(model, config, spe, preprocess))
  rng = np.random.default_rng(0)
  n = args.batch
  batch = {"train_image": rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
           "train_label": rng.integers(0, 10, (n,), np.int32),
           "val_image": rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
           "val_label": rng.integers(0, 10, (n,), np.int32)}
  variants = [{}] + [json.loads(v) for v in args.variants]
  t, cpu = time.time(), time.process_time()
  lowered = fn.lower(state, batch)
  print(f"traced and lowered in {time.time() - t:.1f} s ({time.process_time() - cpu:.1f} s "
        f"of CPU): {_ops(lowered.as_text())} StableHLO operations", flush=True)
  compiled = []
  for options in variants:
    t, cpu = time.time(), time.process_time()
    compiled.append(lowered.compile(compiler_options=options or None))
    print(f"{options or 'default'}: compiled in {time.time() - t:.1f} s "
          f"({time.process_time() - cpu:.1f} s of CPU), optimised HLO "
          f"{_ops(compiled[-1].as_text())} instructions", flush=True)
  first = [jax.tree.leaves(c(state, batch)[0]) for c in compiled]
  for options, leaves in zip(variants[1:], first[1:]):
    diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
               for a, b in zip(first[0], leaves) if np.asarray(a).dtype.kind == "f")
    print(f"{options}: largest state difference after one step {diff:.2e}")
  times = [[] for _ in variants]
  for _ in range(args.pairs):
    for i, c in enumerate(compiled):
      t = time.time()
      jax.block_until_ready(c(state, batch))
      times[i].append(time.time() - t)
  for options, ts in zip(variants, times):
    print(f"{options or 'default'}: median {np.median(ts):.3f} s/step")
  for options, ts in zip(variants[1:], times[1:]):
    ratios = np.array(times[0]) / np.array(ts)
    print(f"{options}: speed-up per pair {np.round(ratios, 2).tolist()}, "
          f"median {np.median(ratios):.2f}")


if __name__ == "__main__":
  main()
