"""Candidate operations of the DARTS family, batched over the edges that share an input.

In a DARTS cell every state feeds several edges (the two cell inputs feed four each), and
each edge applies every candidate op to the same tensor. This module computes one op for
*all* edges leaving one state at once: the parameter-free ops (pooling, identity) once,
shared by those edges, and the convolutions as one convolution whose output channels hold
every edge. The supernet graph then grows with (states x op kinds) rather than
(edges x ops), which is what keeps XLA compile time down (see README, "Design").

Tensors are NHWC. An op for E edges maps x [N, H, W, C] to [N, H', W', E, C_out], or to
[N, H', W', 1, C_out] when its output is the same for every edge (pooling, identity).

How the convolutions run is config.model.impl, one of `IMPLEMENTATIONS` (equal results;
the XLA:CPU kernels with written-out backward passes are `sdarts_jax.model.kernels`);
`depthwise_impl()` picks by backend. Parameters are the same in all, stored as in the
PyTorch reference (a depthwise and a pointwise kernel per layer).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sdarts_jax.model import kernels
from sdarts_jax.model.kernels import Need


class Implementation(NamedTuple):
  """How the candidate convolutions run under one config.model.impl.

  auto_on: the backends that pick it for config.model.impl = auto.
  written_backward: dense convolutions with the written-out backward pass
    (`kernels.dense_conv`), which computes only the gradients `need` asks for and runs fast
    inside the step's loop on XLA:CPU; forward-mode autodiff cannot use it.
  grouped: a separable convolution's depthwise part as a grouped convolution
    (feature_group_count) followed by a 1x1 convolution, the natural form for cuDNN and
    TPUs; else the depthwise kernel [k, k, C] and the pointwise kernel [C, D] multiplied into
    one dense kernel [k, k, C, D], faster on XLA:CPU than a grouped convolution, whose
    backward pass is very slow there (benchmarks/ops_depthwise.py; figures in the README).
  shifted_from: the input channel count from which a separable convolution runs instead as
    k*k shifted multiply-adds and one block-diagonal pointwise product
    (`kernels.separable_shifted`, written-out backward too); None: never. The dense kernel
    does k^2 D / (k^2 + D) times the multiply-adds but runs in XLA:CPU's convolution
    library: the shifted form wins from 16 channels on (1.3-2.5x at 16 channels, 32x32,
    batch 64) and loses at 8 when the kernel gradients are needed (0.6-0.8x), with either
    stride (inside a `lax.scan`, forward and backward at each `need`, by
    benchmarks/ops_depthwise.py; the figures and the machine are in the README).
  """
  auto_on: tuple[str, ...]
  written_backward: bool
  grouped: bool
  shifted_from: int | None


# The choice of implementation per backend and channel count, in one place.
IMPLEMENTATIONS = {
    "fused": Implementation(auto_on=("cpu",), written_backward=True, grouped=False,
                            shifted_from=16),
    # The same forward pass as "fused" with JAX's own derivative rules, for forward-mode
    # autodiff (the Hessian-vector products, `autodiff_impl`).
    "fused_autodiff": Implementation(auto_on=(), written_backward=False, grouped=False,
                                     shifted_from=None),
    "grouped": Implementation(auto_on=("gpu", "tpu"), written_backward=False, grouped=True,
                              shifted_from=None),
}
IMPLS = tuple(IMPLEMENTATIONS)


def depthwise_impl(platform: str | None = None) -> str:
  """The implementation that `platform` ("cpu", "gpu" or "tpu"; by default JAX's default
  backend, `sdarts_jax.tpu_check` names the platform it compiles for) picks for
  config.model.impl = auto."""
  platform = platform or jax.default_backend()
  return next(name for name, i in IMPLEMENTATIONS.items() if platform in i.auto_on)


def impl_of(name: str) -> str:
  """The implementation that config.model.impl = name runs: `depthwise_impl()` for auto;
  ValueError for a name that is neither auto nor one of IMPLEMENTATIONS."""
  if name not in ("auto",) + IMPLS:
    raise ValueError(f"config.model.impl={name!r}; use auto or one of {', '.join(IMPLS)}")
  return depthwise_impl() if name == "auto" else name


def autodiff_impl(impl: str) -> str:
  """The implementation equal to `impl` that also supports forward-mode autodiff."""
  return "fused_autodiff" if impl == "fused" else impl


def uses_shifted(impl: str, channels: int) -> bool:
  """Whether `impl` runs a separable convolution of `channels` input channels as shifted
  multiply-adds (`kernels.separable_shifted`; see `Implementation.shifted_from`)."""
  start = IMPLEMENTATIONS[impl].shifted_from
  return start is not None and channels >= start


def torch_uniform(fan_in: int):
  """PyTorch's default Conv2d/Linear initialiser: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv(x: jax.Array, kernel: jax.Array, stride: int = 1, dilation: int = 1,
         groups: int = 1, impl: str = "fused", need=Need.ALL_GRADS) -> jax.Array:
  """2-D convolution with PyTorch's symmetric padding dilation * (k - 1) // 2.

  x: [N, H, W, C]; kernel: [k, k, C // groups, D]. Returns [N, H', W', D]. Dense
  convolutions use the written-out backward pass where `impl` has one, which computes
  only the gradients that `need` (an int scalar, possibly traced) asks for.
  """
  if groups == 1 and IMPLEMENTATIONS[impl].written_backward:
    return kernels.dense_conv(x, kernel, jnp.asarray(need, jnp.int32), stride, dilation)
  return kernels.lax_conv(x, kernel, stride, dilation, groups)


def separable(x: jax.Array, dw: jax.Array, pw: jax.Array, stride: int, dilation: int,
              impl: str, need=Need.ALL_GRADS) -> jax.Array:
  """Depthwise kxk then pointwise 1x1 convolution of one input, for E edges.

  x: [N, H, W, C]; dw: [E, k, k, C]; pw: [E, C, D]. Returns [N, H', W', E, D].
  """
  n_edges, k, _, c = dw.shape
  d = pw.shape[-1]
  if uses_shifted(impl, c):
    return kernels.separable_shifted(x, dw, pw, jnp.asarray(need, jnp.int32), stride,
                                     dilation)
  if not IMPLEMENTATIONS[impl].grouped:
    kernel = jnp.einsum("eijc,ecd->ijced", dw, pw).reshape(k, k, c, n_edges * d)
    y = conv(x, kernel, stride, dilation, impl=impl, need=need)
    return y.reshape(y.shape[:3] + (n_edges, d))
  depthwise = jnp.transpose(dw, (1, 2, 3, 0)).reshape(k, k, 1, c * n_edges)
  y = conv(x, depthwise, stride, dilation, groups=c)
  y = y.reshape(y.shape[:3] + (c, n_edges))
  return jnp.einsum("nhwce,ecd->nhwed", y, pw)


def separable_per_edge(x: jax.Array, dw: jax.Array, pw: jax.Array, impl: str,
                       need=Need.ALL_GRADS) -> jax.Array:
  """Depthwise kxk (stride 1) then pointwise 1x1, a different input per edge.

  x: [N, H, W, E, C]; dw: [E, k, k, C]; pw: [E, C, D]. Returns [N, H, W, E, D].
  """
  if uses_shifted(impl, x.shape[-1]):
    return kernels.separable_shifted(x, dw, pw, jnp.asarray(need, jnp.int32), 1, 1)
  if not IMPLEMENTATIONS[impl].grouped:
    # One dense convolution per edge: a block-diagonal kernel over the edges would cost
    # E times the arithmetic, and grouped convolutions are slow on XLA:CPU.
    return jnp.stack([separable(x[:, :, :, e], dw[e:e + 1], pw[e:e + 1], 1, 1, impl,
                                need)[:, :, :, 0]
                      for e in range(x.shape[3])], axis=3)
  n, h, w, n_edges, c = x.shape
  k = dw.shape[1]
  depthwise = jnp.transpose(dw, (1, 2, 0, 3)).reshape(k, k, 1, n_edges * c)
  y = conv(x.reshape(n, h, w, n_edges * c), depthwise, groups=n_edges * c)
  return jnp.einsum("nhwec,ecd->nhwed", y.reshape(n, h, w, n_edges, c), pw)


class BatchNorm(nn.Module):
  """BatchNorm over batch and space, with statistics per trailing feature ([E, C] or [C]).

  `train` may be a traced boolean, so one compiled graph serves both modes: True normalises
  with batch statistics and updates the running ones (as PyTorch's train mode, including
  the unbiased variance in the running update); False uses the running statistics. The
  running statistics are only written when `batch_stats` is mutable in `apply`. A bfloat16
  x (config.dtype) is normalised in float32 and returned in bfloat16; the statistics are
  float32 (float64 in tests that enable it).

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
    out_dtype = x.dtype  # bfloat16 in and out, float32 (or float64) inside
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
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
    return y.astype(out_dtype)


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
  counts = _window_counts(x.shape[1], x.shape[2], stride)[None, :, :, None]
  return total / counts.astype(x.dtype)


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
  def __call__(self, x: jax.Array, train, need=Need.ALL_GRADS) -> jax.Array:
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
  def __call__(self, x: jax.Array, train, need=Need.ALL_GRADS) -> jax.Array:
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
  def __call__(self, x: jax.Array, train, need=Need.ALL_GRADS) -> jax.Array:
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
  def __call__(self, x: jax.Array, train, need=Need.ALL_GRADS) -> jax.Array:
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
  train (BatchNorm mode), need (`kernels.Need`) -> [N, H', W', E, C].
  """
  edge_ops: tuple[tuple[str, ...], ...]
  stride: int
  impl: str
  bn_momentum: float = 0.9
  pool_bn: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, weights: jax.Array, train, need=Need.ALL_GRADS) -> jax.Array:
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
    return kernels.materialize(total, need)


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
