"""The DARTS-family supernet (SPEC section 2), taking the mixing weights as an input.

`Supernet.apply(variables, x, A, train)` maps images x [N, H, W, 3] and mixing weights
A = {"normal": [14, K], "reduce": [14, K]} to logits [N, classes]. The architecture is
never a module parameter: alpha lives in the search state and A = softmax(alpha) (or a
perturbed version of it) is passed in on every call.

`train` (a Python or traced boolean) selects BatchNorm's mode; in train mode, call apply
with `mutable=["batch_stats"]` to receive the updated running statistics. `need` (an int,
possibly traced; `ops.NO_GRADS`, `ops.INPUT_GRADS` or `ops.ALL_GRADS`, the default) says
which gradients a backward pass through the convolutions must compute. Spaces with the
`noise` op need `rngs={"noise": key}`.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from sdarts_jax import ops, spaces


class Cell(nn.Module):
  """A DARTS cell: preprocess the two inputs to C channels, then 4 nodes, each the sum of
  the mixed ops on its incoming edges; output the channel concatenation of the nodes.

  Call: s0 [N, H0, W0, C0], s1 [N, H, W, C1], weights [14, K] -> [N, H', W', 4C], with
  H' = H / 2 in a reduction cell.
  """
  edge_ops: tuple[tuple[str, ...], ...]
  channels: int
  reduction: bool
  reduction_prev: bool
  impl: str
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, s0, s1, weights, train, need=ops.ALL_GRADS):
    c = self.channels
    if self.reduction_prev:
      s0 = ops.FactorizedReduce(c, bn_momentum=self.bn_momentum, name="pre_0")(s0, train)[
          :, :, :, 0]
    else:
      s0 = ops.ReLUConvBN(c, bn_momentum=self.bn_momentum, name="pre_0")(s0, train)
    s1 = ops.ReLUConvBN(c, bn_momentum=self.bn_momentum, name="pre_1")(s1, train)
    states = [s0, s1]
    endpoints = spaces.edge_endpoints()
    nodes = [None] * spaces.NUM_NODES
    for src in range(2 + spaces.NUM_NODES - 1):
      edges = [i for i, (s, _) in enumerate(endpoints) if s == src]
      stride = 2 if self.reduction and src < 2 else 1
      out = ops.MixedOps(tuple(self.edge_ops[i] for i in edges), stride, self.impl,
                         self.bn_momentum, name=f"from_{src}")(
                             states[src], weights[jnp.array(edges)], train, need)
      for slot, edge in enumerate(edges):
        node = endpoints[edge][1]
        term = out[:, :, :, slot]
        nodes[node] = term if nodes[node] is None else nodes[node] + term
      if src >= 1:  # node src - 1 has received all its edges
        states.append(nodes[src - 1])
    return jnp.concatenate(nodes, axis=-1)


class Supernet(nn.Module):
  """Stem, `layers` cells (reduction at layers//3 and 2*layers//3), global pool, dense.

  Attributes:
    space: the search space (op lists per edge and cell type).
    num_classes: classifier outputs.
    channels: initial channels C (16 in the paper).
    layers: number of cells (8 in the paper).
    stem_multiplier: the stem outputs stem_multiplier * C channels.
    impl: convolution implementation, one of `ops.IMPLS` (`ops.depthwise_impl` by backend).
    bn_momentum: Flax-convention BatchNorm momentum (0.9 = PyTorch 0.1).
  """
  space: spaces.SearchSpace
  num_classes: int
  channels: int = 16
  layers: int = 8
  stem_multiplier: int = 3
  impl: str = "fused"
  bn_momentum: float = 0.9

  def reduction_cells(self) -> tuple[int, ...]:
    return (self.layers // 3, 2 * self.layers // 3)

  @nn.compact
  def __call__(self, x, A, train, need=ops.ALL_GRADS):
    c = self.stem_multiplier * self.channels
    stem_kernel = self.param("stem_kernel", ops.torch_uniform(9 * x.shape[-1]),
                             (3, 3, x.shape[-1], c))
    s = ops.BatchNorm(affine=True, momentum=self.bn_momentum, name="stem_bn")(
        ops.conv(x, stem_kernel, impl=self.impl, need=need), train)
    s0 = s1 = s
    c = self.channels
    reduction_prev = False
    for i in range(self.layers):
      reduction = i in self.reduction_cells()
      if reduction:
        c *= 2
      cell_type = "reduce" if reduction else "normal"
      cell = Cell(self.space.ops(cell_type), c, reduction, reduction_prev, self.impl,
                  self.bn_momentum, name=f"cell_{i}")
      s0, s1 = s1, cell(s0, s1, A[cell_type], train, need)
      reduction_prev = reduction
    features = jnp.mean(s1, axis=(1, 2))
    fan_in = features.shape[-1]
    kernel = self.param("classifier_kernel", ops.torch_uniform(fan_in),
                        (fan_in, self.num_classes))
    bias = self.param("classifier_bias", ops.torch_uniform(fan_in), (self.num_classes,))
    return features @ kernel + bias
