"""Candidate ops: shapes, the two depthwise implementations, the convolution's gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import assert_close_normwise
from sdarts_jax.model import kernels, ops, spaces
from sdarts_jax.model.kernels import Need

KEY = jax.random.PRNGKey(0)
# Two implementations of one op in float32 (convolutions and their transposes against XLA's,
# shifted multiply-adds against grouped convolutions, a pooled mean against numpy's) sum
# the same products in different orders: each entry's error is a few roundings of the
# largest terms entering it (sums of at most 5*5*5 or 2*8*8 products), so it is bounded by
# the array's scale, not the entry's (`assert_close_normwise`). Observed on an AVX-512
# Xeon: at most 4e-7 of the scale; TOL = 1e-5 leaves 25x and stays 100x below a wrong tap,
# stride or missing term (1e-3 or more). Gradients not asked for are exact zeros.
TOL = 1e-5


@pytest.mark.parametrize("stride,dilation,k,size", [
    (1, 1, 3, 8), (2, 1, 3, 8), (1, 2, 3, 8), (2, 2, 5, 8), (1, 1, 5, 7), (2, 1, 1, 8),
    (2, 2, 3, 7)])
def test_conv_gradients_equal_lax(stride, dilation, k, size):
  """The hand-written convolution backward pass equals JAX's own transpose rules."""
  x = jax.random.normal(KEY, (2, size, size, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (k, k, 3, 5))
  ref = lambda x, w: kernels.lax_conv(x, w, stride, dilation)
  g = jax.random.normal(jax.random.PRNGKey(2), ref(x, w).shape)
  want = jax.vjp(ref, x, w)[1](g)
  got = jax.vjp(lambda x, w: ops.conv(x, w, stride, dilation), x, w)[1](g)
  for a, b in zip(want, got):
    assert_close_normwise(b, a, TOL)


@pytest.mark.parametrize("need", list(Need))
def test_conv_computes_the_gradients_asked_for(need):
  """With `need` traced, the backward pass returns JAX's own gradients for what it asks
  for and zeros for the rest (the step relies on the ones asked for being exact)."""
  x = jax.random.normal(KEY, (2, 8, 8, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 5))
  g = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, 5))
  want = jax.vjp(lambda x, w: kernels.lax_conv(x, w, 2, 1), x, w)[1](g)
  vjp = jax.jit(lambda x, w, g, need: jax.vjp(
      lambda x, w: ops.conv(x, w, 2, 1, need=need), x, w)[1](g))
  dx, dw = vjp(x, w, g, jnp.int32(need))
  assert_close_normwise(dx, want[0] if need >= Need.INPUT_GRADS else 0, TOL)
  assert_close_normwise(dw, want[1] if need >= Need.ALL_GRADS else 0, TOL)


def test_conv_matches_pytorch_padding():
  """Cross-correlation with padding 1: an impulse comes out as the flipped kernel, same size."""
  x = jnp.zeros((1, 5, 5, 1)).at[0, 2, 2, 0].set(1.0)
  w = jnp.arange(9.0).reshape(3, 3, 1, 1)
  y = ops.conv(x, w)[0, :, :, 0]
  np.testing.assert_array_equal(y[1:4, 1:4], np.arange(9.0).reshape(3, 3)[::-1, ::-1])


@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_separable_fused_equals_grouped(stride, dilation):
  x = jax.random.normal(KEY, (2, 8, 8, 4))
  dw = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 5, 4))
  pw = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 6))
  fused = ops.separable(x, dw, pw, stride, dilation, "fused")
  grouped = ops.separable(x, dw, pw, stride, dilation, "grouped")
  assert fused.shape == (2, 8 // stride, 8 // stride, 3, 6)
  assert_close_normwise(fused, grouped, TOL)
  # Edge 1 alone: a plain depthwise conv (one group per channel) then a 1x1.
  depthwise = lax.conv_general_dilated(
      x, jnp.transpose(dw[1], (0, 1, 2))[:, :, None, :], (stride, stride),
      [(2 * dilation, 2 * dilation)] * 2, rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=4)
  assert_close_normwise(fused[:, :, :, 1], depthwise @ pw[1], TOL)


def test_separable_per_edge_fused_equals_grouped():
  x = jax.random.normal(KEY, (2, 6, 6, 3, 4))
  dw = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
  pw = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 4))
  assert_close_normwise(ops.separable_per_edge(x, dw, pw, "fused"),
                        ops.separable_per_edge(x, dw, pw, "grouped"), TOL)


def test_pools():
  x = jax.random.normal(KEY, (2, 6, 6, 3))
  xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=np.nan)
  windows = np.stack([xp[:, i:i + 6, j:j + 6] for i in range(3) for j in range(3)])
  # The max selects an input: exact. The mean of up to 9 entries can cancel toward zero, so
  # it is bounded by the scale (9 roundings of max |x| at worst; observed 7e-8 of it).
  np.testing.assert_array_equal(ops.max_pool_3x3(x, 1), np.nanmax(windows, 0))
  assert_close_normwise(ops.avg_pool_3x3(x, 1), np.nanmean(windows, 0), TOL)
  assert_close_normwise(ops.avg_pool_3x3(x, 2), np.nanmean(windows, 0)[:, ::2, ::2], TOL)
  assert ops.max_pool_3x3(x, 2).shape == (2, 3, 3, 3)


def _run(module, *args, rngs=None):
  variables = module.init({"params": KEY, "noise": KEY}, *args)
  out, new = module.apply(variables, *args, mutable=["batch_stats"], rngs={"noise": KEY})
  return out, variables, new


@pytest.mark.parametrize("op", [o for o in spaces.OPS if o != "none"])
@pytest.mark.parametrize("stride", [1, 2])
def test_edge_op_shapes(op, stride):
  x = jax.random.normal(KEY, (2, 8, 8, 4))
  out, _, _ = _run(ops.EdgeOp(op, 3, stride, "fused"), x, True)
  shared = op in ("max_pool_3x3", "avg_pool_3x3") or (op == "skip_connect" and stride == 1)
  assert out.shape == (2, 8 // stride, 8 // stride, 1 if shared else 3, 4)


def test_batchnorm_modes_and_pytorch_running_update():
  x = jax.random.normal(KEY, (4, 3, 3, 2)) * 3 + 1
  bn = ops.BatchNorm()
  y, variables, new = _run(bn, x, True)
  xn = np.asarray(x).reshape(-1, 2)
  # Normalised entries near zero carry the error of x - mean, a few roundings of |x| (up to
  # 7.5, std 3): normwise; observed 1e-7. The statistics are means of 36 terms of |x| 2.5
  # against means of 1.0 and 1.2 (at most 36 roundings of 2.5, 5e-6 relative; observed 7e-8).
  assert_close_normwise(y.reshape(-1, 2), (xn - xn.mean(0)) / np.sqrt(xn.var(0) + 1e-5), TOL)
  # PyTorch: running = 0.9 running + 0.1 batch, with the unbiased variance.
  assert_close_normwise(new["batch_stats"]["mean"], 0.1 * xn.mean(0), TOL)
  assert_close_normwise(new["batch_stats"]["var"], 0.9 + 0.1 * xn.var(0, ddof=1), TOL)
  # Inference mode: running statistics, which stay unchanged.
  stats = {"mean": jnp.array([1.0, -1.0]), "var": jnp.array([4.0, 9.0])}
  y, new = bn.apply({"batch_stats": stats}, x, False, mutable=["batch_stats"])
  assert_close_normwise(y, (x - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5), TOL)
  np.testing.assert_array_equal(new["batch_stats"]["mean"], stats["mean"])


def test_mixed_ops_is_weighted_sum_of_ops():
  """MixedOps on S1-like edges (different ops per edge) equals sum_k A[e,k] op_k(x)."""
  edge_ops = (("skip_connect", "dil_conv_3x3"), ("max_pool_3x3", "skip_connect"),
              ("dil_conv_3x3", "dil_conv_5x5"))
  x = jax.random.normal(KEY, (2, 6, 6, 4))
  w = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(3), (3, 2)))
  mixed = ops.MixedOps(edge_ops, 1, "fused")
  variables = mixed.init({"params": KEY}, x, w, True)
  out = mixed.apply(variables, x, w, True, mutable=["batch_stats"])[0]
  params, stats = variables["params"], variables["batch_stats"]

  def single(op, edge_slot, n_edges):
    module = ops.EdgeOp(op, n_edges, 1, "fused")
    v = {"params": params.get(op, {}), "batch_stats": stats.get(op, {})}
    y = module.apply(v, x, True, mutable=["batch_stats"])[0]
    return y[:, :, :, 0 if y.shape[3] == 1 else edge_slot]

  # dil_conv_3x3 is on edges 0 and 2 (slots 0, 1 of its batch); dil_conv_5x5 on edge 2.
  want = [w[0, 0] * x + w[0, 1] * single("dil_conv_3x3", 0, 2),
          w[1, 0] * single("max_pool_3x3", 0, 1) + w[1, 1] * x,
          w[2, 0] * single("dil_conv_3x3", 1, 2) + w[2, 1] * single("dil_conv_5x5", 0, 1)]
  for e in range(3):
    assert_close_normwise(out[:, :, :, e], want[e], TOL)  # observed: equal


@pytest.mark.parametrize("stride,dilation,k,size,per_edge", [
    (1, 1, 3, 8, False), (2, 1, 3, 7, False), (2, 2, 5, 8, False),
    (1, 1, 5, 7, True)])  # per edge: SepConv's second layer, stride 1
def test_shifted_separable_equals_grouped_with_the_gradients_asked_for(stride, dilation, k,
                                                                       size, per_edge):
  """The shifted multiply-add form (used by the "fused" path at 16-32+ channels) and its
  written-out backward pass equal a grouped convolution then a 1x1 under JAX's own rules,
  for what `need` asks for (zeros for the rest); one input shared by 3 edges or one each (stride 1, dilation 1)."""
  shape = (2, size, size, 3, 4) if per_edge else (2, size, size, 4)
  x = jax.random.normal(KEY, shape)
  dw = jax.random.normal(jax.random.PRNGKey(1), (3, k, k, 4))
  pw = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 5))
  if per_edge:
    ref = lambda x, dw, pw: ops.separable_per_edge(x, dw, pw, "grouped")
  else:
    ref = lambda x, dw, pw: ops.separable(x, dw, pw, stride, dilation, "grouped")
  y, vjp = jax.vjp(ref, x, dw, pw)
  g = jax.random.normal(jax.random.PRNGKey(3), y.shape)
  want = vjp(g)
  run = jax.jit(lambda x, dw, pw, g, need: jax.vjp(
      lambda *a: kernels.separable_shifted(*a, need, stride, dilation), x, dw, pw))
  for need in Need:
    got_y, got_vjp = run(x, dw, pw, g, jnp.int32(need))
    assert_close_normwise(got_y, y, TOL)
    dx, d_dw, d_pw = got_vjp(g)
    assert_close_normwise(dx, want[0] if need >= Need.INPUT_GRADS else 0, TOL)
    assert_close_normwise(d_dw, want[1] if need >= Need.ALL_GRADS else 0, TOL)
    assert_close_normwise(d_pw, want[2] if need >= Need.ALL_GRADS else 0, TOL)
