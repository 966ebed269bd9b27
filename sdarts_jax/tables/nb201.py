"""NAS-Bench-201: the cell string and queries of the benchmark's accuracy table.

A cell is written as NAS-Bench-201 writes it, node by node, each node listing its inputs:
`|op~0|+|op~0|op~1|+|op~0|op~1|op~2|` (node i's edges from nodes 0..i-1, in the edge
order of `spaces.NB201_CELL`).

The table is a CSV with one row per cell of the space (15,625 = 5^6 in the full table) and
the columns `COLUMNS`: the mean test accuracy (%) after 200 training epochs on CIFAR-10,
CIFAR-100 and ImageNet16-120, the cell string, and a canonical string of the computation the
cell performs (isomorphic cells share it). The published table is `TABLE_URL`, checked
against `TABLE_SHA256` when a search loads it; `python -m sdarts_jax.tables.nb201_table` writes
the same table from the official benchmark files (docs/data.md).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import math
import os

import numpy as np

from sdarts_jax.model import spaces

# Metric name -> the table's accuracy column.
DATASETS = {"cifar10": "CIFAR10TestAccuracy200Epochs",
            "cifar100": "CIFAR100TestAccuracy200Epochs",
            "imagenet16": "ImageNetTestAccuracy200Epochs"}
ARCH, UNIQUE = "ArchitectureString", "UniqueString"
COLUMNS = tuple(DATASETS.values()) + (ARCH, UNIQUE)

# The published table: NATS-Bench's topology results (Dong et al.), as the public repository
# v-tao/nats-bench-landscape exported them (its nats_bench.csv, commit b307ae5), and the
# sha256 of that file; config.nb201.table_sha256 names another (or "" for no check).
TABLE_URL = ("https://raw.githubusercontent.com/v-tao/nats-bench-landscape/"
             "b307ae5fe6e8d7043cd4fe7d1c3532288271adb7/nats_bench.csv")
TABLE_SHA256 = "cb5d777ec3368be83c8f9b3aa4d520696051cb0eb8d94b8f85b519f9ea4afa3e"
CONVERT_COMMAND = ("python -m sdarts_jax.tables.nb201_table "
                   "--source=NAS-Bench-201-v1_0-e61699.pth --out=nb201.csv")


def how_to_get() -> str:
  """The two ways to the table, for error messages."""
  return (f"download the published table from {TABLE_URL} (sha256 {TABLE_SHA256}), or "
          f"convert the official benchmark file (NAS-Bench-201-v1_0-e61699.pth or NATS-Bench's "
          f"NATS-tss-v1_0-3ffb9-simple) with `{CONVERT_COMMAND}`; see docs/data.md")


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def check_sha256(path: str, expected: str) -> None:
  """ValueError unless the file's sha256 is `expected` (no check when it is empty)."""
  if not expected:
    return
  got = sha256_of(path)
  if got == expected.lower():
    return
  what = ("the published NAS-Bench-201 table's" if expected.lower() == TABLE_SHA256
          else "config.nb201.table_sha256")
  raise ValueError(f"config.nb201.table={path}: its sha256 is {got}, not {what} "
                   f"({expected}): the file is damaged or another table. The published "
                   f"table is at {TABLE_URL}; for a table of your own (e.g. written by "
                   f"`python -m sdarts_jax.tables.nb201_table`), pin it with "
                   f"--config.nb201.table_sha256={got}, or skip the check with "
                   f"--config.nb201.table_sha256='' (docs/data.md)")


def to_string(cell_ops) -> str:
  """The NAS-Bench-201 string of a cell: cell_ops holds one op name per edge."""
  endpoints = spaces.NB201_CELL.edges()
  nodes = []
  for node in range(spaces.NB201_CELL.num_nodes):
    inputs = [f"{op}~{src}" for op, (src, target) in zip(cell_ops, endpoints) if target == node]
    nodes.append("|" + "|".join(inputs) + "|")
  return "+".join(nodes)


def parse(arch: str) -> tuple[str, ...]:
  """The op of every edge of a NAS-Bench-201 string (inverse of `to_string`); ValueError
  unless it lists, for nodes 1, 2, 3, one known op from each earlier node in order."""
  nodes = arch.split("+") if isinstance(arch, str) else []
  cell_ops = []
  ok = len(nodes) == spaces.NB201_CELL.num_nodes
  for node, text in enumerate(nodes if ok else []):
    inputs = text[1:-1].split("|") if text.startswith("|") and text.endswith("|") else []
    ok = ok and len(inputs) == node + 1
    for src, item in enumerate(inputs if ok else []):
      op, _, index = item.partition("~")
      ok = ok and op in spaces.NB201_OPS and index == str(src)
      cell_ops.append(op)
  if not ok:
    raise ValueError(f"{arch!r} is not a NAS-Bench-201 cell string: expected "
                     f"|op~0|+|op~0|op~1|+|op~0|op~1|op~2| with ops from "
                     f"{', '.join(spaces.NB201_OPS)}")
  return tuple(cell_ops)


def all_cells() -> list[str]:
  """Every cell string of the space (5^6 = 15,625)."""
  edges = spaces.NB201_CELL.num_edges
  return [to_string(ops) for ops in itertools.product(spaces.NB201_OPS, repeat=edges)]


@dataclasses.dataclass(frozen=True)
class Table:
  """The accuracy table, read whole (`load`).

  Attributes:
    path: the CSV file.
    rows: arch string -> row index.
    accuracy: dataset (a key of DATASETS) -> [rows] test accuracy in %.
    group: [rows] index of the row's isomorphism class (its UniqueString).
    num_groups: how many distinct UniqueStrings.
  """
  path: str
  rows: dict[str, int]
  accuracy: dict[str, np.ndarray]
  group: np.ndarray
  num_groups: int

  @classmethod
  def load(cls, path: str, sha256: str = "") -> "Table":
    """Read the CSV at `path`, first checking that its sha256 is `sha256` when that is given
    (TABLE_SHA256: the published table); ValueError naming the file (and line and column)
    when it is missing, does not match, or is malformed: a missing column, an accuracy that
    is not a number in [0, 100], a cell string that is not one, a cell listed twice, no
    rows."""
    if not os.path.isfile(path):
      raise ValueError(f"config.nb201.table={path}: no such file (expected the NAS-Bench-201 "
                       f"accuracy CSV): {how_to_get()}")
    check_sha256(path, sha256)
    with open(path, newline="") as f:
      reader = csv.DictReader(f)
      missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
      if missing:
        raise ValueError(f"{path}: not a NAS-Bench-201 table: missing column(s) "
                         f"{', '.join(missing)} (expected {', '.join(COLUMNS)})")
      rows, values, uniques = {}, {d: [] for d in DATASETS}, []
      for line, row in enumerate(reader, start=2):
        arch = row[ARCH]
        try:
          parse(arch)
        except ValueError as e:
          raise ValueError(f"{path}: line {line}, column {ARCH}: {e}") from None
        if arch in rows:
          raise ValueError(f"{path}: line {line}: cell {arch} is listed twice")
        rows[arch] = len(rows)
        for dataset, column in DATASETS.items():
          try:
            value = float(row[column])
          except (TypeError, ValueError):
            value = math.nan
          if not 0.0 <= value <= 100.0:
            raise ValueError(f"{path}: line {line}, column {column}: {row[column]!r} is not "
                             f"an accuracy in % (a number in [0, 100])")
          values[dataset].append(value)
        if not row[UNIQUE]:
          raise ValueError(f"{path}: line {line}, column {UNIQUE} is empty")
        uniques.append(row[UNIQUE])
    if not rows:
      raise ValueError(f"{path}: the NAS-Bench-201 table has no rows")
    names, group = np.unique(np.array(uniques), return_inverse=True)
    return cls(path, rows, {d: np.array(v) for d, v in values.items()}, group, len(names))

  def check_complete(self) -> None:
    """ValueError unless every cell of the space has a row (a search may derive any)."""
    missing = [arch for arch in all_cells() if arch not in self.rows]
    if missing:
      raise ValueError(f"config.nb201.table={self.path}: {len(missing)} of the "
                       f"{len(missing) + len(self.rows)} NAS-Bench-201 cells are missing "
                       f"(e.g. {missing[0]}); a search can derive any cell, so the table "
                       f"must list all of them")

  def query(self, arch: str) -> dict[str, float | int]:
    """The cell's test accuracy on each dataset and its ranks (1 = best).

    Returns, per dataset d: nb201_{d} (accuracy in %), nb201_{d}_rank (1 + the number of
    cells in the table with a higher accuracy), nb201_{d}_rank_unique (the same among the
    isomorphism classes, each class scored by its cells' mean accuracy); plus nb201_cells
    and nb201_unique_cells, the sizes of the two rankings. KeyError if arch has no row.
    """
    row = self.rows[arch]
    out: dict[str, float | int] = {}
    counts = np.bincount(self.group, minlength=self.num_groups)
    for d, acc in self.accuracy.items():
      class_mean = np.bincount(self.group, weights=acc, minlength=self.num_groups) / counts
      out[f"nb201_{d}"] = float(acc[row])
      out[f"nb201_{d}_rank"] = 1 + int(np.sum(acc > acc[row]))
      out[f"nb201_{d}_rank_unique"] = 1 + int(np.sum(class_mean > class_mean[self.group[row]]))
    out.update(nb201_cells=len(self.rows), nb201_unique_cells=self.num_groups)
    return out


def table_for(config) -> Table | None:
  """The table that `config.nb201.table` names, checked against `config.nb201.table_sha256`
  (default TABLE_SHA256; "" skips the check) and complete, or None when unset; a ValueError
  when it is set for a space other than nb201 or cannot be used."""
  path = config.get("nb201", {}).get("table", "")
  if not path:
    return None
  if spaces.get_space(config.space).topology != spaces.NB201_CELL:
    raise ValueError(f"config.nb201.table is set but config.space={config.space!r}: the "
                     f"NAS-Bench-201 table only scores cells of the nb201 space")
  table = Table.load(os.path.expanduser(path), config.nb201.get("table_sha256", TABLE_SHA256))
  table.check_complete()
  return table
