"""The Hessian of the validation loss with respect to the architecture (SPEC section 5).

Everything rests on exact Hessian-vector products by forward-over-reverse autodiff,
hvp(v) = d/dt grad L(x + t v) at t = 0, with no finite differences. On top of them:
Lanczos for the top eigenvalues (a compiled `lax.fori_loop` with full reorthogonalisation),
Hutchinson's trace estimator, and the dense Hessian (one HVP per coordinate; alpha has at
most 2 x 14 x 8 = 224 coordinates in the DARTS spaces) for whole spectra.

The loss is a function of one flat vector `x`: raw alpha (`wrt="alpha"`, through the
softmax) or the mixing weights A (`wrt="A"`), [2 * edges * ops] in both cases, ordered as
`jax.flatten_util.ravel_pytree` orders {"normal", "reduce"}. Options reproduce the
reference measurement: BatchNorm in train mode, one batch, alpha weight decay on the
diagonal.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from sdarts_jax import ops, step


@dataclasses.dataclass(frozen=True)
class HessianLoss:
  """Options of the loss whose Hessian is measured.

  Attributes:
    wrt: "alpha" (raw architecture parameters) or "A" (mixing weights).
    train_bn: BatchNorm with batch statistics (the reference's setting) or running ones.
    weight_decay: adds weight_decay / 2 * |x|^2, i.e. weight_decay * I to the Hessian (the
      reference includes alpha's L2 of 1e-3).
  """
  wrt: str = "alpha"
  train_bn: bool = True
  weight_decay: float = 0.0


def make_loss(model, options: HessianLoss, params, batch_stats, alpha, images, labels, key):
  """(loss of a flat vector, the flat vector at alpha's current value).

  images: [B, N, H, W, 3] float (B batches, already preprocessed), labels [B, N] int; the
  loss is the mean over the B batches. alpha: {"normal": [14, K], "reduce": [14, K]}.
  """
  if options.wrt not in ("alpha", "A"):
    raise ValueError(f"wrt={options.wrt!r}; use 'alpha' or 'A'")
  model = model.clone(impl=ops.autodiff_impl(model.impl))  # forward mode needs JAX's rules
  point = alpha if options.wrt == "alpha" else step.mixing_weights(alpha)
  x0, unravel = ravel_pytree(point)

  def batch_loss(A, xb, yb):
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, xb, A,
                            options.train_bn, mutable=["batch_stats"], rngs={"noise": key})
    return step.cross_entropy(logits, yb)

  def loss(x):
    tree = unravel(x)
    A = step.mixing_weights(tree) if options.wrt == "alpha" else tree
    losses = lax.map(lambda b: batch_loss(A, *b), (images, labels))
    return jnp.mean(losses) + 0.5 * options.weight_decay * jnp.sum(x * x)

  return loss, x0


def hvp(loss: Callable, x: jax.Array, v: jax.Array) -> jax.Array:
  """H v, H = the Hessian of `loss` at x, by forward-over-reverse autodiff. x, v: [d]."""
  return jax.jvp(jax.grad(loss), (x,), (v,))[1]


def lanczos(matvec: Callable, v0: jax.Array, num_iters: int) -> tuple[jax.Array, jax.Array]:
  """Lanczos with full reorthogonalisation: (alphas [m], betas [m - 1]) of the tridiagonal T.

  matvec: a symmetric linear map [d] -> [d]; v0: start vector [d] (normalised here);
  num_iters m <= d. The eigenvalues of T (Ritz values) approximate the extreme
  eigenvalues of the map, the largest first to converge.
  """
  d = v0.shape[0]
  basis = jnp.zeros((num_iters + 1, d), v0.dtype).at[0].set(v0 / jnp.linalg.norm(v0))

  def body(i, carry):
    basis, alphas, betas = carry
    w = matvec(basis[i])
    a = jnp.vdot(w, basis[i])
    # Full reorthogonalisation against every earlier vector (twice, for stability).
    mask = (jnp.arange(num_iters + 1) <= i)[:, None]
    for _ in range(2):
      w = w - (mask * basis).T @ ((mask * basis) @ w)
    b = jnp.linalg.norm(w)
    basis = basis.at[i + 1].set(jnp.where(b > 0, w / jnp.where(b > 0, b, 1.0), 0.0))
    return basis, alphas.at[i].set(a), betas.at[i].set(b)

  _, alphas, betas = lax.fori_loop(
      0, num_iters, body, (basis, jnp.zeros(num_iters, v0.dtype), jnp.zeros(num_iters, v0.dtype)))
  return alphas, betas[:-1]


def ritz_values(alphas: jax.Array, betas: jax.Array) -> jax.Array:
  """Eigenvalues of the tridiagonal matrix, largest first."""
  t = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
  return jnp.linalg.eigvalsh(t)[::-1]


def top_eigenvalues(matvec: Callable, dim: int, k: int, num_iters: int, key: jax.Array,
                    dtype=jnp.float32):
  """The k largest eigenvalues [k] of a symmetric map [dim] -> [dim], by Lanczos."""
  v0 = jax.random.normal(key, (dim,), dtype)
  return ritz_values(*lanczos(matvec, v0, min(num_iters, dim)))[:k]


def hutchinson_trace(matvec: Callable, dim: int, num_samples: int, key: jax.Array,
                     dtype=jnp.float32):
  """(estimate, standard error) of tr(H) from Rademacher probes: E[z^T H z] = tr(H).

  The estimator's variance is 2 (|H|_F^2 - sum_i H_ii^2) per probe, so the standard error
  shrinks as 1 / sqrt(num_samples).
  """
  z = jax.random.rademacher(key, (num_samples, dim), dtype)
  samples = lax.map(lambda v: jnp.vdot(v, matvec(v)), z)
  return jnp.mean(samples), jnp.std(samples, ddof=1) / jnp.sqrt(num_samples)


def make_measure(model, options: HessianLoss, k: int = 1, num_iters: int = 20,
                 trace_samples: int = 0):
  """measure(params, batch_stats, alpha, images, labels, key) -> dict of
  "eigenvalues" [k] (largest first, from `num_iters` Lanczos steps), "lambda_max", and
  with trace_samples > 0 "trace" and "trace_stderr" (Hutchinson). Pure; jit it with the
  batch sharded on its second axis (`images`: [B, N, H, W, 3])."""
  def measure(params, batch_stats, alpha, images, labels, key):
    k_noise, k_lanczos, k_trace = jax.random.split(key, 3)
    loss, x0 = make_loss(model, options, params, batch_stats, alpha, images, labels, k_noise)
    matvec = lambda v: hvp(loss, x0, v)
    top = top_eigenvalues(matvec, x0.size, k, num_iters, k_lanczos, x0.dtype)
    out = {"eigenvalues": top, "lambda_max": top[0]}
    if trace_samples:
      out["trace"], out["trace_stderr"] = hutchinson_trace(matvec, x0.size, trace_samples,
                                                           k_trace, x0.dtype)
    return out

  return measure


def make_spectrum(model, options: HessianLoss):
  """spectrum(params, batch_stats, alpha, images, labels, key) -> (H [d, d] symmetrised,
  its eigenvalues [d], largest first): the dense Hessian, one HVP per coordinate."""
  def spectrum(params, batch_stats, alpha, images, labels, key):
    loss, x0 = make_loss(model, options, params, batch_stats, alpha, images, labels, key)
    h = lax.map(lambda e: hvp(loss, x0, e), jnp.eye(x0.size, dtype=x0.dtype))
    h = 0.5 * (h + h.T)
    return h, jnp.linalg.eigvalsh(h)[::-1]

  return spectrum


def early_stop(values: list[float], window: int, lag: int, factor: float) -> bool:
  """RobustDARTS's rule: the mean of the last `window` values exceeds `factor` times the
  mean of the `window` values ending `lag` measurements earlier."""
  if len(values) < window + lag:
    return False
  now = sum(values[-window:]) / window
  before = sum(values[-window - lag:len(values) - lag]) / window
  return now > factor * before
