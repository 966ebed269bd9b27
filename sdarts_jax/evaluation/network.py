"""Evaluation networks: a discrete cell (a genotype) stacked and trained from scratch
(docs/method.md, section 7), as the DARTS reference's `NetworkCIFAR` and `NetworkImageNet`.

`Network.apply(variables, x, train, drop_prob)` maps images x [N, H, W, 3] to
(logits [N, classes], auxiliary logits [N, classes] or None). The auxiliary head runs only
in training (`train=True`) and only when `auxiliary` is set; in training, pass
`rngs=network.rngs(key)` and `mutable=["batch_stats"]`. Genotypes with the `noise` op draw
Gaussian noise in training and inference alike, as the reference's NoiseOp, so inference
needs `rngs=network.rngs(key)` as well. BatchNorm is affine everywhere.

Cells are unrolled: running the identical cells of a stage with `nn.scan` compiled no
faster at 20 cells on XLA:CPU and stepped 7% slower (README, "Evaluation").
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sdarts_jax.model import ops, spaces

AUX_HIDDEN = 128   # the auxiliary head's 1x1 convolution
AUX_FEATURES = 768  # its 2x2 convolution
AUX_POOL = 5        # its average-pool window
STEMS = ("cifar", "imagenet")


@dataclasses.dataclass(frozen=True)
class CellSpec:
  """One cell type of a genotype, hashable (a Flax module attribute).

  edges: (op, input) per edge; edges 2i and 2i+1 feed node i; input 0 and 1 are the cell
    inputs, k >= 2 is node k - 2. concat: the states concatenated into the output.
  """
  edges: tuple[tuple[str, int], ...]
  concat: tuple[int, ...]

  @property
  def num_nodes(self) -> int:
    return len(self.edges) // 2


def cell_specs(genotype) -> dict[str, CellSpec]:
  """{"normal": CellSpec, "reduce": CellSpec} of a genotype (see `sdarts_jax.search.genotype`)."""
  return {t: CellSpec(tuple((op, int(src)) for op, src in genotype[t]),
                      tuple(int(i) for i in genotype[f"{t}_concat"]))
          for t in spaces.CELL_TYPES}


def drop_path(key: jax.Array, x: jax.Array, drop_prob) -> jax.Array:
  """Zero whole examples with probability drop_prob and scale the rest by 1 / keep.

  x: [N, ...]; drop_prob: a scalar in [0, 1) (may be traced). One Bernoulli(keep) draw
  per example, as the reference's `drop_path`, so E[output] = x.
  """
  keep = 1.0 - drop_prob
  mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, 0.0)


def is_identity(op: str, stride: int) -> bool:
  """Identity edges (skip_connect at stride 1) are exempt from drop-path."""
  return op == "skip_connect" and stride == 1


class Cell(nn.Module):
  """A discrete cell: s0 [N, H0, W0, C0] and s1 [N, H, W, C1], the outputs of the two
  previous cells, -> [N, H', W', len(concat) * channels], H' = H / 2 in a reduction cell.

  Inputs are preprocessed to `channels` (FactorizedReduce on s0 after a reduction cell,
  else ReLU-Conv1x1-BN); node i is the sum of its two edges' ops, each followed in
  training by drop-path unless it is an identity. Edges that leave the same state with
  the same op are computed together (one convolution for all of them, `ops.EdgeOp`).
  """
  spec: CellSpec
  channels: int
  reduction: bool
  reduction_prev: bool
  impl: str
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, s0, s1, train: bool, drop_prob):
    c, m = self.channels, self.bn_momentum
    if self.reduction_prev:
      x0 = ops.FactorizedReduce(c, 1, True, m, name="pre_0")(s0, train)[:, :, :, 0]
    else:
      x0 = ops.ReLUConvBN(c, True, m, name="pre_0")(s0, train)
    cell_states = [x0, ops.ReLUConvBN(c, True, m, name="pre_1")(s1, train)]
    edges = self.spec.edges
    terms = [[] for _ in range(self.spec.num_nodes)]
    for src in range(1 + self.spec.num_nodes):
      stride = 2 if self.reduction and src < 2 else 1
      leaving = [e for e, (_, s) in enumerate(edges) if s == src]
      for op in dict.fromkeys(edges[e][0] for e in leaving):
        group = [e for e in leaving if edges[e][0] == op]
        out = ops.EdgeOp(op, len(group), stride, self.impl, m, affine=True, pool_bn=False,
                         name=f"from_{src}_{op}")(cell_states[src], train)
        for slot, e in enumerate(group):
          h = out[:, :, :, min(slot, out.shape[3] - 1)]
          if train and not is_identity(op, stride):
            h = drop_path(self.make_rng("drop_path"), h, drop_prob)
          terms[e // 2].append(h)
      if src >= 1:  # node src - 1 has received both its edges
        cell_states.append(sum(terms[src - 1]))
    return jnp.concatenate([cell_states[i] for i in self.spec.concat], axis=-1)


class AuxiliaryHead(nn.Module):
  """ReLU, AvgPool(5, stride, no padding), Conv1x1 -> 128, BN, ReLU, Conv2x2 -> 768,
  [BN,] ReLU, Linear. x: [N, H, W, C] (8x8 on CIFAR, 7x7 on ImageNet) -> [N, classes].

  last_bn: the BN after the 768-channel conv (CIFAR head); the DARTS ImageNet head
  omits it (a typo kept "for consistency with the experiments in the paper").
  """
  num_classes: int
  pool_stride: int
  last_bn: bool
  impl: str
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool):
    if (min(x.shape[1:3]) - AUX_POOL) // self.pool_stride + 1 < 2:
      raise ValueError(
          f"the auxiliary head needs a 2x2 map after its {AUX_POOL}x{AUX_POOL} pool (stride "
          f"{self.pool_stride}), but cell 2*layers//3 outputs {x.shape[1]}x{x.shape[2]}: use "
          "larger images (32 px CIFAR, 224 px ImageNet) or config.model.auxiliary=False")
    bn = lambda name: ops.BatchNorm(True, self.bn_momentum, name=name)
    x = lax.reduce_window(nn.relu(x), 0.0, lax.add, (1, AUX_POOL, AUX_POOL, 1),
                          (1, self.pool_stride, self.pool_stride, 1), "VALID") / AUX_POOL ** 2
    c = x.shape[-1]
    k1 = self.param("kernel_1", ops.torch_uniform(c), (c, AUX_HIDDEN))
    x = nn.relu(bn("bn_1")(jnp.einsum("nhwc,cd->nhwd", x, k1), train))
    k2 = self.param("kernel_2", ops.torch_uniform(4 * AUX_HIDDEN), (2, 2, AUX_HIDDEN, AUX_FEATURES))
    x = ops.conv(x, k2, impl=self.impl)
    if self.last_bn:
      x = bn("bn_2")(x, train)
    x = nn.relu(x).reshape(x.shape[0], -1)
    return _linear(self, x, self.num_classes)


def _linear(module: nn.Module, x: jax.Array, features: int) -> jax.Array:
  """PyTorch's nn.Linear (weight and bias U(+-1/sqrt(fan_in))) inside `module`."""
  fan_in = x.shape[-1]
  kernel = module.param("classifier_kernel", ops.torch_uniform(fan_in), (fan_in, features))
  bias = module.param("classifier_bias", ops.torch_uniform(fan_in), (features,))
  return x @ kernel + bias


class Network(nn.Module):
  """Stem, `layers` cells (reduction at layers//3 and 2*layers//3), global average pool,
  linear classifier; an auxiliary head on the output of cell 2*layers//3.

  Attributes:
    normal, reduce: the genotype's cells (`cell_specs`).
    num_classes: classifier outputs.
    channels: initial channels C (36 CIFAR, 48 ImageNet).
    layers: number of cells (20 CIFAR, 14 ImageNet).
    stem: "cifar" (Conv3x3 3 -> 3C, BN) or "imagenet" (stem0: Conv3x3 s2 -> C/2, BN,
      ReLU, Conv3x3 s2 -> C, BN; stem1: ReLU, Conv3x3 s2, BN; the first cell then sees
      a reduction before it).
    auxiliary: build the auxiliary head (its output is returned in training only).
    stem_multiplier: CIFAR stem width in units of C.
    impl: convolution implementation, one of `ops.IMPLS`.
    bn_momentum: Flax-convention BatchNorm momentum (0.9 = PyTorch 0.1).
  """
  normal: CellSpec
  reduce: CellSpec
  num_classes: int
  channels: int = 36
  layers: int = 20
  stem: str = "cifar"
  auxiliary: bool = True
  stem_multiplier: int = 3
  impl: str = "fused"
  bn_momentum: float = 0.9

  def reduction_cells(self) -> tuple[int, ...]:
    return (self.layers // 3, 2 * self.layers // 3)

  def aux_cell(self) -> int:
    """The cell whose output feeds the auxiliary head."""
    return 2 * self.layers // 3

  @nn.compact
  def __call__(self, x, train: bool, drop_prob=0.0):
    s0, s1 = self._stem(x, train)
    c, reduction_prev, aux = self.channels, self.stem == "imagenet", None
    for i in range(self.layers):
      reduction = i in self.reduction_cells()
      c = 2 * c if reduction else c
      cell = Cell(self.reduce if reduction else self.normal, c, reduction, reduction_prev,
                  self.impl, self.bn_momentum, name=f"cell_{i}")
      s0, s1 = s1, cell(s0, s1, train, drop_prob)
      if self.auxiliary and i == self.aux_cell():
        head = AuxiliaryHead(self.num_classes, 3 if self.stem == "cifar" else 2,
                             self.stem == "cifar", self.impl, self.bn_momentum, name="aux_head")
        aux = head(s1, train) if train else None
      reduction_prev = reduction
    return _linear(self, jnp.mean(s1, axis=(1, 2)), self.num_classes), aux

  def _stem(self, x, train: bool):
    """(s0, s1): the first two cell inputs."""
    bn = lambda name: ops.BatchNorm(True, self.bn_momentum, name=name)
    conv = lambda name, y, features, stride: ops.conv(
        y, self.param(name, ops.torch_uniform(9 * y.shape[-1]), (3, 3, y.shape[-1], features)),
        stride, impl=self.impl)
    if self.stem == "cifar":
      s = bn("stem_bn")(conv("stem_kernel", x, self.stem_multiplier * self.channels, 1), train)
      return s, s
    if self.stem != "imagenet":
      raise ValueError(f"unknown stem {self.stem!r}; known: {', '.join(STEMS)}")
    c = self.channels
    s = nn.relu(bn("stem0_bn_1")(conv("stem0_kernel_1", x, c // 2, 2), train))
    s0 = bn("stem0_bn_2")(conv("stem0_kernel_2", s, c, 2), train)
    s1 = bn("stem1_bn")(conv("stem1_kernel", nn.relu(s0), c, 2), train)
    return s0, s1


def build(genotype, num_classes: int, channels: int, layers: int, stem: str,
          auxiliary: bool, impl: str, bn_momentum: float = 0.9) -> Network:
  """A Network for a genotype dict (`sdarts_jax.search.genotype.resolve`)."""
  specs = cell_specs(genotype)
  return Network(specs["normal"], specs["reduce"], num_classes, channels, layers, stem,
                 auxiliary, impl=impl, bn_momentum=bn_momentum)


def rngs(key: jax.Array) -> dict[str, jax.Array]:
  """The random streams `Network.apply` draws from: drop-path masks and the `noise` op."""
  k_drop, k_noise = jax.random.split(key)
  return {"drop_path": k_drop, "noise": k_noise}


def init(model: Network, key: jax.Array, image_shape) -> dict:
  """{"params", "batch_stats"} at initialisation (auxiliary head included).
  image_shape: (H, W, 3)."""
  k_params, k_rngs = jax.random.split(key)
  x = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  return model.init({"params": k_params, **rngs(k_rngs)}, x, True, 0.0)


def count_params(params, include_aux: bool = False) -> int:
  """Number of parameters, without the auxiliary head unless include_aux (papers report
  it without, as the reference's `count_parameters_in_MB`)."""
  if not include_aux:
    params = {k: v for k, v in params.items() if k != "aux_head"}
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))
