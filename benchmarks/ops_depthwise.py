"""Depthwise-separable convolution on XLA:CPU: grouped vs the fused dense kernel, the
convolution backward pass inside a loop (JAX's rules vs `ops.conv`'s written-out ones), the
kernel gradient as one convolution (batch C, features N) vs one matrix multiply per tap, and
the dense kernel vs shifted multiply-adds inside a `lax.scan` at each `need` (the numbers
behind `ops.IMPLEMENTATIONS`' shifted_from).

  python benchmarks/ops_depthwise.py [--batch=64 --size=32 --channels=16 --edges=4]

Prints milliseconds (median of 5) for a forward and a forward+backward pass.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sdarts_jax.model import kernels, ops


def timed(fn, *args) -> float:
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(5):
    t = time.time()
    jax.block_until_ready(fn(*args))
    times.append(time.time() - t)
  return 1000 * float(np.median(times))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--channels", type=int, default=16)
  p.add_argument("--edges", type=int, default=4)
  a = p.parse_args()
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (a.batch, a.size, a.size, a.channels))
  for k, dilation in ((3, 1), (5, 1), (3, 2), (5, 2)):
    dw = jax.random.normal(key, (a.edges, k, k, a.channels))
    pw = jax.random.normal(key, (a.edges, a.channels, a.channels))
    row = []
    for impl in ("grouped", "fused"):
      f = lambda x, dw, pw: ops.separable(x, dw, pw, 1, dilation, impl)
      g = lambda x, dw, pw: jax.grad(lambda *v: jnp.sum(f(*v) ** 2), argnums=(0, 1, 2))(x, dw, pw)
      row.append(f"{impl}: fwd {timed(f, x, dw, pw):7.1f} fwd+bwd {timed(g, x, dw, pw):7.1f}")
    print(f"k={k} dilation={dilation} edges={a.edges}: " + " | ".join(row), flush=True)
  w = jax.random.normal(key, (3, 3, a.channels, a.channels))
  for name, conv in (("jax rules", lambda x, w: kernels.lax_conv(x, w, 1, 1)),
                     ("ops.conv", lambda x, w: ops.conv(x, w))):
    grad = jax.grad(lambda w, x: jnp.sum(conv(x, w) ** 2), argnums=(0, 1))
    once = lambda x, w: grad(w, x)
    loop = lambda x, w: lax.fori_loop(
        0, 4, lambda i, c: (c[0] + grad(w, x + c[0])[1] * 0, c[1] + grad(w, x)[0]),
        (jnp.zeros_like(x), jnp.zeros_like(w)))
    print(f"dense 3x3 conv backward, {name}: once {timed(once, x, w):7.1f} ms, "
          f"4 iterations of a fori_loop {timed(loop, x, w):7.1f} ms", flush=True)

  g = jax.random.normal(key, x.shape[:3] + (a.edges * a.channels,))
  for k, dilation in ((3, 1), (5, 1), (3, 2), (5, 2)):
    w = jax.random.normal(key, (k, k, a.channels, a.edges * a.channels))
    row = []
    for name, need in (("taps (ops.conv)", kernels.Need.ALL_GRADS), ("dx only", kernels.Need.INPUT_GRADS)):
      vjp = lambda x, w, g, need=need: jax.vjp(
          lambda x, w: ops.conv(x, w, dilation=dilation, need=need), x, w)[1](g)
      loop = lambda x, w, g, vjp=vjp: lax.fori_loop(  # both results used: nothing is pruned
          0, 3, lambda i, c: jax.tree.map(jnp.add, c, vjp(x + c[0], w, g)),
          (jnp.zeros_like(x), jnp.zeros_like(w)))
      row.append(f"{name} {timed(loop, x, w, g) / 3:7.1f}")
    conv_dk = lambda x, w, g: lax.fori_loop(
        0, 3, lambda i, c: c + _kernel_grad_as_conv(x + c[0, 0, 0, 0], g, k, dilation),
        jnp.zeros_like(w))
    row.append(f"dK as one convolution {timed(conv_dk, x, w, g) / 3:7.1f}")
    print(f"backward of a {k}x{k} dilation {dilation} conv to {a.edges}x{a.channels} channels, "
          "ms per iteration in a loop: " + " | ".join(row), flush=True)

  for k, dilation, stride in ((3, 1, 1), (5, 1, 1), (3, 2, 1), (5, 2, 2), (3, 1, 2)):
    dw = jax.random.normal(key, (a.edges, k, k, a.channels))
    pw = jax.random.normal(key, (a.edges, a.channels, a.channels))
    row = []
    for name, sep in (("dense", lambda *v: _dense_separable(*v, stride, dilation)),
                      ("shifted", lambda *v: kernels.separable_shifted(*v, stride, dilation))):
      for need in (kernels.Need.INPUT_GRADS, kernels.Need.ALL_GRADS):
        row.append(f"{name} need={need} {timed(_in_scan(sep), x, dw, pw, jnp.int32(need)) / 4:6.1f}")
    print(f"separable {k}x{k} dilation {dilation} stride {stride}, {a.edges} edges, forward and "
          "backward, ms per iteration of a scan: " + " | ".join(row), flush=True)


def _dense_separable(x, dw, pw, need, stride, dilation):
  """The "fused" path's dense form: one convolution with the kernel dw x pw."""
  e, k, _, c = dw.shape
  kernel = jnp.einsum("eijc,ecd->ijced", dw, pw).reshape(k, k, c, -1)
  return ops.conv(x, kernel, stride, dilation, need=need)


def _in_scan(sep):
  """4 iterations of a scan, each the gradients (those `need` asks for) of a separable
  convolution; every result feeds the next iteration, so nothing is pruned."""
  def run(x, dw, pw, need):
    def body(carry, _):
      grads = jax.grad(lambda *v: jnp.sum(jnp.sin(sep(*v, need))), argnums=(0, 1, 2))(
          x + carry, dw, pw)
      return carry + 1e-3 * grads[0] + 1e-3 * (jnp.sum(grads[1]) + jnp.sum(grads[2])), None
    return lax.scan(body, jnp.zeros_like(x), None, length=4)[0]
  return run


def _kernel_grad_as_conv(x, g, k, dilation):
  """The kernel gradient as one convolution with batch C, features N and g as a
  [H, W, N, O] kernel (stride 1): the form `ops.conv` replaced with per-tap multiplies."""
  pad = dilation * (k - 1) // 2
  xpad = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dk = lax.conv_general_dilated(jnp.transpose(xpad, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)),
                                (dilation, dilation), "VALID",
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.transpose(dk, (1, 2, 0, 3))


if __name__ == "__main__":
  main()
