"""The Hessian of the validation loss with respect to the architecture (docs/method.md, section 6).

Everything rests on exact Hessian-vector products by forward-over-reverse autodiff,
hvp(v) = d/dt grad L(x + t v) at t = 0, with no finite differences. On top of them:
Lanczos for the top eigenvalues (full reorthogonalisation), Hutchinson's trace estimator,
and the dense Hessian (one HVP per coordinate; alpha has at most 2 x 14 x 8 = 224
coordinates in the DARTS spaces) for whole spectra. Their loops compile into
`lax.fori_loop`s on GPU/TPU and run from Python over a compiled body on CPU (`fori_loop`).

The loss is a function of one flat vector `x`: raw alpha (`wrt="alpha"`, through the
softmax) or the mixing weights A (`wrt="A"`), every entry of every array of the alpha pytree
in both cases ([2 * edges * ops] in the DARTS spaces; 24, 26 and 35 in NAS-Bench-1Shot1's
ss1, ss2, ss3, whose output and input weights count too), ordered as
`jax.flatten_util.ravel_pytree` orders the pytree's keys. Options reproduce the
measurement of the official code, which computes eigenvalues only in its NAS-Bench-1Shot1
searches (optimizers/analyze.py): BatchNorm in train mode, one batch, alpha weight decay on
the diagonal.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from sdarts_jax.model import losses, ops, supernet
from sdarts_jax.run import parallel, programs


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
  loss is the mean over the B batches. alpha: the search state's alpha pytree, e.g.
  {"normal": [14, K], "reduce": [14, K]}.
  """
  if options.wrt not in ("alpha", "A"):
    raise ValueError(f"wrt={options.wrt!r}; use 'alpha' or 'A'")
  # Forward mode needs JAX's rules; the Hessian is measured in float32 whatever config.dtype
  # the search computes in (bfloat16's 8-bit mantissa would swamp the spectrum's small end).
  model = model.clone(impl=ops.autodiff_impl(model.impl), dtype="float32")
  point = alpha if options.wrt == "alpha" else supernet.mixing_weights(alpha)
  x0, unravel = ravel_pytree(point)

  def batch_loss(A, xb, yb):
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, xb, A,
                            options.train_bn, mutable=["batch_stats"], rngs={"noise": key})
    return losses.cross_entropy(logits, yb)

  def loss(x):
    tree = unravel(x)
    A = supernet.mixing_weights(tree) if options.wrt == "alpha" else tree
    # vmap, not lax.map: convolutions inside a compiled loop are slow on XLA:CPU.
    batch_losses = jax.vmap(lambda xb, yb: batch_loss(A, xb, yb))(images, labels)
    return jnp.mean(batch_losses) + 0.5 * options.weight_decay * jnp.sum(x * x)

  return loss, x0


def hvp(loss: Callable, x: jax.Array, v: jax.Array) -> jax.Array:
  """H v, H = the Hessian of `loss` at x, by forward-over-reverse autodiff. x, v: [d]."""
  return jax.jvp(jax.grad(loss), (x,), (v,))[1]


def host_loops() -> bool:
  """Whether to run the HVP loops from Python (True on CPU; see `fori_loop`)."""
  return jax.default_backend() == "cpu"


def fori_loop(num: int, body: Callable, carry, args, host: bool):
  """lax.fori_loop(0, num, lambda i, c: body(i, c, args), carry), or with host=True the
  same loop driven from Python over one compiled body.

  XLA:CPU leaves the convolutions of JAX's derivative rules un-canonicalised inside
  compiled loops, where they run 3-30x slower (see `sdarts_jax.model.kernels`), and forward-mode
  autodiff cannot use the kernels' written-out backward passes. So on CPU the HVP loops run on
  the host; each iteration is one call of a body compiled once. `body` must be a stable
  function (compiled once per function object): build it once, not per call.
  """
  if not host:
    return lax.fori_loop(0, num, lambda i, c: body(i, c, args), carry)
  compiled = _jit(body)
  # Place the carry as the body's outputs will be (like the first, replicated, argument):
  # a carry placed differently on the first call would compile the body twice.
  first = jax.tree.leaves(args)[0]
  if isinstance(first, jax.Array):
    carry = jax.device_put(carry, first.sharding)
  for i in range(num):
    carry = compiled(i, carry, args)
  return carry


@functools.lru_cache(maxsize=programs.MAX_EXECUTABLES)
def _jit(fn: Callable) -> Callable:
  """fn's Program, one per loop body (the bodies of the latest few measurements: a long
  process does not keep every body it ever compiled)."""
  return programs.jit(fn)


def lanczos_body(matvec: Callable) -> Callable:
  """One Lanczos iteration with full reorthogonalisation, as a fori_loop body.

  matvec(v, args): a symmetric linear map [d] -> [d]. Carry (basis [m + 1, d] with the
  normalised start vector in row 0, alphas [m], betas [m]).
  """
  def body(i, carry, args):
    basis, alphas, betas = carry
    w = matvec(basis[i], args)
    a = jnp.vdot(w, basis[i])
    mask = (jnp.arange(basis.shape[0]) <= i)[:, None]
    for _ in range(2):  # twice, for stability
      w = w - (mask * basis).T @ ((mask * basis) @ w)
    b = jnp.linalg.norm(w)
    basis = basis.at[i + 1].set(jnp.where(b > 0, w / jnp.where(b > 0, b, 1.0), 0.0))
    return basis, alphas.at[i].set(a), betas.at[i].set(b)

  return body


def lanczos(body: Callable, args, v0: jax.Array, num_iters: int, host: bool):
  """(alphas [m], betas [m - 1]) of the Lanczos tridiagonal T after m = num_iters steps of
  `body` (from `lanczos_body`) from v0 [d]. The eigenvalues of T (Ritz values) approximate
  the extreme eigenvalues of the map, the largest first to converge."""
  m = num_iters
  basis = jnp.zeros((m + 1,) + v0.shape, v0.dtype).at[0].set(v0 / jnp.linalg.norm(v0))
  zeros = jnp.zeros(m, v0.dtype)
  _, alphas, betas = fori_loop(m, body, (basis, zeros, zeros), args, host)
  return alphas, betas[:-1]


def ritz_values(alphas: jax.Array, betas: jax.Array) -> jax.Array:
  """Eigenvalues of the tridiagonal matrix, largest first."""
  t = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
  return jnp.linalg.eigvalsh(t)[::-1]


def hutchinson_body(matvec: Callable) -> Callable:
  """One probe of Hutchinson's estimator, z_i^T H z_i, as a fori_loop body; carry
  (probes [n, d], samples [n])."""
  def body(i, carry, args):
    probes, samples = carry
    return probes, samples.at[i].set(jnp.vdot(probes[i], matvec(probes[i], args)))

  return body


def hutchinson(body: Callable, args, dim: int, num_samples: int, key: jax.Array, dtype,
               host: bool):
  """(estimate, standard error) of tr(H) from Rademacher probes, E[z^T H z] = tr(H); the
  per-probe variance is 2 (|H|_F^2 - sum_i H_ii^2). body: from `hutchinson_body`."""
  probes = jax.random.rademacher(key, (num_samples, dim), dtype)
  _, samples = fori_loop(num_samples, body, (probes, jnp.zeros(num_samples, dtype)), args,
                         host)
  return jnp.mean(samples), jnp.std(samples, ddof=1) / jnp.sqrt(num_samples)


def rows_body(matvec: Callable) -> Callable:
  """Row i of the dense matrix, H e_i, as a fori_loop body; carry H [d, d]."""
  def body(i, h, args):
    return h.at[i].set(matvec(jnp.zeros(h.shape[0], h.dtype).at[i].set(1.0), args))

  return body


class Measure:
  """The Hessian of the validation loss at a search state, by exact HVPs.

  Call: (params, batch_stats, alpha, images [B, N, H, W, 3] float, labels [B, N], key) ->
    lambda_max and eigenvalues [k] (largest first, `num_iters` Lanczos steps), with
    trace_samples > 0 also trace and trace_stderr (Hutchinson).
  `spectrum(...)` (same arguments) -> (H [d, d] symmetrised, its eigenvalues [d]).

  With host=False (GPU/TPU) the calls are pure and jittable, their loops compiled; with
  host=True (the CPU default, see `fori_loop`) call them unjitted: each loop body is
  compiled once and reused across calls. Shard the batch on the second axis of images.
  """

  def __init__(self, model, options: HessianLoss, k: int = 1, num_iters: int = 20,
               trace_samples: int = 0, host: bool | None = None):
    self.model, self.options, self.k = model, options, k
    self.num_iters, self.trace_samples = num_iters, trace_samples
    self.host = host_loops() if host is None else host

    def matvec(v, args):
      params, batch_stats, alpha, images, labels, key = args
      loss, x0 = make_loss(model, options, params, batch_stats, alpha, images, labels, key)
      return hvp(loss, x0, v)

    self.lanczos_body = lanczos_body(matvec)
    self.hutchinson_body = hutchinson_body(matvec)
    self.rows_body = rows_body(matvec)

  def on_mesh(self, mesh) -> Callable:
    """`self` as a callable for state replicated and batch sharded on `mesh`: jitted with
    those shardings when the loops compile (host=False), else `self` (its loop bodies are
    compiled per call site and follow their inputs' shardings)."""
    if self.host:
      return self
    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh, axis=1)
    return programs.jit(self.__call__, in_shardings=(rep, rep, rep, shard, shard, rep),
                        out_shardings=rep)

  def _point(self, alpha):
    x0, _ = ravel_pytree(alpha)
    return x0.size, x0.dtype

  def __call__(self, params, batch_stats, alpha, images, labels, key) -> dict:
    k_noise, k_lanczos, k_trace = jax.random.split(key, 3)
    args = (params, batch_stats, alpha, images, labels, k_noise)
    dim, dtype = self._point(alpha)
    m = min(self.num_iters, dim)
    v0 = jax.random.normal(k_lanczos, (dim,), dtype)
    top = ritz_values(*lanczos(self.lanczos_body, args, v0, m, self.host))[:self.k]
    out = {"eigenvalues": top, "lambda_max": top[0]}
    if self.trace_samples:
      out["trace"], out["trace_stderr"] = hutchinson(
          self.hutchinson_body, args, dim, self.trace_samples, k_trace, dtype, self.host)
    return out

  def spectrum(self, params, batch_stats, alpha, images, labels, key):
    args = (params, batch_stats, alpha, images, labels, key)
    dim, dtype = self._point(alpha)
    h = fori_loop(dim, self.rows_body, jnp.zeros((dim, dim), dtype), args, self.host)
    h = 0.5 * (h + h.T)
    return h, jnp.linalg.eigvalsh(h)[::-1]


def early_stop(values: list[float], window: int, lag: int, factor: float) -> bool:
  """RobustDARTS's rule: the mean of the last `window` values exceeds `factor` times the
  mean of the `window` values ending `lag` measurements earlier."""
  if len(values) < window + lag:
    return False
  now = sum(values[-window:]) / window
  before = sum(values[-window - lag:len(values) - lag]) / window
  return now > factor * before
