"""NAS-Bench-1Shot1's search spaces as data, the discrete NAS-Bench-101 cell a search derives
from alpha, and NAS-Bench-101's cell hash.

A NAS-Bench-101 cell is a DAG on at most 7 vertices: vertex 0 is the cell input, the last
vertex the output, and every vertex between them applies one op (`OPS`) to the sum of its
inputs. A 1Shot1 space (`Space`) fixes how many intermediate nodes a cell has (vertices
1..N; the output is vertex N + 1) and how many parents each of them, and the output, has.

alpha, for a space with N nodes, is a dict of arrays (shapes from `alpha_shapes`):
  "mixed_op": [N, 3]    the op of node v is row v - 1, columns in `OPS` order;
  "output":   [1, N+1]  the output's candidate parents: column 0 the cell input, column v
                        node v;
  "inputs_v": [1, v]    for each node v in `Space.choice_nodes` (v picks fewer parents than
                        the v vertices before it): column u weighs vertex u as its parent.
This is the reference's `_initialize_alphas` (optimizers/darts/model_search.py), whose list
[alphas_mixed_op, alphas_output, *alphas_inputs] holds the same arrays in this order.

NAS-Bench-101's table of accuracies, filed under `spec_hash`, is read by
`sdarts_jax.tables.nb101`.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

INPUT, OUTPUT = "input", "output"
CONV3X3, CONV1X1, MAXPOOL3X3 = "conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3"
OPS = (MAXPOOL3X3, CONV3X3, CONV1X1)  # the columns of alpha["mixed_op"] (reference PRIMITIVES)
HASH_OPS = (CONV3X3, CONV1X1, MAXPOOL3X3)  # NAS-Bench-101's available_ops: hash labels 0, 1, 2


# ---------------------------------------------------------------- search spaces

@dataclasses.dataclass(frozen=True)
class Space:
  """A NAS-Bench-1Shot1 search space.

  Attributes:
    name: "ss1", "ss2" or "ss3".
    parents: how many parents vertex v = 1 .. N + 1 has (index v - 1); the last entry is
      the output's.
  """
  name: str
  parents: tuple[int, ...]

  @property
  def num_nodes(self) -> int:
    """N, the intermediate nodes (vertices 1..N)."""
    return len(self.parents) - 1

  @property
  def choice_nodes(self) -> tuple[int, ...]:
    """The nodes v that choose their parents among vertices 0..v-1 (fewer parents than
    candidates), each with an alpha "inputs_v" of shape [1, v]; the other nodes take all
    v candidates."""
    return tuple(v for v in range(1, self.num_nodes + 1) if self.parents[v - 1] < v)


SPACES = {space.name: space for space in (Space("ss1", (1, 2, 2, 2, 2)),
                                           Space("ss2", (1, 1, 2, 2, 3)),
                                           Space("ss3", (1, 1, 1, 2, 2, 2)))}


def get_space(name: str) -> Space:
  """The 1Shot1 space called `name`; ValueError naming the known ones."""
  if name not in SPACES:
    raise ValueError(f"unknown NAS-Bench-1Shot1 space {name!r}: expected one of "
                     f"{', '.join(SPACES)}")
  return SPACES[name]


def input_key(node: int) -> str:
  """The alpha key of node `node`'s parent weights."""
  return f"inputs_{node}"


def alpha_shapes(space: Space) -> dict[str, tuple[int, int]]:
  """The shape of every array of alpha (see the module docstring): for ss1
  {"mixed_op": (4, 3), "output": (1, 5), "inputs_3": (1, 3), "inputs_4": (1, 4)}."""
  shapes = {"mixed_op": (space.num_nodes, len(OPS)), "output": (1, space.num_nodes + 1)}
  shapes.update({input_key(v): (1, v) for v in space.choice_nodes})
  return shapes


# ---------------------------------------------------------------- the discrete cell

def top_k(weights: np.ndarray, k: int) -> tuple[int, ...]:
  """The indices of the k largest of weights [1, n], ascending; ties go to the lower
  index. (The reference takes the top k of softmax(weights), which orders them alike.)"""
  order = np.argsort(-np.asarray(weights, np.float64)[0], kind="stable")
  return tuple(sorted(int(i) for i in order[:k]))


def cell_parents(space: Space, alpha: dict) -> tuple[tuple[int, ...], ...]:
  """The parents of vertex v = 1 .. N + 1 (index v - 1): the top `space.parents` of the
  node's alpha, all of 0..v-1 for a node that does not choose."""
  chosen = {v: top_k(alpha[input_key(v)], space.parents[v - 1]) for v in space.choice_nodes}
  nodes = tuple(chosen.get(v, tuple(range(v))) for v in range(1, space.num_nodes + 1))
  return nodes + (top_k(alpha["output"], space.parents[-1]),)


def check_alpha(space: Space, alpha: dict) -> None:
  """ValueError unless alpha has exactly the keys and shapes of `alpha_shapes(space)`."""
  want = alpha_shapes(space)
  got = {key: tuple(np.shape(value)) for key, value in alpha.items()}
  if got != want:
    raise ValueError(f"alpha for NAS-Bench-1Shot1 {space.name} must have the arrays {want}, "
                     f"got {got}")


def prune(matrix: np.ndarray, ops: list[str]) -> tuple[np.ndarray, list[str]]:
  """NAS-Bench-101's pruning (ModelSpec._prune): drop every vertex that is not on a path
  from the input (vertex 0) to the output (the last vertex).

  Args:
    matrix: [V, V] upper-triangular 0/1 adjacency, matrix[u, v] = 1 for an edge u -> v.
    ops: V labels.
  Returns:
    The [V', V'] matrix and V' ops of the remaining vertices, in their order.
  Raises:
    ValueError when the output cannot be reached from the input.
  """
  matrix = np.asarray(matrix)
  reach_in, reach_out = _reachable(matrix, 0), _reachable(matrix.T, len(matrix) - 1)
  keep = [v for v in range(len(matrix)) if v in reach_in and v in reach_out]
  if len(keep) < 2:
    raise ValueError("the cell's output is not reachable from its input")
  return matrix[np.ix_(keep, keep)].astype(np.int64), [ops[v] for v in keep]


def _reachable(matrix: np.ndarray, start: int) -> set[int]:
  """The vertices reachable from `start` along the edges of matrix [V, V]."""
  seen, frontier = {start}, [start]
  while frontier:
    for v in np.flatnonzero(matrix[frontier.pop()]):
      if int(v) not in seen:
        seen.add(int(v))
        frontier.append(int(v))
  return seen


def derive_cell(space: Space, alpha: dict) -> tuple[np.ndarray, list[str]]:
  """The discrete cell a 1Shot1 search ends with, as the reference derives it
  (nasbench_analysis/eval_darts_one_shot_model_in_nasbench.py).

  Node v's op is the argmax of alpha["mixed_op"][v - 1]; its parents those of
  `cell_parents`; the output's parents the top `space.parents[-1]` of alpha["output"]
  (column 0 the input edge). The reference then keeps only the output's ancestors
  (`_create_adjacency_matrix`, a walk back from the output; ss1 and ss2 also get an
  unconnected dummy vertex 5 to fill NAS-Bench-101's 7) and NAS-Bench-101 prunes what is
  not on an input -> output path; every ancestor of the output is reached from the input
  here (each node has a parent before it), so this is `prune` of the full parent graph.

  Args:
    alpha: the arrays of `alpha_shapes(space)`, numpy or jax.
  Returns:
    matrix [V, V] int upper triangular (V <= N + 2) and V ops, 'input' first and
    'output' last.
  """
  check_alpha(space, alpha)
  size = space.num_nodes + 2
  matrix = np.zeros((size, size), np.int64)
  for v, parents in enumerate(cell_parents(space, alpha), start=1):
    matrix[list(parents), v] = 1
  ops = [INPUT] + [OPS[i] for i in np.argmax(np.asarray(alpha["mixed_op"]), axis=1)] + [OUTPUT]
  return prune(matrix, ops)


# ---------------------------------------------------------------- the cell hash

def graph_hash(matrix: np.ndarray, labels: list[int]) -> str:
  """NAS-Bench-101's isomorphism-invariant hash (graph_util.hash_module).

  Each vertex starts from the md5 of str((out-degree, in-degree, label)); then V times,
  every vertex's hash becomes the md5 of its in-neighbours' hashes sorted and joined, '|',
  its out-neighbours' likewise, '|', its own. The result is the md5 of str() of the sorted
  final hashes (a Python list of str).

  Args:
    matrix: [V, V] 0/1 adjacency.
    labels: V ints (NAS-Bench-101: -1 input, -2 output, an index into `HASH_OPS`).
  """
  matrix = np.asarray(matrix)
  out_degree, in_degree = matrix.sum(axis=1).tolist(), matrix.sum(axis=0).tolist()
  hashes = [md5(str((o, i, int(label)))) for o, i, label in zip(out_degree, in_degree, labels)]
  for _ in range(len(matrix)):
    hashes = [md5("".join(sorted(hashes[u] for u in np.flatnonzero(matrix[:, v]))) + "|" +
                   "".join(sorted(hashes[w] for w in np.flatnonzero(matrix[v]))) + "|" +
                   hashes[v]) for v in range(len(matrix))]
  return md5(str(sorted(hashes)))


def md5(text: str) -> str:
  """The hex md5 digest of `text` (UTF-8)."""
  return hashlib.md5(text.encode("utf-8")).hexdigest()


def spec_hash(matrix: np.ndarray, ops: list[str]) -> str:
  """The hash NAS-Bench-101 files the cell (matrix [V, V], V ops) under: that of its pruned
  graph (`prune`), ops labelled by their index in `HASH_OPS`. Isomorphic cells hash alike.
  ValueError unless the matrix is square, upper triangular and 0/1, and ops are 'input',
  ops of `HASH_OPS`, 'output'."""
  matrix = np.asarray(matrix)
  if (matrix.ndim != 2 or matrix.shape != (len(ops), len(ops)) or np.any(np.tril(matrix))
      or not np.isin(matrix, (0, 1)).all()):
    raise ValueError(f"a NAS-Bench-101 cell needs a square, upper-triangular 0/1 matrix "
                     f"with one row per op; got shape {matrix.shape} for {len(ops)} ops")
  if len(ops) < 2 or ops[0] != INPUT or ops[-1] != OUTPUT or not set(ops[1:-1]) <= set(HASH_OPS):
    raise ValueError(f"a NAS-Bench-101 cell's ops are {INPUT!r}, ops of {HASH_OPS}, "
                     f"{OUTPUT!r}; got {ops}")
  matrix, ops = prune(matrix, ops)
  return graph_hash(matrix, [-1] + [HASH_OPS.index(op) for op in ops[1:-1]] + [-2])
