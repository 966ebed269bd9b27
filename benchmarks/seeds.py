"""Several seeds as one program against one-seed runs, compilation included: the wall time of
`python -m sdarts_jax.main --config.seeds=N` beside N runs of `--config.seed=s`, one after
another, each a fresh process without the persistent compilation cache.

  python benchmarks/seeds.py --data=../shared/data/cifar10-jpeg --seeds=4
  python benchmarks/seeds.py --config=configs/cifar10_adv.py:smoke --seeds=2 --repeats=2

The two sides alternate (one program, then the N runs; --repeats times) so that both see
the same machine; the table gives every repeat. Default size: the NAS-Bench-201 seeds
experiment of docs/seeds.md (method rs, C=8, 1 cell per stage, batch 32, 1024 images) for 2
epochs, without the Hessian. Measured figures belong in docs/seeds.md with the CPU named.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
import time


def size_flags(args) -> list[str]:
  return [f"--config={args.config}", f"--config.epochs={args.epochs}",
          "--config.compilation_cache=", "--config.hessian.every_epochs=0",
          *([f"--config.data.folder={args.data}"] if args.data else []), *args.extra]


def timed(command: list[str]) -> float:
  """Wall seconds of one command (which must succeed)."""
  t = time.time()
  subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return time.time() - t


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="configs/nb201_search.py:method=rs")
  p.add_argument("--data", default="", help="image folder (empty: the config's data)")
  p.add_argument("--seeds", type=int, default=4)
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("extra", nargs="*", default=["--config.model.channels=8",
                                              "--config.model.cells_per_stage=1",
                                              "--config.data.batch_size=32",
                                              "--config.data.max_examples=1024"],
                 help="more --config.field=value flags (default: the experiment's size)")
  args = p.parse_args()
  main_cmd = [sys.executable, "-m", "sdarts_jax.main"] + size_flags(args)
  rows = []
  for repeat in range(args.repeats):
    root = tempfile.mkdtemp(prefix="seeds_bench_")
    together = timed(main_cmd + [f"--config.seeds={args.seeds}", f"--workdir={root}/together"])
    apart = [timed(main_cmd + [f"--config.seed={2 + s}", f"--workdir={root}/seed{s}"])
             for s in range(args.seeds)]
    shutil.rmtree(root)
    rows.append((repeat + 1, together, sum(apart), apart))
  cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if "model name" in l),
             platform.processor())
  print(f"{args.seeds} seeds, {' '.join(size_flags(args))}; CPU: {cpu}\n")
  print("| repeat | one program, s | N one-seed runs, s (each) | ratio |")
  print("|---|---|---|---|")
  for repeat, together, apart_sum, apart in rows:
    print(f"| {repeat} | {together:.1f} | {apart_sum:.1f} ({', '.join(f'{a:.0f}' for a in apart)})"
          f" | {together / apart_sum:.2f} |")


if __name__ == "__main__":
  main()
