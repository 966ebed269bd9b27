"""PC-DARTS (partial channel connections, K = 4, channel shuffle; `supernet.PartialMixedOps`)
as a setting of the search: the partial-channel mixed ops against the same computation
written out plainly, the supernet's parameter count against the official code's, the
optional edge normalisation, and the smoke config through a short search (with cutout)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import final_state, override
from sdarts_jax.defaults import from_file
from sdarts_jax.model import ops, spaces, supernet
from sdarts_jax.run import metrics
from sdarts_jax.search import genotype, run_search


# Parameters of the official SDARTS PC-DARTS supernet (sota/cnn/model_search_pcdarts.py,
# PCDARTSNetwork(C=16, 10 classes, 8 cells)) by space, counted with PyTorch 2.13.0 (CPU) from
# a checkout of github.com/xiangning-chen/SmoothDARTS (commit d3dbfed) at $REF:
#   REF=path/to/SmoothDARTS python - <<'PY'   # a Python with PyTorch
#   import os, sys, types, torch, torch.nn as nn
#   sys.path.insert(0, os.environ["REF"])
#   torch.Tensor.cuda = lambda self, *a, **k: self  # the alphas are made with .cuda()
#   for m in ("PIL", "torchvision", "torchvision.transforms", "torchvision.datasets",
#             "torchvision.datasets.utils"):  # imported by optimizers/darts/utils.py, unused
#     sys.modules[m] = types.ModuleType(m)
#   sys.modules["PIL"].Image = sys.modules["torchvision.datasets"].VisionDataset = object
#   from sota.cnn.model_search_pcdarts import PCDARTSNetwork
#   from sota.cnn.spaces import spaces_dict
#   for s in ("s1", "s5", "s3"):
#     net = PCDARTSNetwork(16, 10, 8, nn.CrossEntropyLoss(), spaces_dict[s])
#     print(s, sum(p.numel() for p in net.parameters()))
#   PY
# (The DARTS supernet, sota/cnn/model_search.py's Network, has 1,930,618 in s5.)
OFFICIAL_PARAMS = {"s1": 130_946, "s5": 299_578, "s3": 149_946}  # s1: the official default

# Two edges leaving one state, with different op lists (`none` included), as in space s1.
EDGE_OPS = (("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"),
            ("avg_pool_3x3", "skip_connect", "dil_conv_3x3", "none"))
K = 4


# ---------------------------------------------------------------- the partial-channel op

def plain_partial_mixed_ops(variables, x, weights, stride):
  """What PC-DARTS's mixed op computes, written out: per edge, slice the first C/K
  channels, sum weight * op over its ops (each op applied alone, as `ops.EdgeOp` with the
  module's parameters), concatenate the other channels (2x2 max-pooled, stride 2, where the
  stride is 2), and shuffle the channels by the explicit permutation of PyTorch's
  view(K, C/K).transpose: output channel j is channel (j % K) * C/K + j // K.
  Returns numpy [N, H', W', E, C]."""
  x = np.asarray(x)
  n, h, w, c = x.shape
  part = x[..., :c // K]
  outputs = {}
  for op in dict.fromkeys(o for edge in EDGE_OPS for o in edge):
    if op == "none":
      continue
    slots = [e for e, edge in enumerate(EDGE_OPS) if op in edge]
    module = ops.EdgeOp(op, len(slots), stride, "fused")
    tree = {col: variables[col]["ops"][op] for col in ("params", "batch_stats")
            if op in variables[col]["ops"]}
    out, _ = module.apply(tree, part, True, mutable=["batch_stats"])
    for e in slots:
      outputs[op, e] = np.asarray(out[:, :, :, slots.index(e) if out.shape[3] > 1 else 0])
  rest = x[..., c // K:]
  if stride == 2:
    rest = rest.reshape(n, h // 2, 2, w // 2, 2, rest.shape[-1]).max(axis=(2, 4))
  permutation = [(j % K) * (c // K) + j // K for j in range(c)]
  edges = []
  for e, edge in enumerate(EDGE_OPS):
    mixed = sum(float(weights[e, k]) * outputs[op, e] for k, op in enumerate(edge)
                if op != "none")
    edges.append(np.concatenate([mixed, rest], axis=-1)[..., permutation])
  return np.stack(edges, axis=3)


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_mixed_ops_equal_the_plain_computation(stride):
  k_x, k_w, k_init = jax.random.split(jax.random.PRNGKey(stride), 3)
  x = jax.random.normal(k_x, (2, 8, 8, 8))  # C = 8, not K^2: a shuffle's transpose differs
  weights = jax.nn.softmax(jax.random.normal(k_w, (2, 4)), axis=-1)
  module = supernet.PartialMixedOps(EDGE_OPS, stride, K, "fused")
  variables = jax.jit(module.init)(k_init, x, weights, True)
  # Every op is built at C/K = 2 channels.
  params = variables["params"]["ops"]
  assert params["sep_conv_3x3"]["SepConv_0"]["pw_1"].shape == (1, 2, 2)
  assert params["dil_conv_3x3"]["DilConv_0"]["pw"].shape == (1, 2, 2)
  got, _ = module.apply(variables, x, weights, True, mutable=["batch_stats"])
  want = plain_partial_mixed_ops(variables, x, weights, stride)
  assert got.shape == want.shape == (2, 8 // stride, 8 // stride, 2, 8)
  # The same float32 ops, mixed in another order: a few roundings of the outputs' scale
  # (3.5), so atol=1e-5 is a normwise bound of 3e-6 (50 roundings); observed equal.
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the supernet

def param_count(model) -> int:
  A = {key: jnp.full(shape, 1.0 / shape[1]) for key, shape in model.alpha_shapes().items()}
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)},
                                             jnp.zeros((2, 32, 32, 3)), A, False))
  return sum(x.size for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_parameter_count_matches_the_official_pcdarts(name):
  model = supernet.Supernet(spaces.get_space(name), 10, 16, 8, partial_k=K)
  assert param_count(model) == OFFICIAL_PARAMS[name]


def test_edge_norm_weights_scale_the_edges():
  """With edge normalisation, edge weights of 1 give the supernet without it, and one-hot
  weights per node give the supernet whose other edges have zero op weights (K = 1, so a
  zero op weight silences an edge); the weights are alpha arrays, not parameters."""
  space = spaces.get_space("s3")
  plain = supernet.Supernet(space, 10, 4, 1)
  normed = supernet.Supernet(space, 10, 4, 1, edge_norm=True)
  shapes = normed.alpha_shapes()
  assert {k: s for k, s in shapes.items() if k not in space.cell_types} == {
      f"{t}_edges_{i}": (1, 2 + i) for t in spaces.CELL_TYPES for i in range(4)}
  A = supernet.mixing_weights({t: jax.random.normal(jax.random.PRNGKey(i), (14, 3))
                           for i, t in enumerate(space.cell_types)})
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 3))
  variables = jax.jit(plain.init)(jax.random.PRNGKey(3), x, A, False)
  forward = jax.jit(lambda model, A: model.apply(variables, x, A, False), static_argnums=0)
  ones = {k: jnp.ones(s) for k, s in shapes.items() if k not in A}
  # Edge weights of 1 and 0 change no rounding but the order of a few sums: a few roundings
  # of the logits' scale (0.15), so atol=1e-6 is a normwise bound of 7e-6 (100 roundings,
  # 100x below a wrong edge weight); observed equal. Likewise below.
  np.testing.assert_allclose(forward(normed, {**A, **ones}), forward(plain, A), rtol=1e-5,
                             atol=1e-6)
  keep = [0, 1, 0, 2]  # per node of the (reduction) cell: the edge kept, the others get 0
  one_hot = {spaces.edge_norm_key("reduce", i): jax.nn.one_hot(jnp.array([j]), 2 + i)
             for i, j in enumerate(keep)}
  one_hot.update({spaces.edge_norm_key("normal", i): jnp.ones((1, 2 + i)) for i in range(4)})
  kept = np.concatenate([np.eye(2 + i)[j] for i, j in enumerate(keep)])
  silenced = dict(A, reduce=A["reduce"] * kept[:, None])
  np.testing.assert_allclose(forward(normed, {**A, **one_hot}), forward(plain, silenced),
                             rtol=1e-5, atol=1e-6)
  assert "edges" not in str(jax.tree_util.tree_structure(variables["params"]))


def test_genotype_ranks_edges_by_op_weight_times_edge_weight():
  """PC-DARTS's derivation: each row of A times its edge weight, then DARTS's rule. Hand
  case in space s3 (none, skip, sep3): node 0 keeps both edges, in the order of their
  weighted best op; node 1 keeps edges 2 and 3 instead of 3 and 4."""
  space = spaces.get_space("s3")
  a = np.full((14, 3), 1 / 3)
  a[0], a[1] = [0.0, 0.6, 0.4], [0.0, 0.3, 0.7]
  a[2], a[3], a[4] = [0.0, 0.45, 0.55], [0.0, 0.2, 0.8], [0.0, 0.7, 0.3]
  A = {"normal": a, "reduce": a}
  plain = genotype.derive(A, space)["normal"]
  assert plain[:4] == [["sep_conv_3x3", 1], ["skip_connect", 0],
                       ["sep_conv_3x3", 1], ["skip_connect", 2]]
  edges = {spaces.edge_norm_key(t, i): np.full((1, 2 + i), 1 / (2 + i))
           for t in spaces.CELL_TYPES for i in range(4)}
  edges[spaces.edge_norm_key("normal", 0)] = np.array([[0.9, 0.1]])
  edges[spaces.edge_norm_key("normal", 1)] = np.array([[0.6, 0.2, 0.2]])
  normed = genotype.derive({**A, **edges}, space)
  assert normed["normal"][:4] == [["skip_connect", 0], ["sep_conv_3x3", 1],
                                  ["sep_conv_3x3", 0], ["sep_conv_3x3", 1]]
  assert normed["reduce"] == plain and normed["normal"][4:] == plain[4:]


# ---------------------------------------------------------------- the search

def test_config_has_the_official_settings():
  """The defaults of sota/cnn/train_search_pcdarts.py (SmoothDARTS commit d3dbfed), copied
  by hand: --search_space s1, no perturbation (the script has no --perturb_alpha; method
  darts here), --unrolled off (first order), --init_channels 16, --layers 8, --epochs 50,
  --batch_size 64, --learning_rate 0.025, --learning_rate_min 0.001, --weight_decay 3e-4,
  --arch_learning_rate 3e-4, --arch_weight_decay 1e-3, --train_portion 0.5, --cutout off
  (--cutout_prob 1.0, applied at that constant probability when on)."""
  c = from_file("cifar10_pcdarts")
  assert (c.method, c.alpha.order, c.space) == ("darts", 1, "s1")
  assert (c.model.partial_k, c.model.edge_norm) == (4, False)
  assert (c.model.channels, c.model.layers, c.epochs, c.data.batch_size) == (16, 8, 50, 64)
  assert (c.weights.lr, c.weights.lr_min, c.weights.weight_decay) == (0.025, 0.001, 3e-4)
  assert (c.alpha.lr, c.alpha.weight_decay, c.data.train_portion) == (3e-4, 1e-3, 0.5)
  assert (c.data.cutout, c.data.cutout_prob, c.data.cutout_schedule) == (0, 1.0, "constant")
  run_search.check_config(c)
  rs = from_file("cifar10_pcdarts", "method=rs,space=s3,smoke")
  assert (rs.method, rs.space, rs.model.partial_k, rs.epochs) == ("rs", "s3", 4, 2)
  run_search.check_config(rs)
  rs.model.partial_k = 3
  with pytest.raises(ValueError, match="config.model.partial_k=3 must be"):
    run_search.check_config(rs)


def test_smoke_search_with_edge_norm_and_cutout(tmp_path):
  """The smoke config with edge normalisation and cutout on, on tiny synthetic data (one
  cell, two epochs of 2 steps): the edge weights are trained and checkpointed in alpha,
  the genotype is derived with them, the epoch records carry cutout's probability, and a rerun
  restores the final checkpoint and has nothing to do. (Resuming mid-epoch is the loop's,
  checked by tests/test_search.py.)"""
  config = override(from_file("cifar10_pcdarts", "method=rs,space=s3,smoke"), {
      "model.layers": 1, "model.edge_norm": True, "data.cutout": 4, "data.name": "synthetic",
      "data.image_size": 8, "data.synthetic_examples": 32, "data.batch_size": 8,
      "data.max_examples": 0, "log_every_steps": 1, "compilation_cache": ""})
  workdir = str(tmp_path / "run")
  run_search.train_and_evaluate(config, workdir)
  epochs = metrics.read_records(workdir, "epoch")
  # The default constant schedule, as reported (the images the step cuts are counted by
  # tests/test_data.py::test_search_step_cuts_its_images_by_the_schedule).
  assert [(r["epoch"], r["cutout_prob"]) for r in epochs] == [(1, 1.0), (2, 1.0)]
  step_count, state = final_state(workdir)
  alpha = state["alpha"]
  shapes = supernet.Supernet(spaces.get_space("s3"), 10, 4, 1, edge_norm=True).alpha_shapes()
  assert {k: a.shape for k, a in alpha.items()} == shapes and step_count == 4
  # The final alpha's cell by the original PC-DARTS rule, written out here (not
  # genotype.derive): per node i (edges from inputs 0..i+1), each edge's ops (s3: none,
  # skip_connect, sep_conv_3x3) scaled by softmax of the node's edge weights, the 2 edges
  # with the largest non-none op kept, strongest first, each with its best non-none op.
  softmax = lambda a: np.exp(a - a.max(-1, keepdims=True)) / np.exp(
      a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)
  want = {}
  for cell_type in ("normal", "reduce"):
    ops, start, cell = softmax(np.asarray(alpha[cell_type], np.float64)), 0, []
    for i in range(4):
      beta = softmax(np.asarray(alpha[f"{cell_type}_edges_{i}"], np.float64))[0]
      W = ops[start:start + 2 + i, 1:] * beta[:, None]  # column 0 is none
      for j in sorted(range(2 + i), key=lambda j: -W[j].max())[:2]:
        cell.append([("skip_connect", "sep_conv_3x3")[int(np.argmax(W[j]))], j])
      start += 2 + i
    want[cell_type], want[f"{cell_type}_concat"] = cell, [2, 3, 4, 5]
  with open(os.path.join(workdir, "genotype.json")) as f:
    assert json.load(f) == want
  assert run_search.train_and_evaluate(config, workdir) == {}
  assert final_state(workdir)[0] == 4
