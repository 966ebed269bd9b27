"""The DARTS-family supernet (SPEC section 2), taking the mixing weights as an input.

`Supernet.apply(variables, x, A, train)` maps images x [N, H, W, 3] and mixing weights
A = {"normal": [14, K], "reduce": [14, K]} to logits [N, classes]; `NB201Supernet`, the
NAS-Bench-201 search network, does the same with A = {"normal": [6, 5]}. The architecture is
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


def mixed_nodes(states, topology: spaces.Topology, edge_ops, weights, strides, impl: str,
                bn_momentum: float, train, need, pool_bn: bool = True) -> list:
  """The intermediate nodes of a cell; call it inside a compact module's `__call__`, which
  receives the submodules ("from_<state>": the mixed ops of every edge leaving that state).

  Node i is the sum of the mixed ops on its incoming edges (`topology.edges()`); the edges
  leaving one state are computed together (`ops.MixedOps`). states: the cell inputs
  [N, H, W, C] each; weights [edges, K] (the cell type's rows of A); strides(src) -> the
  stride of the edges leaving state src. Returns the num_nodes node outputs.
  """
  states = list(states)
  endpoints = topology.edges()
  nodes = [None] * topology.num_nodes
  for src in range(topology.inputs + topology.num_nodes - 1):
    edges = [i for i, (s, _) in enumerate(endpoints) if s == src]
    out = ops.MixedOps(tuple(edge_ops[i] for i in edges), strides(src), impl, bn_momentum,
                       pool_bn, name=f"from_{src}")(states[src], weights[jnp.array(edges)],
                                                    train, need)
    for slot, edge in enumerate(edges):
      node = endpoints[edge][1]
      term = out[:, :, :, slot]
      nodes[node] = term if nodes[node] is None else nodes[node] + term
    if src >= topology.inputs - 1:  # node src - inputs + 1 has received all its edges
      states.append(nodes[src - topology.inputs + 1])
  return nodes


def classifier(module: nn.Module, x, num_classes: int):
  """Global average pooling, then a dense layer with PyTorch's initialisation, as parameters
  "classifier_kernel" and "classifier_bias" of `module` (call inside its compact method).
  x [N, H, W, C] -> logits [N, num_classes]."""
  features = jnp.mean(x, axis=(1, 2))
  fan_in = features.shape[-1]
  kernel = module.param("classifier_kernel", ops.torch_uniform(fan_in), (fan_in, num_classes))
  bias = module.param("classifier_bias", ops.torch_uniform(fan_in), (num_classes,))
  return features @ kernel + bias


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
    nodes = mixed_nodes([s0, s1], spaces.DARTS_CELL, self.edge_ops, weights,
                        lambda src: 2 if self.reduction and src < 2 else 1, self.impl,
                        self.bn_momentum, train, need)
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

  @property
  def num_cells(self) -> int:
    return self.layers

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
    return classifier(self, s1, self.num_classes)


# ---------------------------------------------------------------- NAS-Bench-201

class NB201Cell(nn.Module):
  """A NAS-Bench-201 search cell (`spaces.NB201_CELL`): node 0 is the input, node i
  (1..3) sums the mixed ops on its edges from nodes 0..i-1, and node 3 is the output. Every
  edge has stride 1 and keeps C channels; pooling has no BatchNorm after it.

  Call: x [N, H, W, C], weights [6, K] -> [N, H, W, C].
  """
  edge_ops: tuple[tuple[str, ...], ...]
  impl: str
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, weights, train, need=ops.ALL_GRADS):
    return mixed_nodes([x], spaces.NB201_CELL, self.edge_ops, weights, lambda src: 1,
                       self.impl, self.bn_momentum, train, need, pool_bn=False)[-1]


class ResNetBlock(nn.Module):
  """NAS-Bench-201's reduction: a ResNet basic block with stride 2 and affine BatchNorm.

  ReLU-conv3x3(stride 2)-BN, ReLU-conv3x3-BN, plus the shortcut: 2x2 average pooling
  (stride 2) then a 1x1 convolution. x [N, H, W, C] -> [N, H/2, W/2, features].
  """
  features: int
  impl: str
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train, need=ops.ALL_GRADS):
    conv_args = dict(num_edges=1, impl=self.impl, features=self.features,
                     bn_momentum=self.bn_momentum, affine=True)
    y = ops.NorConv(3, stride=2, name="conv_a", **conv_args)(x, train, need)[:, :, :, 0]
    y = ops.NorConv(3, stride=1, name="conv_b", **conv_args)(y, train, need)[:, :, :, 0]
    n, h, w, c = x.shape
    pooled = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4))
    kernel = self.param("shortcut_kernel", ops.torch_uniform(c), (1, 1, c, self.features))
    return ops.conv(pooled, kernel, impl=self.impl, need=need) + y


class NB201Supernet(nn.Module):
  """The NAS-Bench-201 search network: stem (3x3 convolution, affine BatchNorm), three
  stages of `cells_per_stage` search cells at C, 2C, 4C channels with a `ResNetBlock`
  between stages, then BatchNorm (affine), ReLU, global pool, dense.

  `apply(variables, x, A, train, need)` as `Supernet`, with A = {"normal": [6, K]}: one
  matrix shared by every cell. The cells of a stage are identical, so each stage is one
  `nn.scan` over its cells (parameters and statistics stacked on a leading axis of size
  cells_per_stage): XLA compiles one cell per stage, not every cell.

  Attributes:
    space: the nb201 space (op lists of the 6 edges).
    num_classes: classifier outputs.
    channels: C (16 in NAS-Bench-201).
    cells_per_stage: N (5 in NAS-Bench-201).
    impl, bn_momentum: as `Supernet`.
  """
  space: spaces.SearchSpace
  num_classes: int
  channels: int = 16
  cells_per_stage: int = 5
  impl: str = "fused"
  bn_momentum: float = 0.9

  @property
  def num_cells(self) -> int:
    return 3 * self.cells_per_stage

  @nn.compact
  def __call__(self, x, A, train, need=ops.ALL_GRADS):
    c = self.channels
    stem_kernel = self.param("stem_kernel", ops.torch_uniform(9 * x.shape[-1]),
                             (3, 3, x.shape[-1], c))
    x = ops.BatchNorm(affine=True, momentum=self.bn_momentum, name="stem_bn")(
        ops.conv(x, stem_kernel, impl=self.impl, need=need), train)
    stage = nn.scan(lambda cell, h, weights, train_bn, need_: (cell(h, weights, train_bn, need_),
                                                               None),
                    variable_axes={"params": 0, "batch_stats": 0},
                    split_rngs={"params": True}, length=self.cells_per_stage,
                    in_axes=(nn.broadcast, nn.broadcast, nn.broadcast))
    for i in range(3):
      if i:
        x = ResNetBlock(c * 2 ** i, self.impl, self.bn_momentum, name=f"reduce_{i}")(
            x, train, need)
      cells = NB201Cell(self.space.ops("normal"), self.impl, self.bn_momentum,
                        name=f"stage_{i}")
      x, _ = stage(cells, x, A["normal"], train, need)
    x = nn.relu(ops.BatchNorm(affine=True, momentum=self.bn_momentum, name="last_bn")(x, train))
    return classifier(self, x, self.num_classes)
