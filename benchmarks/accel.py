"""Accelerator benchmark: the search step on whatever backend JAX has, and a roofline projection.

  python benchmarks/accel.py                            # paper size: 8 cells, C=16, batch 64
  python benchmarks/accel.py --layers=5 --channels=8 --batch=32 --steps=2 --methods=darts
  python benchmarks/accel.py --methods= --roofline      # the projection alone
  make bench-accel BENCH_ARGS="--methods=adv"

Per method (DARTS, RS, ADV), each in its own process so that peak memory is that method's:
compile time (lower and compile timed apart), seconds per step (median after a warm-up step,
jax.block_until_ready), images/s, peak memory and the projected 50-epoch CIFAR-10 search
(steps per epoch as `pipeline.SearchBatches` counts them: 25,000 weight-half images // batch).
Peak memory is the device's peak_bytes_in_use on GPU/TPU; on CPU, which has no such
counter, the compiled step's memory_analysis() (argument, output and temp bytes) and the
process's peak RSS. Then the Hessian's cost on one fixed batch (`hessian.Measure`): one HVP and
one 20-step Lanczos lambda_max, compilation excluded.

Roofline (on by default; --no-roofline skips it): XLA's cost analysis (FLOPs, bytes accessed) and memory analysis of one compiled
supernet evaluation (forward and all gradients, the body of the step's scan), lowered with
--impl (default "grouped", the GPU/TPU program), turned into a lower bound on seconds per step
for an H100 SXM and a TPU v5e (PEAKS). XLA counts a loop body once, so the step's cost is
taken as (evaluations per step) x (one evaluation): 2 for DARTS and RS, 11 for ADV (alpha,
clean, 7 PGD, attacked, weights); with impl="grouped" every evaluation computes all gradients.
The optimizer updates are left out (elementwise over ~2M parameters). Run on CPU the analysis
describes XLA:CPU's program: its fusion decisions, hence bytes accessed, differ from the GPU's.
Output: tables, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from search_step import LABELS, cpu_model  # benchmarks/ is this script's directory

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_IMAGES = 50_000  # CIFAR-10's train split, cut by config.data.train_portion
# Peak rates assumed for the roofline (dense, vendor datasheets): FLOP/s and HBM bytes/s.
# The step runs in float32. On GPU, XLA may run float32 convolutions and dots as TF32 on the
# tensor cores (JAX's default precision); plain fp32 (CUDA cores) is the pessimistic bound.
# On TPU, default precision runs float32 matmuls and convolutions as single bf16 passes.
PEAKS = {
    "H100 SXM, TF32 tensor": (495e12, 3.35e12),
    "H100 SXM, fp32 CUDA cores": (67e12, 3.35e12),
    "TPU v5e, bf16 MXU": (197e12, 0.819e12),
}
REALISTIC = (0.3, 0.5)  # fraction of the roofline real kernels are assumed to reach


# ---------------------------------------------------------------- set-up shared by both modes

def setup(method: str, args, impl: str = "auto"):
  """(config, model, state, steps per epoch) at the sizes of `args`."""
  from sdarts_jax import defaults
  from sdarts_jax.data import pipeline
  from sdarts_jax.run import loop
  from sdarts_jax.search import run_search

  config = defaults.search_config(method)
  config.model.layers, config.model.channels = args.layers, args.channels
  config.model.impl = impl
  config.data.batch_size = args.batch
  weight_half, alpha_half = pipeline.search_split(TRAIN_IMAGES, config.data.train_portion)
  spe = min(len(weight_half), len(alpha_half)) // args.batch
  model = run_search.build_model(config, 10)
  state = loop.compile_init(lambda: run_search.init_state(model, config, (32, 32, 3), spe), None)()
  return config, model, state, spe


def random_batch(rng, batch: int) -> dict:
  return {"train_image": rng.integers(0, 256, (batch, 32, 32, 3), "uint8"),
          "train_label": rng.integers(0, 10, (batch,), "int32"),
          "val_image": rng.integers(0, 256, (batch, 32, 32, 3), "uint8"),
          "val_label": rng.integers(0, 10, (batch,), "int32")}


def median_s(fn, repeats: int) -> float:
  """Median wall time of fn() (which blocks) over `repeats` calls."""
  times = []
  for _ in range(repeats):
    t = time.time()
    fn()
    times.append(time.time() - t)
  return sorted(times)[len(times) // 2]


def memory(compiled) -> dict:
  """Peak memory: the device's counter where it has one, else XLA's sizes and peak RSS."""
  import jax

  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return {"peak_device_gib": round(stats["peak_bytes_in_use"] / 2**30, 3)}
  m = compiled.memory_analysis()
  return {"xla_arg_out_temp_gib": [round(b / 2**30, 3) for b in (
              m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes)],
          "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


# ---------------------------------------------------------------- one method, measured

def measure(method: str, args) -> dict:
  import jax
  import numpy as np

  from sdarts_jax.data import pipeline
  from sdarts_jax.search import scan_step

  config, model, state, spe = setup(method, args)
  source = pipeline.synthetic(16, 10, 32, 0)
  preprocess = lambda key, images: pipeline.preprocess(key, images, source.mean, source.std, True)
  fn = jax.jit(scan_step.make_step(model, config, spe, preprocess), donate_argnums=0)
  rng = np.random.default_rng(0)
  t = time.time()
  lowered = fn.lower(state, random_batch(rng, args.batch))
  lower_s = time.time() - t
  t = time.time()
  compiled = lowered.compile()
  compile_s = time.time() - t
  cost = compiled.cost_analysis() or {}
  state, m = compiled(state, random_batch(rng, args.batch))  # warm-up
  jax.block_until_ready(m)
  batches = [random_batch(rng, args.batch) for _ in range(args.steps)]

  def one_step():
    nonlocal state
    state, metrics = compiled(state, batches.pop())
    jax.block_until_ready(metrics)

  s_per_step = median_s(one_step, args.steps)
  out = {"method": method, "impl": model.impl, "lower_s": round(lower_s, 1),
         "compile_s": round(compile_s, 1), "s_per_step": round(s_per_step, 4),
         "img_per_s": round(args.batch / s_per_step, 1), "steps_per_epoch": spe,
         "search_h": round(s_per_step * spe * config.epochs / 3600, 2), "epochs": config.epochs,
         "xla_flops_loop_body_once": cost.get("flops"), **memory(compiled)}
  if args.hessian:
    out.update(hessian_cost(model, state, source, args.batch))
  return out


def hessian_cost(model, state, source, batch: int) -> dict:
  """Seconds for one HVP and for one 20-step Lanczos lambda_max on one fixed batch (the
  second call of each, so compilation is excluded)."""
  import jax
  from jax.flatten_util import ravel_pytree

  from sdarts_jax.data import pipeline
  from sdarts_jax.search import hessian

  src = pipeline.synthetic(batch, 10, 32, 1)
  images = pipeline.preprocess(None, src.images, source.mean, source.std, False)[None]
  labels = jax.numpy.asarray(src.labels)[None]
  key = jax.random.PRNGKey(0)
  args = (state["params"], state["batch_stats"], state["alpha"], images, labels, key)
  options = hessian.HessianLoss()

  @jax.jit
  def hvp(params, batch_stats, alpha, images, labels, key, v):
    loss, x0 = hessian.make_loss(model, options, params, batch_stats, alpha, images, labels, key)
    return hessian.hvp(loss, x0, v)

  x0 = ravel_pytree(state["alpha"])[0]
  v = jax.random.normal(key, x0.shape)
  jax.block_until_ready(hvp(*args, v))
  hvp_s = median_s(lambda: jax.block_until_ready(hvp(*args, v)), 3)
  measure = hessian.Measure(model, options, num_iters=20)
  run = measure if measure.host else jax.jit(measure.__call__)
  jax.block_until_ready(run(*args))
  lanczos_s = median_s(lambda: jax.block_until_ready(run(*args)), 1)
  return {"hvp_s": round(hvp_s, 4), "lanczos20_s": round(lanczos_s, 3),
          "hessian_loops": "host (Python over a compiled body)" if measure.host else "compiled"}


# ---------------------------------------------------------------- the roofline projection

def roofline(args) -> dict:
  """XLA's cost and memory analysis of one supernet evaluation, and the resulting bounds."""
  import jax
  import jax.numpy as jnp

  from sdarts_jax.model import kernels, supernet
  from sdarts_jax.search import step

  config, model, state, spe = setup("darts", args, impl=args.impl)
  evaluate = step.make_evaluate(model)
  x = jnp.zeros((args.batch, 32, 32, 3), jnp.float32)
  y = jnp.zeros((args.batch,), jnp.int32)
  fn = jax.jit(lambda s, x, y: evaluate(s["params"], s["batch_stats"],
                                        supernet.mixing_weights(s["alpha"]), x, y, True,
                                        jax.random.PRNGKey(0), kernels.Need.ALL_GRADS))
  lowered = fn.lower(state, x, y)
  unoptimised = lowered.cost_analysis()  # before the backend's passes: no fusion, no rewrites
  t = time.time()
  compiled = lowered.compile()
  compile_s = time.time() - t
  cost, mem = compiled.cost_analysis(), compiled.memory_analysis()
  flops, bytes_ = cost["flops"], cost["bytes accessed"]
  out = {"impl": model.impl, "analysed_on": jax.default_backend(), "compile_s": round(compile_s, 1),
         "eval_gflop": round(flops / 1e9, 2), "eval_gb_accessed": round(bytes_ / 1e9, 3),
         "unoptimised_gflop": round(unoptimised["flops"] / 1e9, 2),
         "unoptimised_gb_accessed": round(unoptimised["bytes accessed"] / 1e9, 3),
         "eval_temp_gib": round(mem.temp_size_in_bytes / 2**30, 3),
         "eval_arg_gib": round(mem.argument_size_in_bytes / 2**30, 3),
         "epochs": config.epochs, "steps_per_epoch": spe, "methods": {}}
  for method in ("darts", "rs", "adv"):
    n = len(step.phases(method, config.perturb.steps))
    per = {}
    for name, (peak_flops, peak_bw) in PEAKS.items():
      bound_s = n * max(flops / peak_flops, bytes_ / peak_bw)
      per[name] = {"bound_s": bound_s,
                   "bound": "memory" if bytes_ / peak_bw > flops / peak_flops else "compute",
                   "realistic_s": [bound_s / f for f in reversed(REALISTIC)]}
    out["methods"][method] = {"evaluations": n, "per_device": per}
  return out


# ---------------------------------------------------------------- output

def device_line() -> dict:
  import jax

  d = jax.devices()[0]
  kind = d.device_kind
  if d.platform == "cpu":
    kind = f"CPU: {cpu_model()} ({len(os.sched_getaffinity(0))} cores usable)"
  return {"backend": jax.default_backend(), "device_kind": kind, "jax": jax.__version__,
          "devices": jax.device_count()}


def measured_table(rows: list[dict], batch: int) -> str:
  mem_head = "peak device GiB" if rows and "peak_device_gib" in rows[0] else \
      "CPU: XLA arg/out/temp GiB; peak RSS GiB"
  head = ["method", "lower s", "compile s", "s/step", "img/s", mem_head,
          f"50-epoch search h ({rows[0]['steps_per_epoch']} steps/epoch)" if rows else "",
          "HVP s", "Lanczos-20 s"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    mem = (f"{r['peak_device_gib']}" if "peak_device_gib" in r else
           f"{'/'.join(map(str, r['xla_arg_out_temp_gib']))}; {r['peak_rss_gib']}")
    cells = [LABELS[r["method"]], r["lower_s"], r["compile_s"], r["s_per_step"], r["img_per_s"],
             mem, r["search_h"], r.get("hvp_s", "-"), r.get("lanczos20_s", "-")]
    lines.append("| " + " | ".join(map(str, cells)) + " |")
  return "\n".join(lines)


def roofline_table(roof: dict, epochs: int, spe: int) -> str:
  lo, hi = REALISTIC
  head = ["method", "evaluations/step", "device (assumed peaks)", "roofline s/step (bound)",
          f"at {hi:.0%}-{lo:.0%} of roofline s/step", f"{epochs}-epoch search h (realistic)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for method, m in roof["methods"].items():
    for name, p in m["per_device"].items():
      peak_flops, peak_bw = PEAKS[name]
      fast, slow = p["realistic_s"]
      hours = lambda s: s * spe * epochs / 3600
      cells = [LABELS[method], m["evaluations"],
               f"{name} ({peak_flops / 1e12:.0f} TFLOP/s, {peak_bw / 1e12:.2f} TB/s)",
               f"{p['bound_s'] * 1e3:.2f} ms ({p['bound']})", f"{fast * 1e3:.1f}-{slow * 1e3:.1f} ms",
               f"{hours(fast):.2f}-{hours(slow):.2f}"]
      lines.append("| " + " | ".join(map(str, cells)) + " |")
  return "\n".join(lines)


def run_child(method: str, argv: list[str]) -> dict:
  out = subprocess.run([sys.executable, __file__, f"--one={method}", *argv], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=os.path.dirname(HERE)))
  if out.returncode:
    sys.exit(f"{method} failed:\n{out.stderr[-3000:]}{out.stdout[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--methods", default="darts,rs,adv", help="comma-separated; empty: none")
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--channels", type=int, default=16)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
  p.add_argument("--hessian", action=argparse.BooleanOptionalAction, default=True,
                 help="time one HVP and one 20-step Lanczos")
  p.add_argument("--roofline", action=argparse.BooleanOptionalAction, default=True,
                 help="XLA cost analysis of one evaluation -> H100 / TPU v5e bounds")
  p.add_argument("--impl", default="grouped", choices=["grouped", "fused"],
                 help="depthwise implementation lowered for the roofline")
  p.add_argument("--one", default="", help=argparse.SUPPRESS)  # child process: one method
  args = p.parse_args()
  sys.path.insert(0, os.path.dirname(HERE))
  if args.one:
    print(json.dumps(measure(args.one, args)))
    return
  if args.steps < 1:
    sys.exit("error: --steps must be at least 1")
  argv = [a for a in sys.argv[1:] if not a.startswith("--methods")]
  methods = [m for m in args.methods.split(",") if m]
  unknown = set(methods) - set(LABELS)
  if unknown:
    sys.exit(f"error: --methods: unknown {sorted(unknown)}; known: {', '.join(LABELS)}")

  info = {**device_line(), "layers": args.layers, "channels": args.channels, "batch": args.batch,
          "image": "32x32x3", "classes": 10, "dtype": "float32", "steps_timed": args.steps}
  marker = " (CPU: NOT an accelerator measurement)" if info["backend"] == "cpu" else ""
  print(f"backend {info['backend']}{marker}; {info['device_kind']}; jax {info['jax']}; "
        f"{args.layers} cells, C={args.channels}, batch {args.batch}, 32x32, 10 classes, "
        f"float32; median of {args.steps} steps after a warm-up step", flush=True)
  rows = []
  for method in methods:
    rows.append(run_child(method, argv))
    print(json.dumps(rows[-1]), flush=True)
  if rows:
    print()
    print(measured_table(rows, args.batch))
  roof = roofline(args) if args.roofline else None
  if roof:
    print()
    print(f"Roofline projection (a lower bound on time, not a measurement): one evaluation, "
          f"impl={roof['impl']}, analysed by XLA:{roof['analysed_on']}: "
          f"{roof['eval_gflop']} GFLOP, {roof['eval_gb_accessed']} GB accessed, temp "
          f"{roof['eval_temp_gib']} GiB (before XLA's passes: {roof['unoptimised_gflop']} GFLOP, "
          f"{roof['unoptimised_gb_accessed']} GB unfused); float32; realistic = the bound / "
          f"{REALISTIC[1]} to / {REALISTIC[0]}")
    print(roofline_table(roof, roof["epochs"], roof["steps_per_epoch"]))
  print(json.dumps({**info, "methods": rows, "roofline": roof}))


if __name__ == "__main__":
  main()
