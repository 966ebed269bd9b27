"""Where the seconds of a search step go: XLA:CPU's own per-instruction timings, by kind.

  python benchmarks/profile_step.py                         # DARTS, 5 cells, C=8, batch 32
  python benchmarks/profile_step.py --method=adv --layers=8 --channels=16 --batch=64

Runs the compiled step under `jax.profiler` for a few steps after a warm-up, takes the
self time of every executed HLO instruction (a thunk of XLA:CPU's runtime; a loop's or a
branch's own time excludes the instructions it runs), and groups it by what the
instruction computes, read from the compiled HLO: a fusion counts as the heaviest op it
contains (convolution > dot > reduce-window > reduce > elementwise). Prints a table of
seconds per step by kind and the most expensive instructions (--top, --kind), with their shapes.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The heaviest op a fused computation contains names its kind (first match wins).
KINDS = (("convolution", "convolution"), ("dot", "dot"), ("custom-call", "custom-call"),
         ("reduce-window", "pooling"), ("select-and-scatter", "pooling"),
         ("reduce", "reduce (BatchNorm, sums)"), ("transpose", "transpose / copy"),
         ("copy", "transpose / copy"), ("dynamic-slice", "slices"), ("slice", "slices"),
         ("dynamic-update-slice", "slices"), ("pad", "slices"), ("concatenate", "slices"))
CONTAINERS = ("while", "conditional", "call")


def hlo_kinds(hlo: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
  """{instruction name: kind}, {name: its result shape} and {name: the JAX source of its
  result (`source`)} from HLO text."""
  computations: dict[str, list[str]] = {}
  current = None
  inst = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+(?:\s*\{[^}]*\})?)\s+([\w\-]+)\(")
  rows = []
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if head and "=" not in line.split("{")[0]:
      current = head.group(1)
      computations[current] = []
      continue
    m = inst.match(line)
    if m and current is not None:
      computations[current].append(m.group(3))
      rows.append((m.group(1), m.group(2), m.group(3), line))
  kinds, shapes, sources = {}, {}, {}
  for name, shape, opcode, line in rows:
    ops = [opcode]
    called = re.search(r"calls=%?([\w.\-]+)", line)
    if opcode == "fusion" and called:
      ops = computations.get(called.group(1), [])
    kind = "elementwise"
    if opcode in CONTAINERS:
      kind = "loop / branch overhead"
    else:
      for op, label in KINDS:
        if op in ops:
          kind = label
          break
    kinds[name], shapes[name] = kind, shape
    op_name = re.search(r'op_name="([^"]*)"', line)
    sources[name] = source(op_name.group(1) if op_name else "")
  return kinds, shapes, sources


def source(op_name: str) -> str:
  """The JAX origin of an instruction, without the position in the network: e.g.
  "backward: SepConv/BatchNorm/sub" for ".../transpose(jvp(Supernet))/cell_3/from_1/
  sep_conv_5x5/SepConv_0/bn_1/sub"."""
  parts = op_name.split("/")
  direction = "backward" if any(p.startswith("transpose(") for p in parts) else "forward"
  names = {"bn": "BatchNorm", "from": "MixedOps", "cell": "Cell", "pre": "preprocess"}
  modules = [re.sub(r"_\d+$", "", p) for p in parts
             if re.match(r"^(?:[A-Z]\w*|(?:bn|pre|from|cell)_\d+)$", p)
             and not p.startswith("Supernet")]
  modules = [names.get(m, m) for m in modules]
  return f"{direction}: {'/'.join(modules[-2:] + parts[-1:])}"


def self_times(trace: dict) -> collections.Counter:
  """Self time (us) per event name: each complete event's duration less its children's."""
  by_thread = collections.defaultdict(list)
  for e in trace["traceEvents"]:
    if e.get("ph") == "X" and "dur" in e:
      by_thread[(e["pid"], e["tid"])].append(e)
  totals: collections.Counter = collections.Counter()
  for events in by_thread.values():
    events.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack: list[list] = []  # [end, name, child time]
    for e in events:
      while stack and e["ts"] >= stack[-1][0]:
        end, name, child, dur = stack.pop()
        totals[name] += dur - child
      if stack:
        stack[-1][2] += e["dur"]
      stack.append([e["ts"] + e["dur"], e["name"], 0.0, e["dur"]])
    for end, name, child, dur in stack:
      totals[name] += dur - child
  return totals


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--method", default="darts")
  p.add_argument("--layers", type=int, default=5)
  p.add_argument("--channels", type=int, default=8)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--space", default="s5")
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--top", type=int, default=15, help="how many instructions to list")
  p.add_argument("--kind", default="", help="list only the instructions of this kind")
  p.add_argument("--hlo", default="", help="also write the compiled HLO text to this file")
  args = p.parse_args()

  import jax
  import numpy as np

  from sdarts_jax import defaults
  from sdarts_jax.data import pipeline
  from sdarts_jax.run import loop
  from sdarts_jax.search import run_search, scan_step

  config = defaults.search_config(args.method)
  config.space = args.space
  config.model.layers, config.model.channels = args.layers, args.channels
  config.data.batch_size = args.batch
  spe = 390
  source = pipeline.synthetic(16, 10, 32, 0)
  model = run_search.build_model(config, 10)
  state = loop.compile_init(lambda: run_search.init_state(model, config, (32, 32, 3), spe), None)()
  preprocess = lambda key, images: pipeline.preprocess(key, images, source.mean, source.std, True)
  fn = jax.jit(scan_step.make_step(model, config, spe, preprocess), donate_argnums=0)
  rng = np.random.default_rng(0)
  n = args.batch
  batch = {"train_image": rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
           "train_label": rng.integers(0, 10, (n,), np.int32),
           "val_image": rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
           "val_label": rng.integers(0, 10, (n,), np.int32)}
  t = time.time()
  compiled = fn.lower(state, batch).compile()
  print(f"compiled in {time.time() - t:.1f} s", flush=True)
  hlo = compiled.as_text()
  if args.hlo:
    with open(args.hlo, "w") as f:
      f.write(hlo)
  kinds, shapes, sources = hlo_kinds(hlo)
  state, m = compiled(state, batch)
  jax.block_until_ready(m)
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir, create_perfetto_trace=True)
    t = time.time()
    for _ in range(args.steps):
      state, m = compiled(state, batch)
      jax.block_until_ready(m)
    wall = (time.time() - t) / args.steps
    jax.profiler.stop_trace()
    path, = glob.glob(os.path.join(logdir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      totals = self_times(json.load(f))
  per_kind: collections.Counter = collections.Counter()
  per_inst = {name: us / args.steps / 1e6 for name, us in totals.items() if name in kinds}
  for name, s in per_inst.items():
    per_kind[kinds[name]] += s
  busy = sum(per_kind.values())
  print(f"\n{args.method}, {args.layers} cells, C={args.channels}, batch {args.batch}: "
        f"{wall:.2f} s per step (wall), {busy:.2f} s of instruction time per step "
        f"(summed over threads)\n")
  print("| kind | s/step | share |\n|---|---|---|")
  for kind, s in per_kind.most_common():
    print(f"| {kind} | {s:.3f} | {100 * s / busy:.1f} % |")
  per_source: collections.Counter = collections.Counter()
  for name, s in per_inst.items():
    per_source[sources[name]] += s
  print("\n| source (JAX) | s/step | share |\n|---|---|---|")
  for src, s in per_source.most_common(args.top):
    print(f"| {src} | {s:.3f} | {100 * s / busy:.1f} % |")
  print("\n| instruction | kind | result | s/step |\n|---|---|---|---|")
  listed = [kv for kv in per_inst.items() if args.kind in ("", kinds[kv[0]])]
  for name, s in sorted(listed, key=lambda kv: -kv[1])[:args.top]:
    print(f"| {name} | {kinds[name]} | {shapes[name][:60]} | {s:.3f} |")


if __name__ == "__main__":
  main()
