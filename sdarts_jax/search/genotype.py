"""Discrete cells: derivation from the mixing weights (docs/method.md, section 5), JSON I/O, and the
published genotypes.

A genotype is the JSON object used by `genotypes.json`: per cell type a list of 8
[op, input] pairs (edges 2i and 2i+1 feed node i; input 0 and 1 are the cell inputs,
k >= 2 is node k - 2) and the list of states concatenated into the output.

In the NAS-Bench-201 space a genotype is {"nb201": "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"}:
every edge keeps its best op, `none` included (see `sdarts_jax.tables.nb201`).

In the NAS-Bench-1Shot1 spaces a genotype is {"nb101": {"matrix": [[0, 1, ...], ...],
"ops": ["input", "conv3x3-bn-relu", ..., "output"], "hash": "..."}}: NAS-Bench-101's pruned
adjacency matrix, its op list and its cell hash (`sdarts_jax.model.nb101_cell`).
"""
from __future__ import annotations

import json
import os
from importlib import resources
from typing import Any, Mapping

import numpy as np

from sdarts_jax.model import nb101_cell, spaces
from sdarts_jax.run import metrics
from sdarts_jax.tables import nb201

# Genotype keys of benchmark cells: (benchmark, the config field of its table).
BENCHMARK_CELLS = {"nb201": ("NAS-Bench-201", "config.nb201.table"),
                   "nb101": ("NAS-Bench-101", "config.nasbench101.file")}
Genotype = dict[str, Any]  # {"normal": [[op, input], ...], "normal_concat": [...], "reduce"...}
EDGES_PER_NODE = 2


def derive_cell(weights: np.ndarray, edge_ops) -> list[list]:
  """The discrete cell of one cell type.

  For each node keep the EDGES_PER_NODE incoming edges with the largest max-over-ops weight,
  ignoring `none` (ties go to the lower input, as a stable sort in the reference does); on
  each kept edge take the best op other than `none`, looked up in that edge's own op list.
  weights: [edges, ops] (A = softmax(alpha)); edge_ops: the space's op names per edge.
  Returns [[op, input], ...], EDGES_PER_NODE per node, best edge first.
  """
  weights = np.asarray(weights)
  endpoints = spaces.edge_endpoints()
  cell = []
  for node in range(spaces.NUM_NODES):
    edges = [e for e, (_, target) in enumerate(endpoints) if target == node]
    best_op = {}
    for e in edges:
      candidates = [k for k, op in enumerate(edge_ops[e]) if op != "none"]
      best_op[e] = max(candidates, key=lambda k: (weights[e, k], -k))
    kept = sorted(edges, key=lambda e: -weights[e, best_op[e]])[:EDGES_PER_NODE]
    cell += [[edge_ops[e][best_op[e]], endpoints[e][0]] for e in kept]
  return cell


def derive_nb201(weights: np.ndarray, edge_ops) -> str:
  """The NAS-Bench-201 cell: on every edge the op of largest weight, `none` included (ties
  go to the first op). weights: [6, K]; edge_ops: the op names per edge."""
  weights = np.asarray(weights)
  return nb201.to_string([ops[int(np.argmax(w))] for w, ops in zip(weights, edge_ops)])


def derive_nb101(A: Mapping[str, np.ndarray], cell: nb101_cell.Space) -> dict:
  """The NAS-Bench-101 cell of 1Shot1 mixing weights A (`nb101_cell.derive_cell`):
  {"matrix": [V, V] nested lists, "ops": V names, "hash": `nb101_cell.spec_hash`}."""
  matrix, ops = nb101_cell.derive_cell(cell, A)
  return {"matrix": matrix.tolist(), "ops": ops, "hash": nb101_cell.spec_hash(matrix, ops)}


def edge_weighted(A: Mapping[str, np.ndarray], cell_type: str) -> np.ndarray:
  """A[cell_type] [14, K], each edge's row scaled by its PC-DARTS edge weight when A holds
  them (`spaces.edge_norm_shapes`), as PC-DARTS derives its cell; else as it is."""
  weights = np.asarray(A[cell_type])
  if spaces.edge_norm_key(cell_type, 0) not in A:
    return weights
  edge = np.concatenate([np.asarray(r) for r in spaces.edge_norm_rows(A, cell_type)])
  return weights * edge[:, None]


def derive(A: Mapping[str, np.ndarray],
           space: spaces.SearchSpace | spaces.OneShot1Space) -> Genotype:
  """Genotype of mixing weights A = {"normal": [14, K], "reduce": [14, K]} (with PC-DARTS's
  edge weights, if A holds them, multiplied in: `edge_weighted`), of A = {"normal": [6, K]}
  in the NAS-Bench-201 space ({"nb201": cell string}), or of a 1Shot1 space's A
  ({"nb101": `derive_nb101`})."""
  if isinstance(space, spaces.OneShot1Space):
    return {"nb101": derive_nb101(A, space.cell)}
  if space.topology == spaces.NB201_CELL:
    return {"nb201": derive_nb201(A["normal"], space.ops("normal"))}
  concat = list(range(2, 2 + spaces.NUM_NODES))
  genotype: Genotype = {}
  for cell_type in spaces.CELL_TYPES:
    genotype[cell_type] = derive_cell(edge_weighted(A, cell_type), space.ops(cell_type))
    genotype[f"{cell_type}_concat"] = concat
  return genotype


def save(genotype: Genotype, path: str) -> None:
  metrics.write_json(path, genotype)


def load(path: str) -> Genotype:
  """ValueError naming `path` when it is not JSON or not a genotype."""
  return validate(metrics.read_json(path), path)


def published() -> dict[str, Genotype]:
  """The published cells by name (SDARTS reference code and the DARTS paper)."""
  text = resources.files("sdarts_jax.search").joinpath("genotypes.json").read_text()
  return json.loads(text)["genotypes"]


def validate(genotype: Genotype, where: str) -> Genotype:
  """Raise ValueError naming `where` unless `genotype` is a well-formed DARTS cell pair or
  NAS-Bench-201 or NAS-Bench-101 cell."""
  if isinstance(genotype, dict) and "nb101" in genotype:
    cell = genotype["nb101"]
    try:
      if not (isinstance(cell, dict) and nb101_cell.spec_hash(np.asarray(cell["matrix"]),
                                                        list(cell["ops"])) == cell["hash"]):
        raise ValueError("the hash does not match the matrix and ops")
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{where}: 'nb101' must be {{\"matrix\", \"ops\", \"hash\"}} of a "
                       f"NAS-Bench-101 cell ({e})") from None
    return genotype
  if isinstance(genotype, dict) and "nb201" in genotype:
    try:
      nb201.parse(genotype["nb201"])
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    return genotype
  for cell_type in spaces.CELL_TYPES:
    cell = genotype.get(cell_type)
    if not isinstance(cell, list) or len(cell) != EDGES_PER_NODE * spaces.NUM_NODES:
      raise ValueError(f"{where}: {cell_type!r} must list {EDGES_PER_NODE * spaces.NUM_NODES} "
                       f"[op, input] pairs")
    for i, pair in enumerate(cell):
      op, src = pair
      node = i // EDGES_PER_NODE
      if op not in spaces.OPS or op == "none" or not 0 <= src < 2 + node:
        raise ValueError(f"{where}: {cell_type} edge {i} = {pair} is not a valid [op, input] "
                         f"for node {node}")
  return genotype


def resolve(name_or_path: str) -> Genotype:
  """A published genotype by name, or a genotype JSON file written by a search."""
  table = published()
  if name_or_path in table:
    return table[name_or_path]
  if os.path.isfile(name_or_path):
    genotype = load(name_or_path)
    for key, (benchmark, field) in BENCHMARK_CELLS.items():
      if key in genotype:
        raise ValueError(f"{name_or_path} holds a {benchmark} cell; its accuracy comes from the "
                         f"benchmark table ({field}), not from training it here")
    return genotype
  raise ValueError(f"unknown genotype {name_or_path!r}: neither a file nor a published name "
                   f"({', '.join(sorted(table))})")
