"""Hessian-vector products on the search supernet: cost relative to one gradient, and how
many HVPs Lanczos needs to reach lambda_max.

  python benchmarks/hessian.py                        # 5 cells, C=8, batch 32, fresh init
  python benchmarks/hessian.py --workdir=runs/adv     # a search checkpoint (its model)

Times the gradient of the validation loss w.r.t. alpha and the HVP (forward-over-reverse),
both compiled at top level (median of --repeats), then runs Lanczos for --max_iters steps
and reports the Ritz value after each step against the dense Hessian's top eigenvalue
(d HVPs; --reference=lanczos uses 3 x max_iters Lanczos steps instead).
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def median_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.time()
    jax.block_until_ready(fn(*args))
    times.append(time.time() - t)
  return float(np.median(times))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="")
  p.add_argument("--layers", type=int, default=5)
  p.add_argument("--channels", type=int, default=8)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--max_iters", type=int, default=30)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--reference", choices=["dense", "lanczos"], default="dense")
  a = p.parse_args()

  from sdarts_jax import defaults
  from sdarts_jax.analysis import runs
  from sdarts_jax.data import pipeline
  from sdarts_jax.run import loop
  from sdarts_jax.search import hessian, run_search

  if a.workdir:
    run = runs.open_run(a.workdir)
    model, state = run.model, run.state(run.steps()[-1])
    images, labels = run.batches(1)
  else:
    config = defaults.search_config("darts")
    config.model.layers, config.model.channels = a.layers, a.channels
    model = run_search.build_model(config, 10)
    state = loop.compile_init(lambda: run_search.init_state(model, config, (32, 32, 3), 100), None)()
    src = pipeline.synthetic(a.batch, 10, 32, 0)
    images = pipeline.preprocess(None, src.images, src.mean, src.std, False)[None]
    labels = jnp.asarray(src.labels)[None]
  options = hessian.HessianLoss()
  key = jax.random.PRNGKey(0)
  args = (state["params"], state["batch_stats"], state["alpha"], images, labels, key)
  _, x0 = hessian.make_loss(model, options, *args)

  @jax.jit
  def grad(*args):
    loss, x0 = hessian.make_loss(model, options, *args)
    return jax.grad(loss)(x0)

  @jax.jit
  def hvp(*args_and_v):
    *args, v = args_and_v
    loss, x0 = hessian.make_loss(model, options, *args)
    return hessian.hvp(loss, x0, v)

  v = jax.random.normal(key, x0.shape)
  t = time.time()
  jax.block_until_ready(grad(*args))
  grad_compile = time.time() - t
  t = time.time()
  jax.block_until_ready(hvp(*args, v))
  hvp_compile = time.time() - t
  grad_s = median_seconds(grad, *args, repeats=a.repeats)
  hvp_s = median_seconds(hvp, *args, v, repeats=a.repeats)

  measure = hessian.Measure(model, options, k=1, num_iters=3 * a.max_iters)
  if a.reference == "dense":
    _, eig = measure.spectrum(*args)
    reference = float(eig[0])
  body = measure.lanczos_body
  v0 = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
  m = a.max_iters if a.reference == "dense" else 3 * a.max_iters
  alphas, betas = hessian.lanczos(body, args[:5] + (key,), v0, min(m, x0.size), measure.host)
  if a.reference == "lanczos":
    reference = float(hessian.ritz_values(alphas, betas)[0])
  errors = [abs(float(hessian.ritz_values(alphas[:i], betas[:i - 1])[0]) - reference) /
            abs(reference) for i in range(1, a.max_iters + 1)]
  reached = next((i + 1 for i, e in enumerate(errors) if e < 1e-3), None)
  print(json.dumps({
      "model": {"layers": model.layers, "channels": model.channels, "space": model.space.name,
                "batch": int(labels.size), "dim": int(x0.size)},
      "device": jax.devices()[0].device_kind,
      "grad_s": round(grad_s, 3), "hvp_s": round(hvp_s, 3),
      "hvp_over_grad": round(hvp_s / grad_s, 2),
      "compile_s": {"grad": round(grad_compile, 1), "hvp": round(hvp_compile, 1)},
      "lambda_max": reference, "reference": a.reference,
      "hvps_to_1e-3": reached,
      "relative_error_by_iteration": [float(f"{e:.2e}") for e in errors]}, indent=1))


if __name__ == "__main__":
  main()
