"""The theory check: does SDARTS's perturbation act as the Taylor expansion says?

For the loss L as a function of the mixing weights A (flat, [d]), gradient g and Hessian H:
  RS:  E[L(A + delta)] - L(A) = (eps^2 / 6) tr(H) + O(eps^4), delta ~ U[-eps, eps]^d
  ADV: max_{|delta|_inf <= eps} L(A + delta) - L(A)
         ~ eps |g|_1 (first order) + (eps^2 / 2) s^T H s (second order, s = sign(g): the
         box vertex the first-order term picks; the exact max over sign vectors is NP-hard)

  python -m sdarts_jax.analysis.theory --workdir=runs/adv --out=docs/theory_check

measures both sides on a checkpoint over several eps and writes a table (printed and
.json) and a PNG. The uniform side uses antithetic pairs (delta, -delta), which cancel the
odd Taylor terms exactly, so its Monte-Carlo error is that of the even terms alone. The
perturbations here are not projected onto the simplex: this checks the expansion itself.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from typing import Callable

import jax
import jax.numpy as jnp
from absl import app, flags
from jax import lax

from sdarts_jax.search import hessian


def uniform_gain(loss: Callable, a: jax.Array, eps: float, key: jax.Array, pairs: int):
  """(mean, standard error) of E[L(a + delta)] - L(a), delta ~ U[-eps, eps]^d, from
  antithetic pairs: ((L(a + delta) + L(a - delta)) / 2 - L(a))."""
  deltas = jax.random.uniform(key, (pairs,) + a.shape, a.dtype, -eps, eps)
  base = loss(a)
  gains = lax.map(lambda d: 0.5 * (loss(a + d) + loss(a - d)) - base, deltas)
  return jnp.mean(gains), jnp.std(gains, ddof=1) / jnp.sqrt(pairs)


def pgd_gain(loss: Callable, a: jax.Array, eps: float, steps: int,
             host: bool = False) -> jax.Array:
  """max L(a + delta) - L(a) over |delta|_inf <= eps by sign-gradient ascent from 0 (step
  2.5 eps / steps), keeping the best iterate. host: drive the ascent from Python over one
  compiled step (XLA:CPU, see `hessian.fori_loop`)."""
  carry = (jnp.zeros_like(a), jnp.zeros((), a.dtype))
  args = (a, jnp.asarray(eps, a.dtype), loss(a))
  return hessian.fori_loop(steps, _pgd_body(loss, steps), carry, args, host)[1]


@functools.lru_cache(maxsize=None)
def _pgd_body(loss: Callable, steps: int) -> Callable:
  """One ascent step of `pgd_gain`, built once per loss (so it compiles once)."""
  grad = jax.grad(loss)

  def body(_, carry, args):
    a, eps, base = args
    delta, best = carry
    delta = jnp.clip(delta + 2.5 * eps / steps * jnp.sign(grad(a + delta)), -eps, eps)
    return delta, jnp.maximum(best, loss(a + delta) - base)

  return body


def predictions(g: jax.Array, h: jax.Array, eps: float) -> dict:
  """The Taylor predictions of both gains. g: [d], h: [d, d]."""
  s = jnp.sign(g)
  first = eps * jnp.sum(jnp.abs(g))
  return {"uniform": eps**2 / 6 * jnp.trace(h), "pgd_first": first,
          "pgd_second": first + eps**2 / 2 * s @ h @ s}


def check(loss: Callable, a: jax.Array, h: jax.Array, eps_list, pairs: int, pgd_steps: int,
          key: jax.Array, host: bool = False) -> list[dict]:
  """One row per eps: measured gains and their predictions (plain floats). a: [d], h: the
  Hessian of `loss` at a [d, d]."""
  loss = jax.jit(loss)  # one compilation of the loss for every eps
  g = jax.grad(loss)(a)
  uniform = jax.jit(uniform_gain, static_argnums=(0, 4))
  rows = []
  for i, eps in enumerate(eps_list):
    mean, se = uniform(loss, a, eps, jax.random.fold_in(key, i), pairs)
    pgd = pgd_gain(loss, a, eps, pgd_steps, host)
    pred = predictions(g, h, eps)
    rows.append({"eps": eps, "uniform_gain": float(mean), "uniform_stderr": float(se),
                 "pgd_gain": float(pgd), **{k: float(v) for k, v in pred.items()}})
    print(f"eps {eps}: done", flush=True)
  return rows


def table(rows: list[dict]) -> str:
  head = (f"{'eps':>7} | {'E[L(A+d)]-L(A)':>15} {'(eps^2/6)trH':>13} {'ratio':>6} | "
          f"{'PGD gain':>10} {'1st order':>10} {'ratio':>6} {'2nd order':>10} {'ratio':>6}")
  lines = [head, "-" * len(head)]
  for r in rows:
    lines.append(
        f"{r['eps']:>7.3g} | {r['uniform_gain']:>15.4g} {r['uniform']:>13.4g} "
        f"{r['uniform_gain'] / r['uniform']:>6.2f} | {r['pgd_gain']:>10.4g} "
        f"{r['pgd_first']:>10.4g} {r['pgd_gain'] / r['pgd_first']:>6.2f} "
        f"{r['pgd_second']:>10.4g} {r['pgd_gain'] / r['pgd_second']:>6.2f}")
  return "\n".join(lines)


def plot(rows: list[dict], title: str, out: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  eps = [r["eps"] for r in rows]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
  ax = axes[0]
  ax.errorbar(eps, [r["uniform_gain"] for r in rows], [2 * r["uniform_stderr"] for r in rows],
              marker="o", label="measured E[L(A+d)] - L(A) (+-2 s.e.)")
  ax.plot(eps, [r["uniform"] for r in rows], "--", label="(eps^2/6) tr(H)")
  ax.set_title("RS: uniform noise")
  ax = axes[1]
  ax.plot(eps, [r["pgd_gain"] for r in rows], marker="o", label="PGD max gain")
  ax.plot(eps, [r["pgd_first"] for r in rows], "--", label="eps |g|_1")
  ax.plot(eps, [r["pgd_second"] for r in rows], ":", label="+ (eps^2/2) s^T H s")
  ax.set_title("ADV: L-inf ball")
  positive = all(r[k] > 0 for r in rows for k in
                 ("uniform_gain", "uniform", "pgd_gain", "pgd_first", "pgd_second"))
  yscale = {"value": "log"} if positive else {"value": "symlog", "linthresh": 1e-6}
  for ax in axes:
    ax.set_xscale("log")
    ax.set_yscale(**yscale)
    ax.set_xlabel("eps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out)
  plt.close(fig)


def main(argv):
  del argv
  from sdarts_jax.analysis import plots, runs
  from sdarts_jax.run import lifecycle as run_lib
  run_lib.quiet_libraries()
  f = flags.FLAGS
  try:
    run = runs.open_run(f.workdir)
    s = run.steps()[-1] if f.step < 0 else f.step
    state = run.state(s)
    images, labels = run.batches(f.batches)
  except ValueError as e:
    sys.exit(f"error: {e}")
  # The loss of the Hessian module, as a function of the mixing weights A, without weight
  # decay; its dense Hessian from exact HVPs (d of them).
  options = hessian.HessianLoss(wrt="A", train_bn=f.train_bn, weight_decay=0.0)
  args = (state["params"], state["batch_stats"], state["alpha"], images, labels,
          jax.random.PRNGKey(0))
  loss, a0 = hessian.make_loss(run.model, options, *args)
  measure = hessian.Measure(run.model, options)
  print(f"dense Hessian ({a0.size} HVPs)...", flush=True)
  h, _ = measure.spectrum(*args)
  rows = check(loss, a0, h, [float(e) for e in f.eps], f.pairs, f.pgd_steps,
               jax.random.PRNGKey(run.config.seed), measure.host)
  print(table(rows))
  os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
  with open(f.out + ".json", "w") as fh:
    json.dump({"workdir": f.workdir, "step": s, "rows": rows}, fh, indent=1)
  plot(rows, f"{plots.run_label(f.workdir)}, step {s}", f.out + ".png")
  print(f"wrote {f.out}.json and {f.out}.png")


def define_flags() -> None:
  flags.DEFINE_string("workdir", "", "Search workdir.")
  flags.DEFINE_integer("step", -1, "Checkpoint step (-1: the latest).")
  flags.DEFINE_list("eps", ["0.001", "0.003", "0.01", "0.03", "0.1", "0.3", "1.0"], "Radii.")
  flags.DEFINE_integer("pairs", 256, "Antithetic Monte-Carlo pairs per eps.")
  flags.DEFINE_integer("pgd_steps", 20, "Sign-gradient ascent steps per eps.")
  flags.DEFINE_integer("batches", 1, "Validation batches in the loss.")
  flags.DEFINE_bool("train_bn", False, "BatchNorm mode of the loss (default: running stats).")
  flags.DEFINE_string("out", "theory_check", "Output path prefix (.json, .png).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
