"""Candidate operations of the DARTS family, batched over the edges that share an input.

In a DARTS cell every state feeds several edges (the two cell inputs feed four each), and
each edge applies every candidate op to the same tensor. This module computes one op for
*all* edges leaving one state at once: the parameter-free ops (pooling, identity) once,
shared by those edges, and the convolutions as one convolution whose output channels hold
every edge. The supernet graph then grows with (states x op kinds) rather than
(edges x ops), which is what keeps XLA compile time down (see README, "Design").

Tensors are NHWC. An op for E edges maps x [N, H, W, C] to [N, H', W', E, C_out], or to
[N, H', W', 1, C_out] when its output is the same for every edge (pooling, identity).

Depthwise-separable convolutions have three implementations (`IMPLS`) with equal results:
  * "fused" (XLA:CPU): at few channels, the depthwise kernel [k, k, C] and the pointwise
    kernel [C, D] are multiplied into one dense kernel [k, k, C, D] and applied as a single
    dense convolution, faster there than a grouped (depthwise) convolution, whose
    backward pass is very slow on XLA:CPU (benchmarks/ops_depthwise.py; the figures are in
    the README's design section); at more
    channels (`_shifted_is_faster`), where the dense kernel's k^2 D / (k^2 + D) times the
    multiply-adds dominate, the depthwise convolution runs as k*k shifted multiply-adds and
    the pointwise ones of all edges as one matrix product with a block-diagonal kernel
    (`_pointwise`). Both backward passes are written out (`conv`,
    `_separable_shifted`): reverse mode needs that for speed inside loops and it computes
    only the gradients asked for (`need`), but forward mode cannot use it.
  * "fused_autodiff": the same forward pass with JAX's own derivative rules; it supports
    forward-mode autodiff, which the Hessian-vector products need (`autodiff_impl`).
  * "grouped": a depthwise convolution (feature_group_count) followed by a 1x1 convolution,
    the natural form for cuDNN and TPUs.
`depthwise_impl()` picks by backend; parameters are the same in all, stored as in the
PyTorch reference (a depthwise and a pointwise kernel per layer).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


IMPLS = ("fused", "fused_autodiff", "grouped")

# What the backward pass of a convolution computes (`need`, a traced int32 scalar): nothing
# (the step wants a loss alone), the gradient of its input (enough for the gradient of the
# mixing weights A), or the gradients of its input and its kernel. The step sets it per
# supernet evaluation (`sdarts_jax.scan_step`), so the alpha step and the PGD attack skip the
# weight gradients they do not use and the clean and attacked losses skip the backward
# convolutions, while one compiled supernet serves every evaluation. Only the "fused" path
# (the written-out backward pass) reads it; the others always compute everything.
NO_GRADS, INPUT_GRADS, ALL_GRADS = 0, 1, 2


def depthwise_impl(platform: str | None = None) -> str:
  """"fused" on CPU, "grouped" on GPU and TPU (see the module docstring); platform: "cpu",
  "gpu" or "tpu", by default JAX's default backend (`sdarts_jax.tpu_check` names the
  platform it compiles for)."""
  return "fused" if (platform or jax.default_backend()) == "cpu" else "grouped"


def autodiff_impl(impl: str) -> str:
  """The implementation equal to `impl` that also supports forward-mode autodiff."""
  return "fused_autodiff" if impl == "fused" else impl


def torch_uniform(fan_in: int):
  """PyTorch's default Conv2d/Linear initialiser: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _lax_conv(x, kernel, stride: int, dilation: int, groups: int = 1):
  pad = dilation * (kernel.shape[0] - 1) // 2
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), [(pad, pad), (pad, pad)], rhs_dilation=(dilation, dilation),
      dimension_numbers=_DN, feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _dense_conv(x, kernel, need, stride: int, dilation: int):
  del need  # read by the backward pass only
  return _lax_conv(x, kernel, stride, dilation)


def _dense_conv_fwd(x, kernel, need, stride, dilation):
  return _lax_conv(x, kernel, stride, dilation), (x, kernel, need)


def _dense_conv_bwd(stride, dilation, residuals, g):
  """The gradients that `need` asks for (zeros for the others: `lax.cond` runs only the
  branch taken), in forms that XLA:CPU runs fast inside the step's loop.

  JAX's transpose rules give XLA convolutions with swapped kernel or batch dimensions,
  which XLA:CPU rewrites into fast library calls outside loops but not inside a while
  loop, where they ran several times slower (README, design section); the step evaluates the supernet inside a
  `lax.scan`, so the gradients are written out:
    dx = g, dilated by the stride, convolved with the flipped kernel [k, k, O, C];
    dK[i, j] = x_ij^T g, one matrix multiply per kernel tap (i, j), where x_ij [N*Ho*Wo, C]
      is the padded input shifted by (d i, d j) and subsampled by the stride, and g is
      [N*Ho*Wo, O]. (As one convolution with batch C, features N and g as a [Ho, Wo, N, O]
      kernel, this was 4-8x slower on XLA:CPU at C=16: benchmarks/ops_depthwise.py.)
  """
  x, kernel, need = residuals
  k = kernel.shape[0]
  pad = dilation * (k - 1) // 2
  span = dilation * (k - 1)
  n, ho, wo, out = g.shape
  h, w, c = x.shape[1:]

  def input_grad():
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
    return lax.conv_general_dilated(
        g, flipped, (1, 1),
        [(span - pad, h + pad - 1 - stride * (ho - 1)),
         (span - pad, w + pad - 1 - stride * (wo - 1))],
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

  dx = lax.cond(need >= INPUT_GRADS, input_grad, lambda: jnp.zeros_like(x))
  dk = lax.cond(need >= ALL_GRADS, kernel_grad, lambda: jnp.zeros_like(kernel))
  return dx, dk, None


_dense_conv.defvjp(_dense_conv_fwd, _dense_conv_bwd)


def conv(x: jax.Array, kernel: jax.Array, stride: int = 1, dilation: int = 1,
         groups: int = 1, impl: str = "fused", need=ALL_GRADS) -> jax.Array:
  """2-D convolution with PyTorch's symmetric padding dilation * (k - 1) // 2.

  x: [N, H, W, C]; kernel: [k, k, C // groups, D]. Returns [N, H', W', D]. Dense
  convolutions use the written-out backward pass when impl is "fused", which computes
  only the gradients that `need` (an int scalar, possibly traced) asks for.
  """
  if groups == 1 and impl == "fused":
    return _dense_conv(x, kernel, jnp.asarray(need, jnp.int32), stride, dilation)
  return _lax_conv(x, kernel, stride, dilation, groups)


def separable(x: jax.Array, dw: jax.Array, pw: jax.Array, stride: int, dilation: int,
              impl: str, need=ALL_GRADS) -> jax.Array:
  """Depthwise kxk then pointwise 1x1 convolution of one input, for E edges.

  x: [N, H, W, C]; dw: [E, k, k, C]; pw: [E, C, D]. Returns [N, H', W', E, D].
  """
  n_edges, k, _, c = dw.shape
  d = pw.shape[-1]
  if impl == "fused" and _shifted_is_faster(c):
    return _separable_shifted(x, dw, pw, jnp.asarray(need, jnp.int32), stride, dilation)
  if impl != "grouped":
    kernel = jnp.einsum("eijc,ecd->ijced", dw, pw).reshape(k, k, c, n_edges * d)
    y = conv(x, kernel, stride, dilation, impl=impl, need=need)
    return y.reshape(y.shape[:3] + (n_edges, d))
  depthwise = jnp.transpose(dw, (1, 2, 3, 0)).reshape(k, k, 1, c * n_edges)
  y = conv(x, depthwise, stride, dilation, groups=c)
  y = y.reshape(y.shape[:3] + (c, n_edges))
  return jnp.einsum("nhwce,ecd->nhwed", y, pw)


def separable_per_edge(x: jax.Array, dw: jax.Array, pw: jax.Array, impl: str,
                       need=ALL_GRADS) -> jax.Array:
  """Depthwise kxk (stride 1) then pointwise 1x1, a different input per edge.

  x: [N, H, W, E, C]; dw: [E, k, k, C]; pw: [E, C, D]. Returns [N, H, W, E, D].
  """
  if impl == "fused" and _shifted_is_faster(x.shape[-1]):
    return _separable_shifted(x, dw, pw, jnp.asarray(need, jnp.int32), 1, 1)
  if impl != "grouped":
    # One dense convolution per edge: a block-diagonal kernel over the edges would cost
    # E times the arithmetic, and grouped convolutions are slow on XLA:CPU.
    return jnp.stack([separable(x[:, :, :, e], dw[e:e + 1], pw[e:e + 1], 1, 1, impl, need)[:, :, :, 0]
                      for e in range(x.shape[3])], axis=3)
  n, h, w, n_edges, c = x.shape
  k = dw.shape[1]
  depthwise = jnp.transpose(dw, (1, 2, 0, 3)).reshape(k, k, 1, n_edges * c)
  y = conv(x.reshape(n, h, w, n_edges * c), depthwise, groups=n_edges * c)
  return jnp.einsum("nhwec,ecd->nhwed", y.reshape(n, h, w, n_edges, c), pw)


def _shifted_is_faster(channels: int) -> bool:
  """Whether the "fused" path computes a separable convolution of `channels` input channels
  as shifted multiply-adds (`_separable_shifted`) rather than as one dense convolution.

  The dense kernel does k^2 D / (k^2 + D) times the multiply-adds but runs in XLA:CPU's
  convolution library; the shifted form wins from 16 channels on (1.3-2.5x at 16 channels,
  32x32, batch 64) and loses at 8 when the kernel gradients are needed (0.6-0.8x), with
  either stride (measured inside a `lax.scan`, forward and backward at each `need`, by
  benchmarks/ops_depthwise.py; the figures and the machine are in the README).
  """
  return channels >= 16


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
def _separable_shifted(x, dw, pw, need, stride: int, dilation: int):
  """Depthwise (shifted multiply-adds) then pointwise convolution; the backward pass
  computes the gradients `need` asks for (see `NO_GRADS`).

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
  span = dilation * (k - 1)
  h, w = x.shape[1:3]
  ho, wo = g.shape[1:3]

  def input_grad(g_dw):
    dilated = lax.pad(g_dw, jnp.zeros((), g_dw.dtype),
                      ((0, 0, 0), (span - pad, h + pad - 1 - stride * (ho - 1), stride - 1),
                       (span - pad, w + pad - 1 - stride * (wo - 1), stride - 1),
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
    taps = [jnp.sum(_tap(xp, i, j, stride, dilation, ho, wo) * g_dw, axis=(0, 1, 2))
            for i in range(k) for j in range(k)]
    return jnp.stack(taps, axis=1).reshape(dw.shape), _pointwise_kernel_grad(y, g)

  def nothing():
    return jnp.zeros_like(x), jnp.zeros_like(dw), jnp.zeros_like(pw)

  def inputs():
    return input_grad(_pointwise_input_grad(g, pw)), jnp.zeros_like(dw), jnp.zeros_like(pw)

  def everything():
    g_dw = _pointwise_input_grad(g, pw)
    return (input_grad(g_dw), *kernel_grads(g_dw))

  dx, d_dw, d_pw = lax.switch(jnp.clip(need, NO_GRADS, ALL_GRADS), (nothing, inputs, everything))
  return dx, d_dw, d_pw, None


_separable_shifted.defvjp(_separable_shifted_fwd, _separable_shifted_bwd)


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


class BatchNorm(nn.Module):
  """BatchNorm over batch and space, with statistics per trailing feature ([E, C] or [C]).

  `train` may be a traced boolean, so one compiled graph serves both modes: True normalises
  with batch statistics and updates the running ones (as PyTorch's train mode, including
  the unbiased variance in the running update); False uses the running statistics. The
  running statistics are only written when `batch_stats` is mutable in `apply`.

  Attributes:
    affine: learn a scale and bias (the stem and evaluation networks) or not (search ops).
    momentum: Flax convention, running = momentum * running + (1 - momentum) * batch;
      0.9 equals PyTorch's momentum=0.1.
    epsilon: added to the variance.
  """
  affine: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train) -> jax.Array:
    features = x.shape[3:]
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
    mean, var = _statistics(x, train, running_mean.value, running_var.value)
    if self.is_mutable_collection("batch_stats") and not self.is_initializing():
      count = x.shape[0] * x.shape[1] * x.shape[2]
      m = self.momentum
      running_mean.value = jnp.where(train, m * running_mean.value + (1 - m) * mean,
                                     running_mean.value)
      running_var.value = jnp.where(
          train, m * running_var.value + (1 - m) * var * (count / max(count - 1, 1)),
          running_var.value)
    y = (x - mean) * lax.rsqrt(var + self.epsilon)
    if self.affine:
      y = y * self.param("scale", nn.initializers.ones, features)
      y = y + self.param("bias", nn.initializers.zeros, features)
    return y


def _statistics(x: jax.Array, train, running_mean: jax.Array, running_var: jax.Array):
  """(mean, variance) that BatchNorm normalises x [N, H, W, ...] with: the batch's (biased
  variance) when train is true, the running ones otherwise.

  With a traced `train` (one compiled graph for both modes) the batch statistics are
  computed in a `lax.cond`, so that inference-mode evaluations (9 of the 11 in an ADV step)
  skip their reductions and the backward pass through them; a `jnp.where` would compute
  both and select.
  """
  def batch(x, *_):
    mean = jnp.mean(x, (0, 1, 2))
    return mean, jnp.mean(jnp.square(x - mean), (0, 1, 2))

  if isinstance(train, bool):
    return batch(x) if train else (running_mean, running_var)
  return lax.cond(train, batch, lambda x, m, v: (m, v), x, running_mean, running_var)


class ReLUConvBN(nn.Module):
  """ReLU, 1x1 convolution, BatchNorm: the cell-input preprocessing. [N,H,W,C] -> [..., D]."""
  features: int
  affine: bool = False
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train) -> jax.Array:
    kernel = self.param("kernel", torch_uniform(x.shape[-1]), (x.shape[-1], self.features))
    y = jnp.einsum("nhwc,cd->nhwd", nn.relu(x), kernel)
    return BatchNorm(self.affine, self.bn_momentum)(y, train)


class FactorizedReduce(nn.Module):
  """ReLU, two 1x1 stride-2 convolutions on x and on x shifted by one pixel, concatenated,
  BatchNorm; for E edges at once.

  x: [N, H, W, C] (H, W even) -> [N, H/2, W/2, E, D].
  """
  features: int
  num_edges: int = 1
  affine: bool = False
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train) -> jax.Array:
    if self.features % 2:
      raise ValueError(f"FactorizedReduce needs an even channel count, got {self.features}")
    c, half = x.shape[-1], self.features // 2
    init = torch_uniform(c)
    k1 = self.param("kernel_1", init, (self.num_edges, c, half))
    k2 = self.param("kernel_2", init, (self.num_edges, c, half))
    x = nn.relu(x)
    y = jnp.concatenate([jnp.einsum("nhwc,ecd->nhwed", x[:, ::2, ::2], k1),
                         jnp.einsum("nhwc,ecd->nhwed", x[:, 1::2, 1::2], k2)], axis=-1)
    return BatchNorm(self.affine, self.bn_momentum)(y, train)


def max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """3x3 max pooling, padding 1 (padded cells never win). [N,H,W,C] -> [N,H',W',C]."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                           [(0, 0), (1, 1), (1, 1), (0, 0)])


def avg_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """3x3 average pooling, padding 1, padding excluded from the mean (PyTorch's
  count_include_pad=False). [N,H,W,C] -> [N,H',W',C]."""
  total = lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, stride, stride, 1),
                            [(0, 0), (1, 1), (1, 1), (0, 0)])
  return total / _window_counts(x.shape[1], x.shape[2], stride)[None, :, :, None]


@functools.lru_cache(maxsize=None)
def _window_counts(height: int, width: int, stride: int) -> np.ndarray:
  """How many real pixels each padded 3x3 window holds: [H', W'] (a trace-time constant)."""
  rows = np.convolve(np.ones(height), np.ones(3))[1:-1][::stride]
  cols = np.convolve(np.ones(width), np.ones(3))[1:-1][::stride]
  return np.outer(rows, cols).astype(np.float32)


class SepConv(nn.Module):
  """sep_conv_kxk for E edges: (ReLU, depthwise kxk, pointwise 1x1, BN) twice, stride in
  the first. x: [N, H, W, C] -> [N, H', W', E, C]. `affine`: learnable BatchNorm scale
  and bias (evaluation networks) or none (the supernet)."""
  kernel_size: int
  num_edges: int
  stride: int
  impl: str
  bn_momentum: float = 0.9
  affine: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train, need=ALL_GRADS) -> jax.Array:
    e, k, c = self.num_edges, self.kernel_size, x.shape[-1]
    dw1 = self.param("dw_1", torch_uniform(k * k), (e, k, k, c))
    pw1 = self.param("pw_1", torch_uniform(c), (e, c, c))
    dw2 = self.param("dw_2", torch_uniform(k * k), (e, k, k, c))
    pw2 = self.param("pw_2", torch_uniform(c), (e, c, c))
    y = separable(nn.relu(x), dw1, pw1, self.stride, 1, self.impl, need)
    y = BatchNorm(self.affine, self.bn_momentum, name="bn_1")(y, train)
    y = separable_per_edge(nn.relu(y), dw2, pw2, self.impl, need)
    return BatchNorm(self.affine, self.bn_momentum, name="bn_2")(y, train)


class DilConv(nn.Module):
  """dil_conv_kxk for E edges: ReLU, depthwise kxk with dilation 2, pointwise 1x1, BN.
  x: [N, H, W, C] -> [N, H', W', E, C]. `affine` as in SepConv."""
  kernel_size: int
  num_edges: int
  stride: int
  impl: str
  bn_momentum: float = 0.9
  affine: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train, need=ALL_GRADS) -> jax.Array:
    e, k, c = self.num_edges, self.kernel_size, x.shape[-1]
    dw = self.param("dw", torch_uniform(k * k), (e, k, k, c))
    pw = self.param("pw", torch_uniform(c), (e, c, c))
    y = separable(nn.relu(x), dw, pw, self.stride, 2, self.impl, need)
    return BatchNorm(self.affine, self.bn_momentum)(y, train)


class NorConv(nn.Module):
  """nor_conv_kxk (NAS-Bench-201) for E edges: ReLU, dense kxk convolution (padding
  (k - 1) // 2, no bias), BatchNorm; the E edges' kernels as one convolution.
  x: [N, H, W, C] -> [N, H', W', E, D]. `affine` as in SepConv.

  The kernel is stored [E, k, k, C, D] (one PyTorch Conv2d weight per edge)."""
  kernel_size: int
  num_edges: int
  stride: int
  impl: str
  features: int | None = None  # D; None keeps C
  bn_momentum: float = 0.9
  affine: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train, need=ALL_GRADS) -> jax.Array:
    e, k, c = self.num_edges, self.kernel_size, x.shape[-1]
    d = self.features or c
    kernel = self.param("kernel", torch_uniform(k * k * c), (e, k, k, c, d))
    kernel = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(k, k, c, e * d)
    y = conv(nn.relu(x), kernel, self.stride, impl=self.impl, need=need)
    y = y.reshape(y.shape[:3] + (e, d))
    return BatchNorm(self.affine, self.bn_momentum)(y, train)


class EdgeOp(nn.Module):
  """One candidate op (by name) for the E edges that leave one state.

  x: [N, H, W, C] -> [N, H', W', E, C], or [N, H', W', 1, C] for ops whose output does
  not depend on the edge (pooling, identity). `none` is never built: it adds nothing.

  Attributes:
    affine: learnable BatchNorm scale and bias (evaluation networks) or none (supernet).
    pool_bn: a (non-affine) BatchNorm after pooling, as the supernet has and the
      evaluation network does not.
  """
  op: str
  num_edges: int
  stride: int
  impl: str
  bn_momentum: float = 0.9
  affine: bool = False
  pool_bn: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train, need=ALL_GRADS) -> jax.Array:
    pool_out = ((lambda y: BatchNorm(momentum=self.bn_momentum)(y, train)) if self.pool_bn
                else (lambda y: y))
    conv_args = dict(num_edges=self.num_edges, stride=self.stride, impl=self.impl,
                     bn_momentum=self.bn_momentum, affine=self.affine)
    if self.op == "max_pool_3x3":
      return pool_out(max_pool_3x3(x, self.stride)[:, :, :, None])
    if self.op == "avg_pool_3x3":
      return pool_out(avg_pool_3x3(x, self.stride)[:, :, :, None])
    if self.op == "skip_connect":
      if self.stride == 1:
        return x[:, :, :, None]
      return FactorizedReduce(x.shape[-1], self.num_edges, self.affine, self.bn_momentum)(
          x, train)
    if self.op.startswith("sep_conv_"):
      return SepConv(int(self.op[-1]), **conv_args)(x, train, need)
    if self.op.startswith("dil_conv_"):
      return DilConv(int(self.op[-1]), **conv_args)(x, train, need)
    if self.op.startswith("nor_conv_"):
      return NorConv(int(self.op[-1]), **conv_args)(x, train, need)
    if self.op == "noise":
      n, h, w, c = x[:, ::self.stride, ::self.stride].shape
      return jax.random.normal(self.make_rng("noise"), (n, h, w, self.num_edges, c), x.dtype)
    raise ValueError(f"unknown op {self.op!r}")


class MixedOps(nn.Module):
  """The mixed ops of all edges leaving one state: for each of its E edges,
  sum_k A[edge, k] * op_k(x).

  Attributes:
    edge_ops: the op names of each outgoing edge (E tuples of K names).
    stride: 2 on edges from a reduction cell's inputs, else 1.
    pool_bn: BatchNorm after pooling (the DARTS supernet) or not (NAS-Bench-201).

  Call: x [N, H, W, C], weights [E, K] (rows of the mixing weights A for these edges),
  train (BatchNorm mode), need (see `NO_GRADS`) -> [N, H', W', E, C].
  """
  edge_ops: tuple[tuple[str, ...], ...]
  stride: int
  impl: str
  bn_momentum: float = 0.9
  pool_bn: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, weights: jax.Array, train, need=ALL_GRADS) -> jax.Array:
    n_edges = len(self.edge_ops)
    total = None
    for op in _ops_in_order(self.edge_ops):
      slots = [i for i, ops in enumerate(self.edge_ops) if op in ops]
      op_index = [self.edge_ops[i].index(op) for i in slots]
      if op == "none":
        continue
      out = EdgeOp(op, len(slots), self.stride, self.impl, self.bn_momentum,
                   pool_bn=self.pool_bn, name=op)(x, train, need)
      w = weights[jnp.array(slots), jnp.array(op_index)]
      term = _place(out * w[:, None], slots, n_edges)
      total = term if total is None else total + term
    if total is None:  # every op on these edges is `none`
      n, h, w_, c = x[:, ::self.stride, ::self.stride].shape
      return jnp.zeros((n, h, w_, n_edges, c), x.dtype)
    return materialize(total, need)


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


def _ops_in_order(edge_ops: Sequence[Sequence[str]]) -> list[str]:
  """The distinct op names of `edge_ops`, in first-seen order."""
  return list(dict.fromkeys(op for ops in edge_ops for op in ops))


def _place(values: jax.Array, slots: list[int], n_edges: int) -> jax.Array:
  """Put values [N, H, W, len(slots), C] at edge positions `slots` of [N, H, W, n_edges, C]."""
  if slots == list(range(n_edges)):
    return values
  zeros = jnp.zeros_like(values[:, :, :, :1])
  return jnp.concatenate([values[:, :, :, slots.index(i):slots.index(i) + 1]
                          if i in slots else zeros for i in range(n_edges)], axis=3)
