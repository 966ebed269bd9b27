"""NAS-Bench-201: the search network against plain references and hand counts, the cell
string, the benchmark table, and a tiny search that queries it."""
import csv
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reference
from conftest import assert_close_normwise, override, shared_data
from sdarts_jax import defaults
from sdarts_jax.model import spaces, supernet
from sdarts_jax.run import metrics
from sdarts_jax.search import genotype, run_search
from sdarts_jax.tables import nb201

SPACE = spaces.get_space("nb201")
SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
TABLE = shared_data("nb201")


# ---------------------------------------------------------------- the network

# Weights of the official NAS-Bench-201 search network (nasbench201/model.py,
# Network(C=16, N=5, max_nodes=4), alpha excluded) by number of classes, counted with
# PyTorch 2.13.0 (CPU) from the official code (commit d3dbfed) at $REF:
#   REF=path/to/SmoothDARTS python - <<'PY'   # a Python with PyTorch
#   import os, sys, torch, torch.nn as nn
#   sys.path.insert(0, os.environ["REF"])
#   torch.Tensor.cuda = lambda self, *a, **k: self
#   import nasbench201.model as M
#   for classes in (10, 100):
#     net = M.Network(16, 5, 4, classes, nn.CrossEntropyLoss())
#     arch = {id(p) for p in net.arch_parameters()}
#     print(classes, sum(p.numel() for p in net.parameters() if id(p) not in arch))
#   PY
OFFICIAL_NB201_PARAMS = {10: 1_686_106, 100: 1_691_956}


def test_parameter_count_matches_official_code():
  """C=16, N=5: the official network's count (above), and where the weights sit, by hand
  from nasbench201/model.py: stem 3*3*3*16 + 2*16 (affine BN) = 464; a cell at C has per
  edge a 1x1 and a 3x3 convolution, 10 C^2, non-affine BN: 6 * 10 * C^2 -> 5 cells each at
  C = 16, 32, 64: 76,800, 307,200, 1,228,800; ResNet blocks 16->32: 9*16*32 + 9*32*32 +
  16*32 + 2*(2*32) = 14,464 and 32->64: 57,600; last BN 128; classifier 64*classes +
  classes."""
  hand = {"stem": 464, "stage_0": 76_800, "stage_1": 307_200, "stage_2": 1_228_800,
          "reduce_1": 14_464, "reduce_2": 57_600, "last_bn": 128}
  for classes, want in OFFICIAL_NB201_PARAMS.items():
    model = supernet.NB201Supernet(SPACE, classes, 16, 5)
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)},
                                               jnp.zeros((2, 32, 32, 3)),
                                               {"normal": jnp.zeros((6, 5))}, False))
    size = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in shapes["params"].items()}
    assert sum(size.values()) == want
    assert size.pop("stem_kernel") + size.pop("stem_bn") == hand["stem"]
    assert size.pop("classifier_kernel") + size.pop("classifier_bias") == 64 * classes + classes
    assert size == {k: v for k, v in hand.items() if k != "stem"}


def _avg_pool(x):
  """3x3, stride 1, padding 1, padding left out of the mean, by plain loops."""
  out = np.zeros_like(x)
  h, w = x.shape[1:3]
  for i in range(h):
    for j in range(w):
      out[:, i, j] = x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].mean((1, 2))
  return out


def test_cell_matches_a_plain_reference():
  """node_i = sum over edges j->i of sum_k A[e, k] op_k(node_j), output node 3, with each op
  written out (ReLU-conv-BN, identity, pooling, zero) and the cell's own kernels."""
  cell = supernet.NB201Cell(SPACE.ops("normal"), "fused")
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 6, 6, 3)))
  A = np.asarray(jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(1), (6, 5))))
  variables = cell.init(jax.random.PRNGKey(2), x, A, False)
  got, _ = cell.apply(variables, x, A, True, mutable=["batch_stats"])

  p = variables["params"]
  nodes = [x]
  for node in (1, 2, 3):
    total = 0
    for src in range(node):
      e = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)].index((src, node))
      # The edges leaving a state share one convolution; its kernels stack them in edge order.
      slot = [t for s, t in [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)] if s == src].index(node)
      h = nodes[src]
      k1 = p[f"from_{src}"]["nor_conv_1x1"]["NorConv_0"]["kernel"][slot]
      k3 = p[f"from_{src}"]["nor_conv_3x3"]["NorConv_0"]["kernel"][slot]
      ops = {"none": 0 * h, "skip_connect": h,
             "nor_conv_1x1": reference.bn(reference.conv(np.maximum(h, 0), k1)),
             "nor_conv_3x3": reference.bn(reference.conv(np.maximum(h, 0), k3)),
             "avg_pool_3x3": _avg_pool(h)}
      total = total + sum(A[e, k] * ops[name] for k, name in enumerate(spaces.NB201_OPS))
    nodes.append(total)
  # float32 both sides, summed in other orders; node 3 sums ops whose entries cancel toward
  # zero, so each entry keeps a few roundings of the node's scale: normwise (observed
  # 1.5e-7; 1e-5 is 67x, 100x below a wrong op or edge).
  assert_close_normwise(got, nodes[3], 1e-5)


def test_one_hot_cells_by_hand():
  """All skip: node1 = x, node2 = 2x, node3 = 4x. All none: zero. Pooling only: BN-free."""
  cell = supernet.NB201Cell(SPACE.ops("normal"), "fused")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 3))
  onehot = lambda op: jax.nn.one_hot(jnp.full((6,), spaces.NB201_OPS.index(op)), 5)
  variables = cell.init(jax.random.PRNGKey(2), x, onehot("none"), False)
  # Sums of x with itself (exact but for 3x: at most 2 roundings of each entry, no
  # cancellation); the pooled cell's entries cancel toward zero: normwise (observed 7e-8).
  np.testing.assert_allclose(cell.apply(variables, x, onehot("skip_connect"), False), 4 * x,
                             rtol=1e-6)
  np.testing.assert_array_equal(cell.apply(variables, x, onehot("none"), False), 0 * x)
  p1 = _avg_pool(np.asarray(x))  # node 1; node 2 = pool(x) + pool(node 1); node 3 likewise
  p2 = _avg_pool(np.asarray(x)) + _avg_pool(p1)
  want = _avg_pool(np.asarray(x)) + _avg_pool(p1) + _avg_pool(p2)
  assert_close_normwise(cell.apply(variables, x, onehot("avg_pool_3x3"), False), want, 1e-5)


def test_resnet_block_matches_a_plain_reference():
  block = supernet.ResNetBlock(6, "fused")
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, 6, 6, 4)))
  variables = block.init(jax.random.PRNGKey(1), x, False)
  got, _ = block.apply(variables, x, True, mutable=["batch_stats"])
  p = variables["params"]
  ka, kb = p["conv_a"]["kernel"][0], p["conv_b"]["kernel"][0]  # BN scale 1, bias 0 at init
  y = reference.bn(reference.conv(np.maximum(x, 0), ka, stride=2))
  y = reference.bn(reference.conv(np.maximum(y, 0), kb))
  pooled = (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) / 4
  # As for the cell: normwise (observed 2.4e-7; 1e-5).
  assert_close_normwise(got, y + pooled @ p["shortcut_kernel"][0, 0], 1e-5)


GOLDEN = pathlib.Path(__file__).parent / "golden" / "nb201.npz"
BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _official(fixture, collection, variables, n):
  """`variables` (a Flax collection's tree) with the official code's values from the fixture
  (tools/golden_nb201.py): PyTorch names, OIHW kernels, one Conv2d per edge and cell."""
  kind = "weights" if collection == "params" else "buffers"
  hwio = lambda name: fixture[f"weights/{name}"].transpose(2, 3, 1, 0)
  edges = spaces.NB201_CELL.edges()

  def value(path, leaf):
    keys = [k.key for k in path]
    if keys[0] == "stem_kernel":
      return hwio("stem.0.weight")
    if keys[0].startswith("classifier"):
      w = fixture[f"weights/classifier.{'weight' if keys[0].endswith('kernel') else 'bias'}"]
      return w.T if w.ndim == 2 else w
    if keys[0] in ("stem_bn", "last_bn"):
      return fixture[f"{kind}/{'stem.1' if keys[0] == 'stem_bn' else 'lastact.0'}."
                     f"{BN_NAMES[keys[-1]]}"]
    if keys[0].startswith("reduce_"):  # official layer index of the ResNet block
      layer = int(keys[0][-1]) * (n + 1) - 1
      if keys[1] == "shortcut_kernel":
        return hwio(f"cells.{layer}.downsample.1.weight")
      if keys[-1] == "kernel":
        return hwio(f"cells.{layer}.{keys[1]}.op.1.weight")[None]
      return fixture[f"{kind}/cells.{layer}.{keys[1]}.op.2.{BN_NAMES[keys[-1]]}"][None]
    stage, src, op = int(keys[0][-1]), int(keys[1].split("_")[1]), keys[2]
    k = spaces.NB201_OPS.index(op)
    per_cell = []
    for layer in range(stage * (n + 1), stage * (n + 1) + n):
      names = [f"cells.{layer}.edges.{target + 1}<-{src}.{k}.op" for s, target in edges
               if s == src]
      per_cell.append([hwio(f"{m}.1.weight") if keys[-1] == "kernel"
                       else fixture[f"{kind}/{m}.2.{BN_NAMES[keys[-1]]}"] for m in names])
    return np.asarray(per_cell)

  def checked(path, leaf):
    v = value(path, leaf)
    assert v.shape == leaf.shape, (path, v.shape, leaf.shape)
    return jnp.asarray(v)

  return jax.tree_util.tree_map_with_path(checked, variables)


@pytest.mark.skipif(not GOLDEN.exists(), reason="tests/golden/nb201.npz is not here")
def test_network_matches_the_official_code():
  """The official NAS-Bench-201 search network (C=4, N=2) with its own weights: train-mode
  logits, the gradient w.r.t. alpha, the BatchNorm running statistics after that pass, and
  eval-mode logits on them."""
  f = dict(np.load(GOLDEN))
  # JAX's own derivatives compile faster here than the fused backward pass (test_ops checks it).
  model = supernet.NB201Supernet(SPACE, 10, 4, 2, impl="fused_autodiff")
  x = jnp.asarray(f["x"].transpose(0, 2, 3, 1))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, {"normal": jnp.zeros((6, 5))},
                          False)  # (an eager init of the scanned stages takes seconds)
  fresh = jax.tree_util.tree_map_with_path(  # BatchNorm's initial running statistics
      lambda path, s: (jnp.zeros if path[-1].key == "mean" else jnp.ones)(s.shape),
      shapes["batch_stats"])
  init = {"params": shapes["params"], "batch_stats": fresh}
  params = _official(f, "params", init["params"], 2)

  def loss(alpha):
    logits, new = model.apply({"params": params, "batch_stats": init["batch_stats"]}, x,
                              {"normal": jax.nn.softmax(alpha)}, True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, f["y"]).mean(), (logits, new)

  (_, (logits, new)), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(f["alpha"])
  # Against PyTorch, normwise per array as in test_golden.py (its docstring: float32 on both
  # sides in other summation orders, amplified by train-mode BatchNorm). Logits: observed
  # 2.8e-7 of their scale (1.95), bound 1e-5. d loss / d alpha is a sum over the batch that
  # cancels (entries from 1e-4 to 0.077): 2.2e-6 of its largest entry, where atol=1e-6 left
  # 6x; bound 5e-5, test_golden's TOL_GRAD. Statistics per leaf: the worst conditioned is
  # the stem's running mean (0.1 of a batch mean that cancels to 1/27 of its terms' scale),
  # observed 1.4e-7 of the leaf; 2e-5 of it is 12 roundings of the terms. Eval logits 1.6e-7.
  assert_close_normwise(logits, f["logits"], 1e-5)
  assert_close_normwise(grad, f["grad_alpha"], 5e-5)
  stats = _official(f, "batch_stats", init["batch_stats"], 2)
  assert_close_normwise(new["batch_stats"], stats, 2e-5)
  eval_logits = jax.jit(model.apply, static_argnums=3)(
      {"params": params, "batch_stats": stats}, x, {"normal": jax.nn.softmax(f["alpha"])}, False)
  assert_close_normwise(eval_logits, f["eval_logits"], 1e-5)


# ---------------------------------------------------------------- the cell string

def test_genotype_string_from_hand_made_alpha():
  a = np.full((6, 5), 0.1)
  for edge, op in enumerate(["nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3",
                             "nor_conv_1x1", "none"]):
    a[edge, spaces.NB201_OPS.index(op)] = 0.5
  g = genotype.derive({"normal": a}, SPACE)
  assert g == {"nb201": "|nor_conv_3x3~0|+|none~0|skip_connect~1|+"
                        "|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"}
  assert genotype.derive({"normal": np.full((6, 5), 0.2)}, SPACE)["nb201"] == (
      "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")  # ties: the first op
  assert nb201.parse(g["nb201"]) == ("nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3",
                                     "nor_conv_1x1", "none")


def test_string_round_trip_and_bad_strings(tmp_path):
  for cell in (SKIP, "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
                     "|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"):
    assert nb201.to_string(nb201.parse(cell)) == cell
  cells = nb201.all_cells()
  assert len(cells) == len(set(cells)) == 15_625
  for bad in ("|skip_connect~0|", SKIP.replace("~1|+", "~0|+"), SKIP.replace("skip", "max"),
              SKIP.replace("|+|", "+")):
    with pytest.raises(ValueError, match="not a NAS-Bench-201 cell string"):
      nb201.parse(bad)
  path = tmp_path / "genotype.json"
  genotype.save({"nb201": SKIP}, str(path))
  assert genotype.load(str(path)) == {"nb201": SKIP}
  with pytest.raises(ValueError, match="NAS-Bench-201 cell"):
    genotype.resolve(str(path))  # evaluation trains DARTS cells only


# ---------------------------------------------------------------- the table

def _write_table(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(nb201.COLUMNS)
    writer.writerows(rows)
  return str(path)


def test_table_reader_on_a_small_csv(tmp_path):
  other = SKIP.replace("skip_connect~2", "none~2")
  conv = SKIP.replace("skip_connect~0|+", "nor_conv_3x3~0|+")
  path = _write_table(tmp_path / "t.csv", [
      (60.0, 20.0, 10.0, SKIP, "u_skip"),
      (70.0, 10.0, 30.0, other, "u_skip"),   # isomorphic to SKIP (same UniqueString)
      (90.0, 30.0, 20.0, conv, "u_conv")])
  table = nb201.Table.load(path)
  q = table.query(SKIP)
  assert (q["nb201_cifar10"], q["nb201_cifar100"], q["nb201_imagenet16"]) == (60.0, 20.0, 10.0)
  assert (q["nb201_cifar10_rank"], q["nb201_cifar100_rank"], q["nb201_imagenet16_rank"]) == (3, 2, 3)
  # Classes scored by their mean: u_skip 65 / 15 / 20, u_conv 90 / 30 / 20 (a tie ranks equal).
  assert (q["nb201_cifar10_rank_unique"], q["nb201_imagenet16_rank_unique"]) == (2, 1)
  assert q["nb201_cells"] == 3 and q["nb201_unique_cells"] == 2
  assert table.query(conv)["nb201_cifar10_rank"] == 1
  with pytest.raises(ValueError, match="15622 of the 15625 NAS-Bench-201 cells are missing"):
    table.check_complete()


@pytest.mark.parametrize("edit,message", [
    (lambda rows: rows, "no such file"),
    (lambda rows: [r[:4] for r in rows], "missing column"),
    (lambda rows: [("x",) + r[1:] for r in rows], "line 2, column CIFAR10TestAccuracy200Epochs"),
    (lambda rows: [r[:3] + ("|skip~0|",) + r[4:] for r in rows], "line 2, column Architecture"),
    (lambda rows: rows + rows, "line 3: cell .* is listed twice"),
    (lambda rows: [], "has no rows"),
])
def test_bad_table_is_one_clear_error(tmp_path, edit, message):
  rows = [(54.3, 15.6, 16.3, SKIP, "0+0+0+0")]
  path = str(tmp_path / "missing.csv")
  if message != "no such file":
    columns = nb201.COLUMNS if message != "missing column" else nb201.COLUMNS[:4]
    with open(path, "w", newline="") as f:
      csv.writer(f).writerows([columns] + edit(rows))
  with pytest.raises(ValueError, match=message) as e:
    nb201.Table.load(path)
  assert path in str(e.value)


@pytest.mark.skipif(TABLE is None, reason="the shared NAS-Bench-201 table is not here")
def test_shared_table_matches_published_numbers():
  """DARTS's collapse cell (all skip) 54.30 / 15.61 / 16.32; the column maxima 94.37 /
  73.51 / 47.31 (NAS-Bench-201 paper; the table's README)."""
  table = nb201.Table.load(str(TABLE / "nats_bench.csv"))
  table.check_complete()
  q = table.query(SKIP)
  assert [round(q[f"nb201_{d}"], 2) for d in nb201.DATASETS] == [54.30, 15.61, 16.32]
  assert [round(table.accuracy[d].max(), 2) for d in nb201.DATASETS] == [94.37, 73.51, 47.31]
  best = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
  assert table.query(best)["nb201_cifar10_rank"] == 1
  assert q["nb201_cells"] == 15_625 and q["nb201_unique_cells"] == 6_466


# ---------------------------------------------------------------- the search

def _synthetic_table(path):
  """Every cell, CIFAR-10 accuracy 10 + (its index in all_cells()) / 1000."""
  rows = [(10 + i / 1000, 1.0, 2.0, cell, cell) for i, cell in enumerate(nb201.all_cells())]
  return _write_table(path, rows)


def _tiny_nb201(method, **overrides):
  c = defaults.from_file("nb201_search", f"method={method}")
  return override(c, {"epochs": 1, "model.channels": 4, "model.cells_per_stage": 1,
                      "data.name": "synthetic", "data.image_size": 8,
                      "data.synthetic_examples": 32, "data.batch_size": 8,
                      "log_every_steps": 1, "compilation_cache": "",
                      "nb201.table_sha256": "",  # the tables here are not the published one
                      **overrides})


def test_search_writes_the_cell_string_and_queries_the_table(tmp_path):
  config = _tiny_nb201("rs", **{"nb201.table": _synthetic_table(tmp_path / "t.csv")})
  workdir = str(tmp_path / "w")
  record = run_search.train_and_evaluate(config, workdir)  # 2 steps
  with open(os.path.join(workdir, "genotype.json")) as f:
    cell = json.load(f)["nb201"]
  index = nb201.all_cells().index(cell)
  assert record["nb201_cifar10"] == pytest.approx(10 + index / 1000)
  assert record["nb201_cifar10_rank"] == 15_625 - index
  (epoch,) = metrics.read_records(workdir, "epoch")
  assert epoch["genotype"] == {"nb201": cell} and np.shape(epoch["A"]["normal"]) == (6, 5)
  assert set(epoch["A"]) == {"normal"} and epoch["nb201_imagenet16"] == 2.0


def test_table_errors_come_before_compilation(tmp_path):
  with pytest.raises(ValueError, match="config.nb201.table=/nonexistent.csv: no such file"):
    run_search.train_and_evaluate(_tiny_nb201("adv", **{"nb201.table": "/nonexistent.csv"}),
                                  str(tmp_path / "a"))
  small = _write_table(tmp_path / "t.csv", [(54.3, 15.6, 16.3, SKIP, "0+0+0+0")])
  with pytest.raises(ValueError, match="cells are missing"):
    run_search.train_and_evaluate(_tiny_nb201("adv", **{"nb201.table": small}), str(tmp_path / "b"))
  darts = override(defaults.search_config("darts"), {"compilation_cache": ""})
  darts.nb201 = {"table": small}
  with pytest.raises(ValueError, match="only scores cells of the nb201 space"):
    run_search.train_and_evaluate(darts, str(tmp_path / "c"))
