"""Search spaces as data: the candidate operations on every edge of a DARTS-family cell.

A DARTS cell has two inputs (the outputs of the two previous cells), `NUM_NODES`
intermediate nodes and one edge from every earlier state into every node: node i has
2 + i incoming edges, so 14 edges for 4 nodes, enumerated node by node
(node 0: edges 0-1, node 1: edges 2-4, node 2: edges 5-8, node 3: edges 9-13).
States are numbered 0 and 1 for the cell inputs and 2 + i for node i.

A space gives, per cell type ("normal", "reduce"), the tuple of op names on each edge.
Every edge of a space carries the same number of ops, so alpha for a cell type is one
`[num_edges, num_ops]` array.

A space also names its cell *topology* (`Topology`): how many inputs a cell has, how many
intermediate nodes, and which cell types are searched. The DARTS family above is one; the
NAS-Bench-201 space (`nb201`) is the other: a cell with one input (state 0) and 3 nodes,
node i summing edges from every earlier state, so 6 edges (1<-0, 2<-0, 2<-1, 3<-0, 3<-1,
3<-2 in NAS-Bench-201's numbering, where state k is node k and node 3 is the output). Its
reductions are fixed ResNet blocks, so it searches one cell type, the normal cell: the
mixing weights are A = {"normal": [6, 5]}, shared by every cell.

The NAS-Bench-1Shot1 spaces (`1shot1_ss1`, `1shot1_ss2`, `1shot1_ss3`) are NAS-Bench-101
cells, not edge lists: `OneShot1Space` names one of `nb101_cell.SPACES`, whose alpha is a dict
of several arrays (`nb101_cell.alpha_shapes`).
"""
from __future__ import annotations

import dataclasses

from sdarts_jax.model import nb101_cell

NUM_NODES = 4
CELL_TYPES = ("normal", "reduce")


def edge_endpoints(num_nodes: int = NUM_NODES, inputs: int = 2) -> tuple[tuple[int, int], ...]:
  """(source state, target node) of every edge, in edge order: node i (from 0) receives an
  edge from each of the `inputs` cell inputs and from nodes 0..i-1 (state inputs + j)."""
  return tuple((src, node) for node in range(num_nodes) for src in range(inputs + node))


@dataclasses.dataclass(frozen=True)
class Topology:
  """How a cell wires its edges.

  Attributes:
    name: "darts" (two cell inputs, 4 nodes, normal and reduction cells searched) or
      "nb201" (one input, 3 nodes, the normal cell searched; output the last node).
    inputs: cell inputs (states 0 .. inputs - 1).
    num_nodes: intermediate nodes (states inputs .. inputs + num_nodes - 1).
    cell_types: the searched cell types, the keys of alpha and of A.
  """
  name: str
  inputs: int
  num_nodes: int
  cell_types: tuple[str, ...]

  def edges(self) -> tuple[tuple[int, int], ...]:
    """(source state, target node) of every edge, in edge order (`edge_endpoints`)."""
    return edge_endpoints(self.num_nodes, self.inputs)

  @property
  def num_edges(self) -> int:
    return len(self.edges())


DARTS_CELL = Topology("darts", 2, NUM_NODES, CELL_TYPES)
NB201_CELL = Topology("nb201", 1, 3, ("normal",))


NUM_EDGES = len(edge_endpoints())

# Every op a DARTS-family supernet can place on an edge (see `sdarts_jax.model.ops`).
OPS = (
    "none",
    "noise",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "nor_conv_1x1",  # NAS-Bench-201: ReLU, convolution, BatchNorm
    "nor_conv_3x3",
)

DARTS_OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
             "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")

_SHORT = {"skip": "skip_connect", "sep3": "sep_conv_3x3", "sep5": "sep_conv_5x5",
          "dil3": "dil_conv_3x3", "dil5": "dil_conv_5x5", "max": "max_pool_3x3",
          "avg": "avg_pool_3x3"}

# RobustDARTS S1: two ops per edge, chosen per edge and cell type (docs/method.md, section 4).
_S1_NORMAL = ("skip dil3", "skip dil5", "skip dil5", "skip sep3", "skip dil3", "max skip",
              "skip sep3", "skip sep3", "skip dil3", "skip sep3", "max skip", "skip dil3",
              "dil3 dil5", "dil3 dil5")
_S1_REDUCE = ("max avg", "max dil3", "max avg", "max avg", "skip dil5", "max avg", "max sep3",
              "skip dil3", "skip dil5", "max avg", "max avg", "skip dil5", "skip dil5",
              "skip dil5")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """Candidate ops per edge for each cell type.

  Attributes:
    name: the space's name in configs (`config.space`).
    normal: one tuple of op names per edge of the normal cell.
    reduce: the same for the reduction cell (empty when the topology searches none).
    topology: the cell's wiring (`DARTS_CELL` or `NB201_CELL`).
  """
  name: str
  normal: tuple[tuple[str, ...], ...]
  reduce: tuple[tuple[str, ...], ...] = ()
  topology: Topology = DARTS_CELL

  def ops(self, cell_type: str) -> tuple[tuple[str, ...], ...]:
    """The per-edge op lists of `cell_type` ("normal" or "reduce")."""
    return {"normal": self.normal, "reduce": self.reduce}[cell_type]

  @property
  def cell_types(self) -> tuple[str, ...]:
    """The keys of alpha and A: ("normal", "reduce"), or ("normal",) for NAS-Bench-201."""
    return self.topology.cell_types

  @property
  def num_ops(self) -> int:
    """Ops per edge: the second dimension of alpha."""
    return len(self.normal[0])

  def alpha_shape(self) -> tuple[int, int]:
    """Shape of alpha (and of the mixing weights A) for one cell type: [edges, ops]."""
    return (self.topology.num_edges, self.num_ops)

  def alpha_shapes(self) -> dict[str, tuple[int, int]]:
    """The shape of every array of alpha, by key: one [edges, ops] per cell type."""
    return {cell_type: self.alpha_shape() for cell_type in self.cell_types}


@dataclasses.dataclass(frozen=True)
class OneShot1Space:
  """A NAS-Bench-1Shot1 search space under its config name.

  Attributes:
    name: `config.space`, "1shot1_" + the cell space's name.
    cell: the `nb101_cell.Space` (parents per node; the ops are `nb101_cell.OPS` at every node).
  """
  name: str
  cell: nb101_cell.Space

  def alpha_shapes(self) -> dict[str, tuple[int, int]]:
    """The shape of every array of alpha, by key (`nb101_cell.alpha_shapes`)."""
    return nb101_cell.alpha_shapes(self.cell)


def edge_norm_key(cell_type: str, node: int) -> str:
  """The key in alpha (and A) of PC-DARTS's edge-normalisation weights of `node` of
  `cell_type` (`edge_norm_shapes`)."""
  return f"{cell_type}_edges_{node}"


def edge_norm_rows(A, cell_type: str) -> list:
  """The edge-normalisation weights of `cell_type` held in A, one row per node i, [2 + i]
  each (concatenated: one weight per edge, in the order of the cell's 14 edges)."""
  return [A[edge_norm_key(cell_type, node)][0] for node in range(NUM_NODES)]


def edge_norm_shapes(topology: Topology = DARTS_CELL) -> dict[str, tuple[int, int]]:
  """PC-DARTS's edge normalisation (Xu et al. 2020, the betas): per searched cell type and
  node i, one weight per incoming edge, [1, inputs + i] (2, 3, 4, 5 in a DARTS cell), by
  `edge_norm_key`. Each array is a row on the simplex after a softmax, like a row of alpha,
  so the same step trains and perturbs it; the supernet scales edge e's output by its
  weight, and the genotype ranks edges by their op weights times it."""
  return {edge_norm_key(cell_type, node): (1, topology.inputs + node)
          for cell_type in topology.cell_types for node in range(topology.num_nodes)}


def _uniform(name: str, ops: tuple[str, ...]) -> SearchSpace:
  edges = (tuple(ops),) * NUM_EDGES
  return SearchSpace(name, edges, edges)


def _expand(rows: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
  return tuple(tuple(_SHORT[op] for op in row.split()) for row in rows)


# NAS-Bench-201's five ops, in the benchmark's order (the columns of alpha).
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")

# The DARTS family (`DARTS_CELL`).
SPACES: dict[str, SearchSpace] = {
    "s5": _uniform("s5", DARTS_OPS),
    "darts": _uniform("darts", ("none",) + DARTS_OPS),
    "s1": SearchSpace("s1", _expand(_S1_NORMAL), _expand(_S1_REDUCE)),
    "s2": _uniform("s2", ("skip_connect", "sep_conv_3x3")),
    "s3": _uniform("s3", ("none", "skip_connect", "sep_conv_3x3")),
    "s4": _uniform("s4", ("noise", "sep_conv_3x3")),
}

# Benchmark spaces with their own cell topology and network
# (`sdarts_jax.search.run_search.build_model`).
BENCHMARK_SPACES: dict[str, SearchSpace | OneShot1Space] = {
    "nb201": SearchSpace("nb201", (NB201_OPS,) * NB201_CELL.num_edges, topology=NB201_CELL),
    **{f"1shot1_{name}": OneShot1Space(f"1shot1_{name}", cell)
       for name, cell in nb101_cell.SPACES.items()},
}


def validate(space: SearchSpace | OneShot1Space) -> None:
  """Raises ValueError unless `space` is one its topology's supernet can build (a
  `OneShot1Space` always is: its cells are `nb101_cell.SPACES`)."""
  if isinstance(space, OneShot1Space):
    return
  for cell_type in space.cell_types:
    edges = space.ops(cell_type)
    if len(edges) != space.topology.num_edges:
      raise ValueError(f"space {space.name!r}: {cell_type} cell has {len(edges)} edges, "
                       f"a {space.topology.name} cell has {space.topology.num_edges}")
    for i, ops in enumerate(edges):
      unknown = [op for op in ops if op not in OPS]
      if unknown:
        raise ValueError(f"space {space.name!r}: unknown op(s) {unknown} on {cell_type} edge "
                         f"{i}; known ops: {', '.join(OPS)}")
      if len(ops) != space.num_ops or len(set(ops)) != len(ops):
        raise ValueError(f"space {space.name!r}: {cell_type} edge {i} must list "
                         f"{space.num_ops} distinct ops, got {ops}")


def get_space(name: str) -> SearchSpace | OneShot1Space:
  """The registered space called `name`; ValueError naming the known ones otherwise."""
  known = {**SPACES, **BENCHMARK_SPACES}
  if name not in known:
    raise ValueError(f"unknown search space {name!r} (config.space); "
                     f"known spaces: {', '.join(known)}")
  return known[name]
