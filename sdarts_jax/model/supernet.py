"""The DARTS-family supernet (docs/method.md, section 3), taking the mixing weights as an input.

`Supernet.apply(variables, x, A, train)` maps images x [N, H, W, 3] and mixing weights
A = {"normal": [14, K], "reduce": [14, K]} to logits [N, classes]; `NB201Supernet`, the
NAS-Bench-201 search network, does the same with A = {"normal": [6, 5]}, and
`OneShot1Supernet`, the NAS-Bench-1Shot1 one-shot model, with A = {"mixed_op": [N, 3],
"output": [1, N + 1], "inputs_v": [1, v], ...} (`nb101_cell.alpha_shapes`). The architecture is
never a module parameter: alpha lives in the search state and A = softmax(alpha) (or a
perturbed version of it) is passed in on every call.

With `partial_k` = K > 1 the DARTS-family supernet is PC-DARTS's (partial channel
connections, `PartialMixedOps`), and with `edge_norm` A also holds PC-DARTS's edge weights
(`spaces.edge_norm_shapes`); `model.alpha_shapes()` gives the arrays A holds.

`train` (a Python or traced boolean) selects BatchNorm's mode; in train mode, call apply
with `mutable=["batch_stats"]` to receive the updated running statistics. `need` (an int,
possibly traced; a `kernels.Need`, by default ALL_GRADS) says
which gradients a backward pass through the convolutions must compute. Spaces with the
`noise` op need `rngs={"noise": key}`.

Every supernet computes in its `dtype` (config.dtype, `MixedPrecision`): float32, or bfloat16
activations and convolutions with float32 parameters, A, BatchNorm statistics and logits.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sdarts_jax.model import kernels, nb101_cell, ops, spaces
from sdarts_jax.model.kernels import Need


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  """The jnp dtype that config.dtype = `name` computes in; ValueError for another name."""
  if name not in DTYPES:
    raise ValueError(f"config.dtype={name!r}; use one of {', '.join(DTYPES)}")
  return DTYPES[name]


class MixedPrecision(nn.Module):
  """The supernets' base: `apply` evaluates the network in the subclass's field `dtype` (a
  name of `DTYPES`). For bfloat16 it casts the float32 parameters, the images and A to
  bfloat16 on the way in, so that activations and convolutions run in bfloat16 while the
  state (parameters, alpha, optimizer states) stays float32 and gradients come back in
  float32 through the casts; BatchNorm normalises and keeps its statistics in float32
  (`ops.BatchNorm`) and the classifier returns float32 logits (`classifier`). For float32
  `apply` is Flax's own."""

  @nn.nowrap
  def apply(self, variables, x, A, *args, **kwargs):
    dtype = compute_dtype(self.dtype)
    if dtype != jnp.float32:
      cast = lambda tree: jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)
      variables = {**variables, "params": cast(variables["params"])}
      x, A = jnp.asarray(x, dtype), cast(A)
    return super().apply(variables, x, A, *args, **kwargs)


def mixing_weights(alpha):
  """A = softmax(alpha) per edge row: the continuous relaxation, what the supernets take.
  alpha: a pytree of [edges, ops] arrays (`model.alpha_shapes()`); A has its shapes."""
  return jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), alpha)


def mixed_nodes(states, topology: spaces.Topology, edge_ops, weights, strides, impl: str,
                bn_momentum: float, train, need, pool_bn: bool = True, partial_k: int = 1,
                edge_weights=None) -> list:
  """The intermediate nodes of a cell; call it inside a compact module's `__call__`, which
  receives the submodules ("from_<state>": the mixed ops of every edge leaving that state).

  Node i is the sum of the mixed ops on its incoming edges (`topology.edges()`); the edges
  leaving one state are computed together (`ops.MixedOps`, or `PartialMixedOps` when
  partial_k > 1). states: the cell inputs [N, H, W, C] each; weights [edges, K] (the cell
  type's rows of A); strides(src) -> the stride of the edges leaving state src;
  edge_weights: None, or [edges] (PC-DARTS's edge normalisation), each edge's output scaled
  by its entry. Returns the num_nodes node outputs.
  """
  states = list(states)
  endpoints = topology.edges()
  nodes = [None] * topology.num_nodes
  for src in range(topology.inputs + topology.num_nodes - 1):
    edges = [i for i, (s, _) in enumerate(endpoints) if s == src]
    leaving = (tuple(edge_ops[i] for i in edges), strides(src))
    mixed_ops = (ops.MixedOps(*leaving, impl, bn_momentum, pool_bn, name=f"from_{src}")
                 if partial_k == 1 else
                 PartialMixedOps(*leaving, partial_k, impl, bn_momentum, pool_bn,
                                 name=f"from_{src}"))
    out = mixed_ops(states[src], weights[jnp.array(edges)], train, need)
    for slot, edge in enumerate(edges):
      node = endpoints[edge][1]
      term = out[:, :, :, slot]
      if edge_weights is not None:
        term = edge_weights[edge] * term
      nodes[node] = term if nodes[node] is None else nodes[node] + term
    if src >= topology.inputs - 1:  # node src - inputs + 1 has received all its edges
      i = src - topology.inputs + 1
      nodes[i] = kernels.materialize(nodes[i], need)
      states.append(nodes[i])
  return nodes


class PartialMixedOps(nn.Module):
  """PC-DARTS's partial channel connections (Xu et al. 2020) for the E edges leaving one
  state, as the official SDARTS code's `MixedOpPCDARTS`: the first C/K channels of x go
  through the mixed ops (`ops.MixedOps`, every op built at C/K channels), the other
  channels bypass them (2x2 max pooling, stride 2, on the edges of stride 2); per edge the
  two parts are concatenated and channel-shuffled in K groups (`channel_shuffle`). The
  slice and the bypass are the same for every edge leaving the state, so the ops of all of
  them still run together.

  Attributes: as `ops.MixedOps`, plus k, the proportion K (4 in PC-DARTS; C % K == 0).

  Call: x [N, H, W, C], weights [E, ops], train, need -> [N, H', W', E, C].
  """
  edge_ops: tuple[tuple[str, ...], ...]
  stride: int
  k: int
  impl: str
  bn_momentum: float = 0.9
  pool_bn: bool = True

  @nn.compact
  def __call__(self, x, weights, train, need=Need.ALL_GRADS):
    c = x.shape[-1]
    if c % self.k:
      raise ValueError(f"PC-DARTS with K={self.k} (config.model.partial_k) needs a channel "
                       f"count divisible by K, got {c}")
    mixed = ops.MixedOps(self.edge_ops, self.stride, self.impl, self.bn_momentum, self.pool_bn,
                         name="ops")(x[..., :c // self.k], weights, train, need)
    bypass = x[..., c // self.k:]
    if self.stride == 2:
      bypass = max_pool_2x2(bypass)
    bypass = jnp.broadcast_to(bypass[:, :, :, None], mixed.shape[:4] + bypass.shape[-1:])
    return channel_shuffle(jnp.concatenate([mixed, bypass], axis=-1), self.k)


def channel_shuffle(x, groups: int):
  """ShuffleNet's channel shuffle over the last axis, as PyTorch's view(groups, C/groups),
  transpose, flatten: output channel j is input channel (j % groups) * C/groups +
  j // groups. x [..., C] -> [..., C]."""
  c = x.shape[-1]
  return jnp.swapaxes(x.reshape(x.shape[:-1] + (groups, c // groups)), -1, -2).reshape(x.shape)


def max_pool_2x2(x, pad: int = 0):
  """2x2 max pooling, stride 2, `pad` rows and columns of padding on every side (padded
  cells never win; PyTorch's MaxPool2d(2, 2, padding=pad)):
  [N, H, W, C] -> [N, (H + 2 pad) // 2, (W + 2 pad) // 2, C]."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                           [(0, 0), (pad, pad), (pad, pad), (0, 0)])


def classifier(module: nn.Module, x, num_classes: int):
  """Global average pooling, then a dense layer with PyTorch's initialisation, as parameters
  "classifier_kernel" and "classifier_bias" of `module` (call inside its compact method).
  x [N, H, W, C] -> logits [N, num_classes]."""
  features = jnp.mean(x, axis=(1, 2))
  fan_in = features.shape[-1]
  kernel = module.param("classifier_kernel", ops.torch_uniform(fan_in), (fan_in, num_classes))
  bias = module.param("classifier_bias", ops.torch_uniform(fan_in), (num_classes,))
  logits = features @ kernel + bias
  return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))  # bfloat16: float32


class Cell(nn.Module):
  """A DARTS cell: preprocess the two inputs to C channels, then 4 nodes, each the sum of
  the mixed ops on its incoming edges; output the channel concatenation of the nodes.

  Call: s0 [N, H0, W0, C0], s1 [N, H, W, C1], weights [14, K] -> [N, H', W', 4C], with
  H' = H / 2 in a reduction cell; edge_weights: None or [14] (PC-DARTS's edge
  normalisation: the weight of each edge among its node's incoming edges).
  partial_k > 1: PC-DARTS's partial channel connections (`PartialMixedOps`).
  """
  edge_ops: tuple[tuple[str, ...], ...]
  channels: int
  reduction: bool
  reduction_prev: bool
  impl: str
  bn_momentum: float = 0.9
  partial_k: int = 1

  @nn.compact
  def __call__(self, s0, s1, weights, train, need=Need.ALL_GRADS, edge_weights=None):
    c = self.channels
    if self.reduction_prev:
      s0 = ops.FactorizedReduce(c, bn_momentum=self.bn_momentum, name="pre_0")(s0, train)[
          :, :, :, 0]
    else:
      s0 = ops.ReLUConvBN(c, bn_momentum=self.bn_momentum, name="pre_0")(s0, train)
    s1 = ops.ReLUConvBN(c, bn_momentum=self.bn_momentum, name="pre_1")(s1, train)
    nodes = mixed_nodes([s0, s1], spaces.DARTS_CELL, self.edge_ops, weights,
                        lambda src: 2 if self.reduction and src < 2 else 1, self.impl,
                        self.bn_momentum, train, need, partial_k=self.partial_k,
                        edge_weights=edge_weights)
    return jnp.concatenate(nodes, axis=-1)


class Supernet(MixedPrecision):
  """Stem, `layers` cells (reduction at layers//3 and 2*layers//3), global pool, dense.

  Attributes:
    space: the search space (op lists per edge and cell type).
    num_classes: classifier outputs.
    channels: initial channels C (16 in the paper).
    layers: number of cells (8 in the paper).
    stem_multiplier: the stem outputs stem_multiplier * C channels.
    impl: convolution implementation, one of `ops.IMPLS` (`ops.depthwise_impl` by backend).
    bn_momentum: Flax-convention BatchNorm momentum (0.9 = PyTorch 0.1).
    partial_k: 1 (DARTS), or PC-DARTS's K: only 1/K of each state's channels go through
      the mixed ops (`PartialMixedOps`; the official SDARTS code's PC-DARTS has K = 4).
    edge_norm: PC-DARTS's edge normalisation: A also holds, per cell type and node, the
      weights of the node's incoming edges (`spaces.edge_norm_shapes`), which scale the
      edges' outputs. The official SDARTS code has none.
    dtype: what the network computes in, a name of `DTYPES` (`MixedPrecision`).
  """
  space: spaces.SearchSpace
  num_classes: int
  channels: int = 16
  layers: int = 8
  stem_multiplier: int = 3
  impl: str = "fused"
  bn_momentum: float = 0.9
  partial_k: int = 1
  edge_norm: bool = False
  dtype: str = "float32"

  def alpha_shapes(self) -> dict[str, tuple[int, int]]:
    """The arrays of alpha (and of A) by key: [14, ops] per cell type, and with edge_norm
    the edge weights of `spaces.edge_norm_shapes`."""
    extra = spaces.edge_norm_shapes(self.space.topology) if self.edge_norm else {}
    return {**self.space.alpha_shapes(), **extra}

  def reduction_cells(self) -> tuple[int, ...]:
    return (self.layers // 3, 2 * self.layers // 3)

  @property
  def num_cells(self) -> int:
    return self.layers

  @nn.compact
  def __call__(self, x, A, train, need=Need.ALL_GRADS):
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
      edge_weights = None
      if self.edge_norm:
        edge_weights = jnp.concatenate(spaces.edge_norm_rows(A, cell_type))
      cell = Cell(self.space.ops(cell_type), c, reduction, reduction_prev, self.impl,
                  self.bn_momentum, self.partial_k, name=f"cell_{i}")
      s0, s1 = s1, cell(s0, s1, A[cell_type], train, need, edge_weights)
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
  def __call__(self, x, weights, train, need=Need.ALL_GRADS):
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
  def __call__(self, x, train, need=Need.ALL_GRADS):
    conv_args = dict(num_edges=1, impl=self.impl, features=self.features,
                     bn_momentum=self.bn_momentum, affine=True)
    y = ops.NorConv(3, stride=2, name="conv_a", **conv_args)(x, train, need)[:, :, :, 0]
    y = ops.NorConv(3, stride=1, name="conv_b", **conv_args)(y, train, need)[:, :, :, 0]
    n, h, w, c = x.shape
    pooled = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4))
    kernel = self.param("shortcut_kernel", ops.torch_uniform(c), (1, 1, c, self.features))
    return ops.conv(pooled, kernel, impl=self.impl, need=need) + y


class NB201Supernet(MixedPrecision):
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
    impl, bn_momentum, dtype: as `Supernet`.
  """
  space: spaces.SearchSpace
  num_classes: int
  channels: int = 16
  cells_per_stage: int = 5
  impl: str = "fused"
  bn_momentum: float = 0.9
  dtype: str = "float32"

  @property
  def num_cells(self) -> int:
    return 3 * self.cells_per_stage

  def alpha_shapes(self) -> dict[str, tuple[int, int]]:
    """The arrays of alpha (and of A) by key: {"normal": [6, 5]}."""
    return self.space.alpha_shapes()

  @nn.compact
  def __call__(self, x, A, train, need=Need.ALL_GRADS):
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


# ---------------------------------------------------------------- NAS-Bench-1Shot1

class ConvBNReLU(nn.Module):
  """NAS-Bench-101's conv-bn-relu: a kxk convolution (padding (k - 1) // 2, no bias),
  BatchNorm with a learned scale and bias, ReLU. x [N, H, W, C] -> [N, H, W, features]."""
  features: int
  kernel_size: int
  impl: str
  bn_momentum: float

  @nn.compact
  def __call__(self, x, train, need=Need.ALL_GRADS):
    k, c = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", ops.torch_uniform(k * k * c), (k, k, c, self.features))
    y = ops.conv(x, kernel, impl=self.impl, need=need)
    return nn.relu(ops.BatchNorm(affine=True, momentum=self.bn_momentum, name="bn")(y, train))


class OneShot1Cell(nn.Module):
  """A NAS-Bench-1Shot1 one-shot cell (the reference's `Cell` with output weights).

  Vertex 0 is the cell input x; node v = 1 .. N is a choice block: the sum of its candidate
  parents weighted by A["inputs_v"] (vertex 0 enters through the node's own 1x1
  projection of x; a node that does not choose its parents sums them unweighted), then
  sum_k A["mixed_op"][v - 1, k] * op_k of it, op_k in `nb101_cell.OPS` order (maxpool3x3 without
  BatchNorm, conv3x3-bn-relu, conv1x1-bn-relu). The output is
  A["output"][0, 0] * proj_out(x) + concat_v(A["output"][0, v] * node_v), proj_out a 1x1
  conv-bn-relu to N * C channels. The N + 1 projections of x are one 1x1 convolution
  (parameter "proj" [C_in, 2 N C], node v's columns (v - 1) C .. v C, the output's the last
  N C) with one BatchNorm; the parameter count is the reference's.

  Call: x [N, H, W, C_in], A (the alpha pytree of `nb101_cell.alpha_shapes(space)`) ->
  [N, H, W, N * C].
  """
  space: nb101_cell.Space
  channels: int
  impl: str
  bn_momentum: float

  @nn.compact
  def __call__(self, x, A, train, need=Need.ALL_GRADS):
    n, c = self.space.num_nodes, self.channels
    proj = ConvBNReLU(2 * n * c, 1, self.impl, self.bn_momentum, name="proj")(x, train, need)
    states = []
    for v in range(1, n + 1):
      candidates = [proj[..., (v - 1) * c:v * c]] + states
      key = nb101_cell.input_key(v)
      weights = A[key][0] if key in A else jnp.ones(v, x.dtype)
      node_in = sum(w * s for w, s in zip(weights, candidates))
      w_op = A["mixed_op"][v - 1]
      outs = {nb101_cell.MAXPOOL3X3: ops.max_pool_3x3(node_in, 1),
              nb101_cell.CONV3X3: ConvBNReLU(c, 3, self.impl, self.bn_momentum,
                                             name=f"node_{v}_conv3x3")(node_in, train, need),
              nb101_cell.CONV1X1: ConvBNReLU(c, 1, self.impl, self.bn_momentum,
                                             name=f"node_{v}_conv1x1")(node_in, train, need)}
      states.append(sum(w_op[k] * outs[op] for k, op in enumerate(nb101_cell.OPS)))
    w_out = A["output"][0]
    return w_out[0] * proj[..., n * c:] + jnp.concatenate(
        [w_out[v] * s for v, s in enumerate(states, start=1)], axis=-1)


class OneShot1Supernet(MixedPrecision):
  """The NAS-Bench-1Shot1 one-shot model (the reference's optimizers/darts/model_search.py
  `Network`): a 3x3 conv-bn-relu stem to C channels, `layers` cells in three stacks, C
  doubled and the input max-pooled (`max_pool_2x2` with padding 1, the reference's
  downsampling) before cells layers // 3 and
  2 layers // 3, then ReLU, 1x1 convolution to the last stack's C, non-affine BatchNorm,
  global pool, dense. Every cell shares A.

  `apply(variables, x, A, train, need)` as `Supernet`, with A the pytree of
  `nb101_cell.alpha_shapes(space.cell)`: {"mixed_op": [N, 3], "output": [1, N + 1],
  "inputs_v": [1, v] ...}, each row on the simplex.

  Attributes:
    space: the `spaces.OneShot1Space`.
    num_classes: classifier outputs.
    channels: C (16 in the reference).
    layers: cells (9 in the reference, 3 per stack).
    impl: as `Supernet`.
    bn_momentum: Flax-convention momentum of the conv-bn-relu BatchNorms (the reference
      gives PyTorch momentum 0.997, NAS-Bench-101's TensorFlow decay: Flax 0.003).
    head_bn_momentum: that of the BatchNorm before the classifier (PyTorch's default 0.1:
      Flax 0.9).
    dtype: as `Supernet`.
  """
  space: spaces.OneShot1Space
  num_classes: int
  channels: int = 16
  layers: int = 9
  impl: str = "fused"
  bn_momentum: float = 0.003
  head_bn_momentum: float = 0.9
  dtype: str = "float32"

  @property
  def num_cells(self) -> int:
    return self.layers

  def alpha_shapes(self) -> dict[str, tuple[int, int]]:
    """The arrays of alpha (and of A) by key (`nb101_cell.alpha_shapes`)."""
    return self.space.alpha_shapes()

  @nn.compact
  def __call__(self, x, A, train, need=Need.ALL_GRADS):
    c = self.channels
    s = ConvBNReLU(c, 3, self.impl, self.bn_momentum, name="stem")(x, train, need)
    for i in range(self.layers):
      if i in (self.layers // 3, 2 * self.layers // 3):
        c *= 2
        s = max_pool_2x2(s, pad=1)
      s = OneShot1Cell(self.space.cell, c, self.impl, self.bn_momentum, name=f"cell_{i}")(
          s, A, train, need)
    kernel = self.param("post_kernel", ops.torch_uniform(s.shape[-1]), (1, 1, s.shape[-1], c))
    s = ops.conv(nn.relu(s), kernel, impl=self.impl, need=need)
    s = ops.BatchNorm(momentum=self.head_bn_momentum, name="post_bn")(s, train)
    return classifier(self, s, self.num_classes)
