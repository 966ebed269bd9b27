"""Search spaces as data: the candidate operations on every edge of a DARTS-family cell.

A DARTS cell has two inputs (the outputs of the two previous cells), `NUM_NODES`
intermediate nodes and one edge from every earlier state into every node: node i has
2 + i incoming edges, so 14 edges for 4 nodes, enumerated node by node
(node 0: edges 0-1, node 1: edges 2-4, node 2: edges 5-8, node 3: edges 9-13).
States are numbered 0 and 1 for the cell inputs and 2 + i for node i.

A space gives, per cell type ("normal", "reduce"), the tuple of op names on each edge.
Every edge of a space carries the same number of ops, so alpha for a cell type is one
`[num_edges, num_ops]` array.
"""
from __future__ import annotations

import dataclasses

NUM_NODES = 4
CELL_TYPES = ("normal", "reduce")


def edge_endpoints(num_nodes: int = NUM_NODES) -> tuple[tuple[int, int], ...]:
  """(source state, target node) of every edge, in edge order."""
  return tuple((src, node) for node in range(num_nodes) for src in range(2 + node))


NUM_EDGES = len(edge_endpoints())

# Every op a DARTS-family supernet can place on an edge (see `sdarts_jax.ops`).
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
)

DARTS_OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
             "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")

_SHORT = {"skip": "skip_connect", "sep3": "sep_conv_3x3", "sep5": "sep_conv_5x5",
          "dil3": "dil_conv_3x3", "dil5": "dil_conv_5x5", "max": "max_pool_3x3",
          "avg": "avg_pool_3x3"}

# RobustDARTS S1: two ops per edge, chosen per edge and cell type (SPEC section 3).
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
    normal: `NUM_EDGES` tuples of op names for the normal cell.
    reduce: the same for the reduction cell.
  """
  name: str
  normal: tuple[tuple[str, ...], ...]
  reduce: tuple[tuple[str, ...], ...]

  def ops(self, cell_type: str) -> tuple[tuple[str, ...], ...]:
    """The per-edge op lists of `cell_type` ("normal" or "reduce")."""
    return {"normal": self.normal, "reduce": self.reduce}[cell_type]

  @property
  def num_ops(self) -> int:
    """Ops per edge: the second dimension of alpha."""
    return len(self.normal[0])

  def alpha_shape(self) -> tuple[int, int]:
    """Shape of alpha (and of the mixing weights A) for one cell type: [edges, ops]."""
    return (NUM_EDGES, self.num_ops)


def _uniform(name: str, ops: tuple[str, ...]) -> SearchSpace:
  edges = (tuple(ops),) * NUM_EDGES
  return SearchSpace(name, edges, edges)


def _expand(rows: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
  return tuple(tuple(_SHORT[op] for op in row.split()) for row in rows)


SPACES: dict[str, SearchSpace] = {
    "s5": _uniform("s5", DARTS_OPS),
    "darts": _uniform("darts", ("none",) + DARTS_OPS),
    "s1": SearchSpace("s1", _expand(_S1_NORMAL), _expand(_S1_REDUCE)),
    "s2": _uniform("s2", ("skip_connect", "sep_conv_3x3")),
    "s3": _uniform("s3", ("none", "skip_connect", "sep_conv_3x3")),
    "s4": _uniform("s4", ("noise", "sep_conv_3x3")),
}


def validate(space: SearchSpace) -> None:
  """Raises ValueError unless `space` is one the DARTS supernet can build."""
  for cell_type in CELL_TYPES:
    edges = space.ops(cell_type)
    if len(edges) != NUM_EDGES:
      raise ValueError(f"space {space.name!r}: {cell_type} cell has {len(edges)} edges, "
                       f"a DARTS cell has {NUM_EDGES}")
    for i, ops in enumerate(edges):
      unknown = [op for op in ops if op not in OPS]
      if unknown:
        raise ValueError(f"space {space.name!r}: unknown op(s) {unknown} on {cell_type} edge "
                         f"{i}; known ops: {', '.join(OPS)}")
      if len(ops) != space.num_ops or len(set(ops)) != len(ops):
        raise ValueError(f"space {space.name!r}: {cell_type} edge {i} must list "
                         f"{space.num_ops} distinct ops, got {ops}")


def get_space(name: str) -> SearchSpace:
  """The registered space called `name`; ValueError naming the known ones otherwise."""
  if name not in SPACES:
    raise ValueError(f"unknown search space {name!r} (config.space); "
                     f"known spaces: {', '.join(SPACES)}")
  return SPACES[name]
