"""Search-step speed: compile time, seconds per step, images/s and peak memory, beside the
official PyTorch SDARTS step on request.

  python benchmarks/search_step.py                      # 5 cells, C=8, batch 32; darts rs adv
  python benchmarks/search_step.py --layers=8 --channels=16 --batch=64 --methods=adv
  python benchmarks/search_step.py --methods=darts,darts2     # first against second order
  python benchmarks/search_step.py --reference=path/to/SDARTS --reference-python=.venv-ref/bin/python
  make bench-reference REF=path/to/SDARTS               # the same, making .venv-ref first

Each method runs in its own process (peak memory is that process's maximum RSS), without
the persistent compilation cache, on random uint8 images, in the space given by --space.
With --reference (the root of the official checkout), each method runs here and then in the
official code (benchmarks/reference_step.py under --reference-python, a Python with
PyTorch), one after the other so that both see the same machine, and one markdown table
compares them. Both sides get the same cores: --threads (default: all this process may use)
pins every child process to that many cores and is PyTorch's torch.set_num_threads; XLA:CPU
has no thread-count setting and sizes its thread pool by the cores it may use. Measured
speeds belong in README.md, with the machine they were measured on.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time


def measure(method: str, layers: int, channels: int, batch: int, space: str, steps: int) -> dict:
  import jax
  import numpy as np

  from sdarts_jax import defaults
  from sdarts_jax.data import pipeline
  from sdarts_jax.run import loop, programs
  from sdarts_jax.search import run_search, scan_step

  config = defaults.search_config(method)
  config.space = space
  config.model.layers, config.model.channels = layers, channels
  config.data.batch_size = batch
  spe = 390
  source = pipeline.synthetic(16, 10, 32, 0)
  model = run_search.build_model(config, 10)
  state = loop.compile_init(lambda: run_search.init_state(model, config, (32, 32, 3), spe), None)()
  preprocess = lambda key, images: pipeline.preprocess(key, images, source.mean, source.std, True)
  fn = jax.jit(scan_step.make_step(model, config, spe, preprocess), donate_argnums=0)
  rng = np.random.default_rng(0)
  batch_of = lambda: {
      "train_image": rng.integers(0, 256, (batch, 32, 32, 3), np.uint8),
      "train_label": rng.integers(0, 10, (batch,), np.int32),
      "val_image": rng.integers(0, 256, (batch, 32, 32, 3), np.uint8),
      "val_label": rng.integers(0, 10, (batch,), np.int32)}
  t = time.time()
  compiled = fn.lower(state, batch_of()).compile()
  compile_s = time.time() - t
  programs.release_freed_memory()  # as runs do after compiling (peak memory below)
  info = {"impl": "sdarts_jax", "method": method, "layers": layers, "channels": channels,
          "batch": batch, "space": space, "device": jax.devices()[0].device_kind,
          "jax": jax.__version__, "cores": len(os.sched_getaffinity(0)),
          "compile_s": round(compile_s, 1)}
  if steps == 0:  # compile only
    return info
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
  return {**info, "s_per_step": round(s_per_step, 3),
          "img_per_s": round(batch / s_per_step, 1),
          "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
          "finite": bool(np.isfinite(float(m["train_loss"])))}


LABELS = {"darts": "DARTS (1st order)", "darts2": "DARTS (2nd order, exact H v)",
          "rs": "SDARTS-RS", "adv": "SDARTS-ADV"}


def cpu_model() -> str:
  """The CPU's model name, from /proc/cpuinfo or else lscpu."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
  except OSError:
    return "unknown CPU"
  for line in out.splitlines():
    if line.startswith("Model name:"):
      return line.split(":", 1)[1].strip()
  return "unknown CPU"


def run_child(cmd: list[str], cores: list[int], what: str, env: dict | None = None) -> dict:
  """Runs cmd pinned to `cores`; returns the JSON of its last output line (also printed)."""
  out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       preexec_fn=lambda: os.sched_setaffinity(0, cores))
  if out.returncode:
    sys.exit(f"{what} failed:\n{out.stderr[-3000:]}{out.stdout[-3000:]}")
  line = out.stdout.strip().splitlines()[-1]
  print(line, flush=True)
  return json.loads(line)


def table(rows: list[tuple[dict, dict | None]]) -> str:
  """One markdown table; the official columns only when the official step was run."""
  fmt = lambda r, key, unit="": "-" if r is None or key not in r else f"{r[key]}{unit}"
  with_ref = any(ref for _, ref in rows)
  if with_ref:
    head = ["method", "sdarts_jax s/step", "official s/step", "ratio (official/ours)",
            "compile s (ours)", "peak RSS ours", "peak RSS official"]
  else:
    head = ["method", "sdarts_jax s/step", "img/s", "compile s", "peak RSS"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for ours, ref in rows:
    cells = [LABELS.get(ours["method"], ours["method"]), fmt(ours, "s_per_step")]
    if with_ref:
      ratio = ("-" if ref is None or "s_per_step" not in ours
               else f"{ref['s_per_step'] / ours['s_per_step']:.2f}x")
      cells += [fmt(ref, "s_per_step"), ratio, fmt(ours, "compile_s"),
                fmt(ours, "peak_rss_gib", " GiB"), fmt(ref, "peak_rss_gib", " GiB")]
    else:
      cells += [fmt(ours, "img_per_s"), fmt(ours, "compile_s"), fmt(ours, "peak_rss_gib", " GiB")]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def header(args, rows: list[tuple[dict, dict | None]], cores: list[int]) -> str:
  """The machine, versions, threads and sizes behind the table."""
  ours, ref = rows[0]
  count = lambda n, what: f"{n} {what}{'s' * (n != 1)}"
  versions = f"jax {ours['jax']}" + (f", torch {ref['torch']}" if ref else "")
  threads = f"sdarts_jax: XLA:CPU on {count(len(cores), 'core')}"
  if ref:
    threads += (f"; official: {count(ref['threads'], 'torch thread')} on "
                f"{count(len(cores), 'core')}")
  timing = (f"median of {count(args.steps, 'step')} after a warm-up step" if args.steps
            else "compilation only")
  return (f"{cpu_model()}, {os.cpu_count()} cores; {versions}; threads: {threads}; "
          f"{args.layers} cells, C={args.channels}, batch {args.batch}, space {args.space}; "
          f"{timing}")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--methods", default="darts,rs,adv")
  p.add_argument("--layers", type=int, default=5)
  p.add_argument("--channels", type=int, default=8)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--space", default="s5")
  p.add_argument("--steps", type=int, default=3,
                 help="timed steps after one warm-up step (0: measure compilation only)")
  p.add_argument("--reference", default="",
                 help="root of the official SDARTS checkout: time its step too")
  p.add_argument("--reference-python", default=".venv-ref/bin/python",
                 help="a Python with PyTorch for the official step (make bench-reference makes "
                      ".venv-ref)")
  p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                 help="cores for each side, and PyTorch's thread count (default: all cores "
                      "this process may use)")
  p.add_argument("--one", default="", help=argparse.SUPPRESS)  # child process mode
  args = p.parse_args()
  if args.one:
    print(json.dumps(measure(args.one, args.layers, args.channels, args.batch, args.space,
                             args.steps)))
    return
  here = os.path.dirname(os.path.abspath(__file__))
  available = sorted(os.sched_getaffinity(0))
  if not 1 <= args.threads <= len(available):
    sys.exit(f"error: --threads={args.threads}: this process may use 1 to {len(available)} cores")
  cores = available[:args.threads]
  if args.reference:
    if args.steps < 1:
      sys.exit("error: --reference needs --steps of at least 1 (PyTorch compiles nothing)")
    if not os.path.isfile(os.path.join(args.reference, "sota", "cnn", "model_search.py")):
      sys.exit(f"error: --reference={args.reference}: no sota/cnn/model_search.py there; give "
               "the root of the official SDARTS checkout")
    if not shutil.which(args.reference_python):
      sys.exit(f"error: --reference-python={args.reference_python}: not found; make "
               "bench-reference REF=... makes .venv-ref, or give a Python that has PyTorch")
  sizes = [f"--layers={args.layers}", f"--channels={args.channels}", f"--batch={args.batch}",
           f"--space={args.space}", f"--steps={args.steps}"]
  env = dict(os.environ, PYTHONPATH=os.path.dirname(here))
  rows = []
  for method in args.methods.split(","):
    ours = run_child([sys.executable, __file__, f"--one={method}", *sizes], cores,
                     f"sdarts_jax {method}", env)
    ref = None
    if args.reference:
      ref = run_child([args.reference_python, os.path.join(here, "reference_step.py"),
                       f"--ref={args.reference}", f"--methods={method}", *sizes,
                       f"--threads={args.threads}"], cores, f"official {method}")
    rows.append((ours, ref))
  print()
  print(header(args, rows, cores))
  print()
  print(table(rows))


if __name__ == "__main__":
  main()
