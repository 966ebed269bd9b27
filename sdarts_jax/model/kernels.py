"""XLA:CPU kernels for the candidate operations (`sdarts_jax.model.ops`), with written-out
backward passes.

JAX's transpose rules give XLA convolutions with swapped kernel or batch dimensions, which
XLA:CPU runs fast outside loops but several times slower inside the search step's
`lax.scan` (README, design section). So the convolutions that the "fused" implementation
runs (`ops.IMPLEMENTATIONS`) have their backward passes written out here, and those compute
only the gradients that the evaluation asks for (`Need`):

  * `dense_conv`: a dense convolution x [N, H, W, C] * kernel [k, k, C, D];
  * `separable_shifted`: a depthwise convolution as k*k shifted multiply-adds, then the
    pointwise convolutions of E edges as one product with a block-diagonal kernel;
  * `materialize`: a value computed once into a buffer of its own.

Forward-mode autodiff cannot use a written-out backward pass (`ops.autodiff_impl`).
Tensors are NHWC, kernels HWIO; padding is PyTorch's symmetric dilation * (k - 1) // 2.
"""
from __future__ import annotations

import enum
import functools

import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


class Need(enum.IntEnum):
  """What the backward pass of a convolution computes (`need`, an int32 scalar, traced in
  the search step): nothing (the step wants a loss alone), the gradient of its input (enough
  for the gradient of the mixing weights A), or the gradients of its input and its kernel.

  The step sets it per supernet evaluation (`sdarts_jax.search.scan_step.PHASES`), so the alpha
  step and the PGD attack skip the weight gradients they do not use and the clean and
  attacked losses skip the backward convolutions, while one compiled supernet serves every
  evaluation. Only the written-out backward passes here read it; JAX's own rules always
  compute everything.
  """
  NO_GRADS = 0
  INPUT_GRADS = 1
  ALL_GRADS = 2


def lax_conv(x, kernel, stride: int, dilation: int, groups: int = 1):
  """x [N, H, W, C] * kernel [k, k, C // groups, D] -> [N, H', W', D], with JAX's rules."""
  pad = dilation * (kernel.shape[0] - 1) // 2
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), [(pad, pad), (pad, pad)], rhs_dilation=(dilation, dilation),
      dimension_numbers=_DN, feature_group_count=groups)


def _transposed_padding(size: int, out_size: int, k: int, stride: int,
                        dilation: int) -> tuple[int, int]:
  """(low, high) zeros around the output gradient (one spatial axis of out_size, dilated by
  the stride) such that a stride-1 convolution with the flipped kernel gives the input
  gradient, of `size` along that axis."""
  pad = dilation * (k - 1) // 2
  return dilation * (k - 1) - pad, size + pad - 1 - stride * (out_size - 1)


# ---------------------------------------------------------------- dense convolution

@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def dense_conv(x, kernel, need, stride: int, dilation: int):
  """x [N, H, W, C] * kernel [k, k, C, D] -> [N, H', W', D]; the backward pass computes
  the gradients `need` (int32 scalar, `Need`) asks for and zeros for the others."""
  del need  # read by the backward pass only
  return lax_conv(x, kernel, stride, dilation)


def _dense_conv_fwd(x, kernel, need, stride, dilation):
  return lax_conv(x, kernel, stride, dilation), (x, kernel, need)

def _dense_conv_bwd(stride, dilation, residuals, g):
  """The gradients that `need` asks for (zeros for the others: `lax.cond` runs only the
  branch taken), in forms that XLA:CPU runs fast inside the step's loop.

  The step evaluates the supernet inside a `lax.scan`, where JAX's transposed convolutions
  ran several times slower (module docstring), so the gradients are written out:
    dx = g, dilated by the stride, convolved with the flipped kernel [k, k, O, C];
    dK[i, j] = x_ij^T g, one matrix multiply per kernel tap (i, j), where x_ij [N*Ho*Wo, C]
      is the padded input shifted by (d i, d j) and subsampled by the stride, and g is
      [N*Ho*Wo, O]. (As one convolution with batch C, features N and g as a [Ho, Wo, N, O]
      kernel, this was 4-8x slower on XLA:CPU at C=16: benchmarks/ops_depthwise.py.)
  """
  x, kernel, need = residuals
  k = kernel.shape[0]
  pad = dilation * (k - 1) // 2
  n, ho, wo, out = g.shape
  h, w, c = x.shape[1:]

  def input_grad():
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
    return lax.conv_general_dilated(
        g, flipped, (1, 1),
        [_transposed_padding(h, ho, k, stride, dilation),
         _transposed_padding(w, wo, k, stride, dilation)],
        lhs_dilation=(stride, stride), rhs_dilation=(dilation, dilation), dimension_numbers=_DN)

  def kernel_grad():
    xpad = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    g_rows = g.reshape(-1, out)
    window = (n, stride * (ho - 1) + 1, stride * (wo - 1) + 1, c)

    def tap(t):  # a loop over the taps, so that the graph holds one multiply, not k * k
      i, j = t // k, t % k
      x_ij = lax.dynamic_slice(xpad, (0, dilation * i, dilation * j, 0), window)
      return x_ij[:, ::stride, ::stride].reshape(-1, c).T @ g_rows

    return lax.map(tap, jnp.arange(k * k)).reshape(k, k, c, out)

  dx = lax.cond(need >= Need.INPUT_GRADS, input_grad, lambda: jnp.zeros_like(x))
  dk = lax.cond(need >= Need.ALL_GRADS, kernel_grad, lambda: jnp.zeros_like(kernel))
  return dx, dk, None



dense_conv.defvjp(_dense_conv_fwd, _dense_conv_bwd)


# ---------------------------------------------------------------- separable convolution, shifted

def _depthwise(x: jax.Array, dw: jax.Array, stride: int, dilation: int, pad) -> jax.Array:
  """Depthwise kxk convolution as k*k shifted multiply-adds, which XLA fuses into one loop.

  x: [N, H, W, E or 1, C]; dw: [E, k, k, C]; pad: ((top, bottom), (left, right)), zeros
  added around x. Returns [N, H', W', E, C].
  """
  k = dw.shape[1]
  xp = jnp.pad(x, ((0, 0), *pad, (0, 0), (0, 0)))
  ho = (xp.shape[1] - dilation * (k - 1) - 1) // stride + 1
  wo = (xp.shape[2] - dilation * (k - 1) - 1) // stride + 1
  y = None
  for i in range(k):
    for j in range(k):
      term = _tap(xp, i, j, stride, dilation, ho, wo) * dw[:, i, j]
      y = term if y is None else y + term
  return y


def _tap(xp: jax.Array, i: int, j: int, stride: int, dilation: int, ho: int, wo: int):
  """The padded input xp [N, H+2p, W+2p, E or 1, C] under kernel tap (i, j): shifted by
  (dilation i, dilation j) and subsampled by the stride, [N, ho, wo, E or 1, C]."""
  start = (0, dilation * i, dilation * j, 0, 0)
  limit = (xp.shape[0], start[1] + stride * (ho - 1) + 1, start[2] + stride * (wo - 1) + 1,
           *xp.shape[3:])
  return lax.slice(xp, start, limit, (1, stride, stride, 1, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def separable_shifted(x, dw, pw, need, stride: int, dilation: int):
  """Depthwise (shifted multiply-adds) then pointwise convolution; the backward pass
  computes the gradients `need` asks for (`Need`).

  x: [N, H, W, C] (one input for every edge) or [N, H, W, E, C]; dw: [E, k, k, C];
  pw: [E, C, D]. Returns [N, H', W', E, D].
  """
  return _separable_shifted_fwd(x, dw, pw, need, stride, dilation)[0]


def _separable_shifted_fwd(x, dw, pw, need, stride, dilation):
  # x's producer (ReLU of a BatchNorm or of a sum) would otherwise be fused into each of the
  # k*k taps and the kernel-gradient taps, and recomputed by every one of them.
  x = materialize(x, need)
  pad = dilation * (dw.shape[1] - 1) // 2
  y = _depthwise(_per_edge(x), dw, stride, dilation, ((pad, pad), (pad, pad)))
  return _pointwise(y, pw), (x, dw, pw, need, y)


def _separable_shifted_bwd(stride, dilation, residuals, g):
  """dx: the depthwise convolution of g's pointwise gradient, dilated by the stride and
  padded, with the flipped kernel (stride 1), summed over the edges of a shared input;
  d dw[e, i, j, c] = sum over N, H', W' of the (i, j) shifted input times that gradient;
  d pw[e] = y[e]^T g[e], y the depthwise output."""
  x, dw, pw, need, y = residuals
  k = dw.shape[1]
  pad = dilation * (k - 1) // 2
  h, w = x.shape[1:3]
  ho, wo = g.shape[1:3]

  def input_grad(g_dw):
    dilated = lax.pad(g_dw, jnp.zeros((), g_dw.dtype),
                      ((0, 0, 0), (*_transposed_padding(h, ho, k, stride, dilation), stride - 1),
                       (*_transposed_padding(w, wo, k, stride, dilation), stride - 1),
                       (0, 0, 0), (0, 0, 0)))
    dx = _depthwise(dilated, dw[:, ::-1, ::-1], 1, dilation, ((0, 0), (0, 0)))
    if x.ndim == 5:
      return dx
    # A sum over the edges as additions of slices: a reduction over that axis, fused with
    # the multiply-adds, ran 5-10x slower on XLA:CPU.
    total = dx[:, :, :, 0]
    for e in range(1, dx.shape[3]):
      total = total + dx[:, :, :, e]
    return total

  def kernel_grads(g_dw):
    xp = jnp.pad(_per_edge(x), ((0, 0), (pad, pad), (pad, pad), (0, 0), (0, 0)))
    window = (xp.shape[0], stride * (ho - 1) + 1, stride * (wo - 1) + 1, *xp.shape[3:])

    def tap(t):  # a loop over the taps, so that the program holds one reduction, not k * k
      x_ij = lax.dynamic_slice(xp, (0, dilation * (t // k), dilation * (t % k), 0, 0), window)
      return jnp.sum(x_ij[:, ::stride, ::stride] * g_dw, axis=(0, 1, 2))

    taps = lax.map(tap, jnp.arange(k * k))  # [k*k, E, C]
    return jnp.moveaxis(taps, 0, 1).reshape(dw.shape), _pointwise_kernel_grad(y, g)

  def zero_kernel_grads():
    return jnp.zeros_like(dw), jnp.zeros_like(pw)

  def input_and_kernel_grads():
    # The kernel gradients' cond inside the input gradient's, so that the program holds the
    # input gradient's k*k taps once.
    g_dw = _pointwise_input_grad(g, pw)
    d_dw, d_pw = lax.cond(need >= Need.ALL_GRADS, kernel_grads, lambda _: zero_kernel_grads(),
                          g_dw)
    return input_grad(g_dw), d_dw, d_pw

  dx, d_dw, d_pw = lax.cond(need >= Need.INPUT_GRADS, input_and_kernel_grads,
                            lambda: (jnp.zeros_like(x), *zero_kernel_grads()))
  return dx, d_dw, d_pw, None


separable_shifted.defvjp(_separable_shifted_fwd, _separable_shifted_bwd)


# ---------------------------------------------------------------- pointwise, block-diagonal

def _block_diagonal(pw: jax.Array) -> jax.Array:
  """pw [E, C, D] -> the block-diagonal [E*C, E*D] whose e-th diagonal block is pw[e]."""
  e, c, d = pw.shape
  return jnp.einsum("ecd,ef->ecfd", pw, jnp.eye(e, dtype=pw.dtype)).reshape(e * c, e * d)


# The pointwise convolutions of E edges, each with its own kernel, as products with a
# block-diagonal kernel over the (edge, channel) axes. As a matrix product batched over the
# edges, XLA:CPU puts the edge axis first and transposes every input and output around it
# (a third of the DARTS step at paper size); one plain product does E times the
# multiply-adds and no transposes (README, "Measured speed").

def _pointwise(y: jax.Array, pw: jax.Array) -> jax.Array:
  """y [N, H, W, E, C], pw [E, C, D] -> [N, H, W, E, D]: each edge's y times its pw."""
  e, c, d = pw.shape
  return (y.reshape(y.shape[:3] + (e * c,)) @ _block_diagonal(pw)).reshape(y.shape[:3] + (e, d))


def _pointwise_input_grad(g: jax.Array, pw: jax.Array) -> jax.Array:
  """g [N, H, W, E, D], pw [E, C, D] -> [N, H, W, E, C]: each edge's g times its pw^T."""
  e, c, d = pw.shape
  return (g.reshape(g.shape[:3] + (e * d,)) @ _block_diagonal(pw).T).reshape(g.shape[:3] + (e, c))


def _pointwise_kernel_grad(y: jax.Array, g: jax.Array) -> jax.Array:
  """y [N, H, W, E, C], g [N, H, W, E, D] -> [E, C, D]: y[..., e, :]^T g[..., e, :] summed
  over N, H, W; the diagonal blocks of one [E*C, E*D] product."""
  e, c = y.shape[3:]
  d = g.shape[-1]
  full = (y.reshape(-1, e * c).T @ g.reshape(-1, e * d)).reshape(e, c, e, d)
  return jnp.stack([full[i, :, i] for i in range(e)])


def _per_edge(x: jax.Array) -> jax.Array:
  """[N, H, W, C] -> [N, H, W, 1, C] (one input for every edge); [N, H, W, E, C] as is."""
  return x[:, :, :, None] if x.ndim == 4 else x



def materialize(x: jax.Array, need) -> jax.Array:
  """x, computed once into a buffer of its own: the value of x, unchanged.

  XLA:CPU fuses cheap elementwise producers into every consumer, duplicating them. In the
  supernet a mixed op's output (the weighted sum of every op's BatchNorm output) and a node
  (the sum of its edges) feed many consumers (the next ops' ReLUs, the pooling, the cell
  output, and in the backward pass each ReLU's mask), and each consumer recomputed the whole
  sum from up to ~100 inputs: the largest fusions of the step (measured with
  benchmarks/profile_step.py). `lax.optimization_barrier` does not stop this (XLA:CPU
  removes it before fusion); the result of a `lax.cond` is always a buffer. The predicate
  `need >= 0` is always true but, when `need` is traced (the search step), unknown to the
  compiler. With a constant `need` (a Python int: plain forward passes, the Hessian) x is
  returned as it is.
  """
  if isinstance(need, int):
    return x
  return lax.cond(need >= 0, lambda v: v, jnp.zeros_like, x)

