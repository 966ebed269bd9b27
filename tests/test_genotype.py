"""Genotype derivation (docs/method.md, section 5) on hand-made mixing weights, and the registry."""
import numpy as np
import pytest

from sdarts_jax.model import spaces
from sdarts_jax.search import genotype


def _A(num_ops, entries):
  """Small uniform weights with the given (edge, op) -> value overrides."""
  a = np.full((14, num_ops), 0.01)
  for (e, k), v in entries.items():
    a[e, k] = v
  return a


def test_derive_without_none():
  space = spaces.get_space("s5")  # max, avg, skip, sep3, sep5, dil3, dil5
  normal = _A(7, {(1, 3): 0.9, (0, 2): 0.5,                 # node 0: both its edges
                  (4, 6): 0.8, (2, 0): 0.7, (3, 1): 0.6,    # node 1: edges 4 and 2
                  (5, 4): 0.3, (8, 5): 0.4,                 # node 2: edges 8, 5
                  (13, 2): 0.9, (9, 3): 0.2, (12, 3): 0.5})  # node 3: edges 13, 12
  g = genotype.derive({"normal": normal, "reduce": normal}, space)
  assert g["normal"] == [["sep_conv_3x3", 1], ["skip_connect", 0],
                         ["dil_conv_5x5", 2], ["max_pool_3x3", 0],
                         ["dil_conv_3x3", 3], ["sep_conv_5x5", 0],
                         ["skip_connect", 4], ["sep_conv_3x3", 3]]
  assert g["normal_concat"] == [2, 3, 4, 5] and g["reduce"] == g["normal"]


def test_derive_ignores_none():
  space = spaces.get_space("darts")  # none first, then the 7 ops of s5
  # Edge 0's largest weight is `none`, yet it is kept for its best real op when that beats
  # edge 1's best real op; edge 2's `none` must not win node 1.
  normal = _A(8, {(0, 0): 0.99, (0, 4): 0.3, (1, 5): 0.2,
                  (2, 0): 0.95, (2, 1): 0.05, (3, 2): 0.4, (4, 3): 0.5})
  g = genotype.derive({"normal": normal, "reduce": normal}, space)
  assert g["normal"][:2] == [["sep_conv_3x3", 0], ["sep_conv_5x5", 1]]
  assert g["normal"][2:4] == [["skip_connect", 2], ["avg_pool_3x3", 1]]
  assert all(op != "none" for op, _ in g["normal"] + g["reduce"])


def test_derive_uses_each_edges_own_op_list():
  space = spaces.get_space("s1")
  a = np.full((14, 2), 0.5)
  a[:, 1] = 0.6  # second op wins everywhere
  g = genotype.derive({"normal": a, "reduce": a}, space)
  # Node 0, edges 0 and 1 of S1's normal cell: [skip, dil3] and [skip, dil5].
  assert g["normal"][:2] == [["dil_conv_3x3", 0], ["dil_conv_5x5", 1]]
  assert g["reduce"][:2] == [["avg_pool_3x3", 0], ["dil_conv_3x3", 1]]


def test_ties_go_to_lower_index():
  g = genotype.derive({"normal": np.full((14, 7), 1 / 7), "reduce": np.full((14, 7), 1 / 7)},
                      spaces.get_space("s5"))
  assert g["normal"][:4] == [["max_pool_3x3", 0], ["max_pool_3x3", 1],
                             ["max_pool_3x3", 0], ["max_pool_3x3", 1]]


def test_published_and_resolve(tmp_path):
  table = genotype.published()
  assert {"darts_v2", "c10_s5_pgd", "c10_s5_random"} <= set(table)
  for name, g in table.items():
    genotype.validate(g, name)
  path = tmp_path / "g.json"
  genotype.save(table["c10_s5_pgd"], str(path))
  assert genotype.resolve(str(path)) == table["c10_s5_pgd"]
  with pytest.raises(ValueError, match="unknown genotype"):
    genotype.resolve("no_such_cell")
  bad = dict(table["darts_v2"], normal=[["sep_conv_3x3", 5]] * 8)
  genotype.save(bad, str(path))
  with pytest.raises(ValueError, match="not a valid"):
    genotype.resolve(str(path))
