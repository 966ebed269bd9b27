"""NAS-Bench-1Shot1 in the search: every cell of a space, and the NAS-Bench-101 score of the
cell a search derives each epoch, with its test regret.

A space's cells are those NAS-Bench-1Shot1 evaluates (the reference's
`generate_search_space_without_loose_ends` in nasbench_analysis/search_spaces): every
choice of parents per node and for the output, pruned to the vertices on an input ->
output path, with every op at each remaining node. They are enumerated per distinct pruned
graph, then hashed (`nb101_cell.spec_hash`): 2,685 distinct cells in ss1, 7,773 in ss2 and
55,854 in ss3. Hashing ss3 takes minutes (README), so the hashes are cached
(`space_hashes`).

The test regret is the reference's (NAS-Bench-1Shot1's experiments/analysis
experiment_database.py): the cell's mean test error minus the space's lowest test error.
The reference takes that lowest error from a single training run (the constants
`test_min_error` of search_space_1/2/3.py: 0.05449, 0.05759, 0.05339); `nb101.NB101Table`
holds only means over the runs, so here it is the lowest *mean* test error of the space's
cells, and the regret is smaller than the reference's by the gap between the best cell's
mean and its best run.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import pathlib
import tempfile

import numpy as np

from sdarts_jax.model import nb101_cell, spaces
from sdarts_jax.tables import nb101

CELLS_VERSION = 1  # bump when the enumeration changes: cached hash lists are keyed by it


def space_graphs(space: nb101_cell.Space) -> list[tuple[np.ndarray, list[int]]]:
  """Every distinct pruned graph of the space: (matrix [V, V], the V kept vertices of the
  unpruned cell, 0 the input and N + 1 the output), over every choice of parents."""
  n = space.num_nodes
  choices = [itertools.combinations(range(v), space.parents[v - 1]) for v in range(1, n + 2)]
  graphs = {}
  for parents in itertools.product(*choices):
    matrix = np.zeros((n + 2, n + 2), np.int64)
    for v, chosen in enumerate(parents, start=1):
      matrix[list(chosen), v] = 1
    pruned, kept = nb101_cell.prune(matrix, list(range(n + 2)))
    graphs.setdefault(pruned.tobytes() + bytes(kept), (pruned, kept))
  return list(graphs.values())


def space_cells(space: nb101_cell.Space):
  """(matrix [V, V], V ops) of every cell of the space: each pruned graph of
  `space_graphs` with every op at each of its nodes (isomorphic cells may repeat)."""
  for matrix, kept in space_graphs(space):
    for ops in itertools.product(nb101_cell.OPS, repeat=len(kept) - 2):
      yield matrix, [nb101_cell.INPUT, *ops, nb101_cell.OUTPUT]


def space_hashes(space: nb101_cell.Space, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
  """The sorted distinct `nb101_cell.spec_hash`es of the space's cells, [cells] str; read from
  `cache_dir` (default: the user cache, $XDG_CACHE_HOME/sdarts_jax/nb101) when computed
  before, else computed and written there (a read-only cache is skipped)."""
  if cache_dir is None:
    from sdarts_jax.data.download import cache_root  # pulls in jax: only when a run asks
    cache_dir = cache_root() / "nb101"
  path = pathlib.Path(cache_dir) / f"1shot1_{space.name}_cells_v{CELLS_VERSION}.npy"
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError):
    pass
  hashes = np.array(sorted({nb101_cell.spec_hash(m, ops) for m, ops in space_cells(space)}))
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
      np.save(f, hashes)
    os.replace(f.name, path)
  except OSError:
    pass
  return hashes


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """NAS-Bench-101's scores for the cells of one 1Shot1 space.

  Attributes:
    table: the NAS-Bench-101 table.
    space: the cell space.
    best_hash: the space's cell with the highest mean test accuracy.
    best_test: that accuracy (a fraction).
    cells: how many distinct cells the space has.
  """
  table: nb101.NB101Table
  space: nb101_cell.Space
  best_hash: str
  best_test: float
  cells: int

  @classmethod
  def load(cls, path: str | os.PathLike, space: nb101_cell.Space,
           cache_dir: str | os.PathLike | None = None) -> "Benchmark":
    """The table of `path` (`nb101.NB101Table.load`) and the space's best cell. ValueError
    naming the file when it cannot be read or lacks a cell of the space (it is then not
    NAS-Bench-101's full table)."""
    table = nb101.NB101Table.load(path)
    hashes = space_hashes(space, cache_dir)
    rows = np.searchsorted(table.hashes, hashes)
    found = (rows < len(table.hashes)) & (table.hashes[np.minimum(rows, len(table) - 1)] == hashes)
    if not found.all():
      raise ValueError(f"{path} lacks {int((~found).sum())} of the {len(hashes)} cells of "
                       f"NAS-Bench-1Shot1 {space.name} (e.g. {hashes[~found][0]}): use "
                       f"NAS-Bench-101's full nasbench_only108.tfrecord")
    best = rows[np.argmax(table.test[rows])]
    return cls(table, space, str(table.hashes[best]), float(table.test[best]), len(hashes))

  def query(self, cell: dict) -> dict[str, float]:
    """The scores of a derived cell {"matrix": [V, V], "ops": [V], ...} (`genotype.derive`):
    nb101_validation_accuracy and nb101_test_accuracy (means over its runs, fractions),
    nb101_test_regret (the space's best mean test accuracy minus the cell's) and
    nb101_best_test_accuracy."""
    validation, test = self.table.query(np.asarray(cell["matrix"]), list(cell["ops"]))
    return {"nb101_validation_accuracy": validation, "nb101_test_accuracy": test,
            "nb101_test_regret": self.best_test - test, "nb101_best_test_accuracy": self.best_test}


def benchmark_for(config) -> Benchmark | None:
  """The benchmark that `config.nasbench101.file` names for the 1Shot1 space
  `config.space`, or None when unset; ValueError when the file is set for another space or
  cannot be used."""
  path = config.get("nasbench101", {}).get("file", "")
  if not path:
    return None
  space = spaces.get_space(config.space)
  if not isinstance(space, spaces.OneShot1Space):
    raise ValueError(f"config.nasbench101.file is set but config.space={config.space!r}: the "
                     f"NAS-Bench-101 table scores cells of the 1shot1_ss1/ss2/ss3 spaces")
  return Benchmark.load(os.path.expanduser(path), space.cell)
