"""Golden tests: the supernet and the search step against the official PyTorch SmoothDARTS
code (commit d3dbfed), from the fixtures in tests/golden/ that tools/golden.py makes by
running the official code (README.md, "Golden tests").

Each fixture holds one small supernet (3 cells: normal, reduction, reduction after a
reduction; C=4, 16x16 images, batch 8) of one space, s5 (the SDARTS default) or s1
(per-edge op lists): its official weights, BatchNorm statistics and alpha; in s5, the
logits, loss, statistics and gradients of one forward pass; in s1, the state after 2
search steps of the official `train()` loop for DARTS, SDARTS-RS and SDARTS-ADV, whose
losses, momentum and Adam moments check s1's forward and backward passes too (a separate
s1 forward test would cost another 15-30 s of compilation). The official code was fed the
JAX step's own uniform noise (RS noise, PGD random start), so the steps are compared
exactly, not in distribution, and its data were drawn to stay clear of the points where a
discrete choice (the max-pooling argmax, PGD's sign of the gradient, its acceptance test)
could go either way within float32 rounding (tools/golden.py, KinkMonitor). A third fixture,
s1_unrolled (tools/golden_unrolled.py), holds one official second-order alpha step
(`Architect.step(..., unrolled=True)`) from the s1 state.

Tolerances are relative to the scale of each compared array: max |got - want| <= tol *
max |want|; parameters after the steps are compared by the change the steps made, up to
ULPS roundings of the parameters themselves. Both sides compute in float32 but sum in
different orders (PyTorch: depthwise, then pointwise convolutions; here on CPU: one dense
convolution with the two kernels multiplied together), so every op carries a relative
error of order 1e-7; train-mode BatchNorm over few pixels (8 images of 4x4 in the last
cell) divides by small standard deviations and amplifies it, and the backward pass through
three cells of them compounds it. The tolerances are 7 to 50 times the largest errors
observed (listed with each). Deliberate changes to the method, each of which failed this test,
moved the compared quantities by 1.5e-4 (PyTorch's unbiased running variance replaced by
the biased one: a factor 128/127 in the last cell) to O(1) (an op changed).
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sdarts_jax import defaults
from sdarts_jax.model import losses, spaces, supernet
from sdarts_jax.search import optim, perturb, run_search, scan_step

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
FORWARD = ["s5"]  # spaces with a forward-pass fixture
RUNS = [("s1", "darts"), ("s1", "rs"), ("s1", "adv")]  # (space, method) with search steps

# Tolerances, relative to each array's largest entry; the largest errors observed (jax
# 0.10.2 on XLA:CPU at -O0 with 4 host devices, as tests/conftest.py sets it up, against
# PyTorch 2.13.0 CPU) in brackets.
TOL_FORWARD = 5e-5  # logits [1.0e-6], loss [1.0e-7], running statistics [6.5e-6]
TOL_GRAD = 5e-5     # gradients w.r.t. the weights [3.3e-6] and w.r.t. A [1.8e-6]
TOL_STEP = 5e-5     # after each step: losses [1.2e-7]; after 2 steps: statistics [3.1e-6],
                    # SGD momentum [2.8e-6], Adam's moments [1.9e-6]
TOL_UNROLLED = 5e-5  # the second-order step (official central difference): Adam's moments
                    # [3.7e-6], the unrolled val loss [9.6e-8]; without H v they are 0.12 off,
                    # without the momentum buffer in w' the loss is 1.5e-3 off
TOL_CHANGE = 5e-5   # the change of the weights [1.0e-6] and of alpha [0] over the steps,
ULPS = 2            # beyond this many float32 roundings of the parameters themselves: the
                    # changes are 1e-5 to 1e-3 of the weights at this lr (0.0029), so one
                    # rounding of w (1.2e-7 |w|) can be 1e-2 of the change


# ---------------------------------------------------------------- fixtures and the model

@functools.lru_cache(maxsize=None)
def fixture(space: str) -> dict:
  with np.load(os.path.join(GOLDEN, f"{space}.npz")) as f:
    return {k: f[k] for k in f.files}


def unpack(fx: dict, flat: np.ndarray, kind: str) -> dict[str, np.ndarray]:
  """A flat vector of the fixture's `kind` ("params" or "buffers") layout -> {name: array}."""
  out, offset = {}, 0
  for name, shape in json.loads(str(fx[f"layout/{kind}"])):
    size = int(np.prod(shape))
    out[name] = flat[offset:offset + size].reshape(shape)
    offset += size
  assert offset == flat.size
  return out


def config_of(space: str, method: str):
  fx = fixture(space)
  c = defaults.search_config(method)
  c.space = space
  c.seed = int(fx["meta/seed"])
  c.epochs = int(fx["meta/epochs"])
  c.model.layers = int(fx["meta/layers"])
  c.model.channels = int(fx["meta/channels"])
  c.compilation_cache = ""
  return c


@functools.lru_cache(maxsize=None)
def model_of(space: str):
  return run_search.build_model(config_of(space, "darts"), int(fixture(space)["meta/classes"]))


def images(x: np.ndarray) -> jax.Array:
  """Official NCHW images -> NHWC."""
  return jnp.asarray(np.moveaxis(x, -3, -1))


# ---------------------------------------------------------------- official -> Flax mapping

_STAT = {"running_mean": "mean", "running_var": "var"}


def _conv1x1(w):   # [D, C, 1, 1] -> [C, D]
  return w[:, :, 0, 0].T


def _depthwise(w):  # [C, 1, k, k] -> [k, k, C]
  return np.transpose(w[:, 0], (1, 2, 0))


def _bn(w, stat, path):
  """A BatchNorm statistic ("running_mean" or "running_var"): (collection, path, value)."""
  return "batch_stats", path + (_STAT[stat],), w


def _target(name: str, w: np.ndarray, space: spaces.SearchSpace, layers: int):
  """Where official tensor `name` goes in the Flax tree and in which form:
  (collection, path, value, slot). slot is the tensor's row among the edges that share one
  Flax parameter (ops.MixedOps batches the edges leaving a state), "shared" for the
  BatchNorm after pooling (one for all those edges: their statistics are equal), or None.

  Official names (sota/cnn/model_search.py, operations.py): stem.{0 conv, 1 BN},
  cells.i.preprocess{0,1}.op.{1 conv, 2 BN} (ReLUConvBN) or .conv_{1,2}/.bn
  (FactorizedReduce), cells.i._ops.<edge>._ops.<k>.<op> with <k> the op's index in the
  edge's list: pooling .1 (its BN); skip_connect (stride 2, FactorizedReduce)
  .conv_{1,2}/.bn; sep_conv .op.{1 dw, 2 pw, 3 BN, 5 dw, 6 pw, 7 BN}; dil_conv
  .op.{1 dw, 2 pw, 3 BN}; classifier.
  """
  parts = name.split(".")
  if parts[0] == "stem":
    if parts[1] == "0":
      return "params", ("stem_kernel",), np.transpose(w, (2, 3, 1, 0)), None  # OIHW -> HWIO
    if parts[2] in _STAT:
      return (*_bn(w, parts[2], ("stem_bn",)), None)
    return "params", ("stem_bn", {"weight": "scale", "bias": "bias"}[parts[2]]), w, None
  if parts[0] == "classifier":
    if parts[1] == "weight":
      return "params", ("classifier_kernel",), w.T, None
    return "params", ("classifier_bias",), w, None
  assert parts[0] == "cells", name
  i = int(parts[1])
  cell = f"cell_{i}"
  if parts[2].startswith("preprocess"):
    pre = (cell, "pre_" + parts[2][-1])
    rest = parts[3:]
    if rest[0] == "op":  # ReLUConvBN
      if rest[1] == "1":
        return "params", pre + ("kernel",), _conv1x1(w), None
      return (*_bn(w, rest[2], pre + ("BatchNorm_0",)), None)
    if rest[0] == "bn":  # FactorizedReduce (one edge)
      return (*_bn(w[None], rest[1], pre + ("BatchNorm_0",)), None)
    return "params", pre + ("kernel" + rest[0][-2:],), _conv1x1(w)[None], None
  assert parts[2] == "_ops" and parts[4] == "_ops", name
  edge, k, rest = int(parts[3]), int(parts[5]), parts[6:]
  reduction = i in (layers // 3, 2 * layers // 3)
  edge_ops = space.ops("reduce" if reduction else "normal")
  op = edge_ops[edge][k]
  endpoints = spaces.edge_endpoints()
  src = endpoints[edge][0]
  leaving = [e for e, (s, _) in enumerate(endpoints) if s == src]
  slot = [e for e in leaving if op in edge_ops[e]].index(edge)
  base = (cell, f"from_{src}", op)
  if op.endswith("pool_3x3"):
    return (*_bn(w[None], rest[1], base + ("BatchNorm_0",)), "shared")
  if op == "skip_connect":  # stride 2: FactorizedReduce
    if rest[0] == "bn":
      return (*_bn(w, rest[1], base + ("FactorizedReduce_0", "BatchNorm_0")), slot)
    return "params", base + ("FactorizedReduce_0", "kernel" + rest[0][-2:]), _conv1x1(w), slot
  if op.startswith("sep_conv"):
    layer = {"1": ("dw_1", _depthwise), "2": ("pw_1", _conv1x1), "3": ("bn_1", None),
             "5": ("dw_2", _depthwise), "6": ("pw_2", _conv1x1), "7": ("bn_2", None)}
    leaf, convert = layer[rest[1]]
    base = base + ("SepConv_0",)
  else:
    assert op.startswith("dil_conv"), name
    leaf, convert = {"1": ("dw", _depthwise), "2": ("pw", _conv1x1),
                     "3": ("BatchNorm_0", None)}[rest[1]]
    base = base + ("DilConv_0",)
  if convert is None:
    return (*_bn(w, rest[2], base + (leaf,)), slot)
  return "params", base + (leaf,), convert(w), slot


def official_to_flax(tensors: dict[str, np.ndarray], space: str, layers: int) -> dict:
  """Official weights/statistics {name: array} -> {"params": tree, "batch_stats": tree},
  the trees of `supernet.Supernet` (only the collections present in `tensors`).

  Layouts: convolutions OIHW -> HWIO, 1x1 convolutions [D, C] -> [C, D], depthwise
  [C, 1, k, k] -> [k, k, C]; the weights of one op on the E edges leaving one state are
  stacked into [E, ...] in edge order (ops.MixedOps), BatchNorm statistics likewise [E, C].
  """
  sp = spaces.get_space(space)
  rows: dict[tuple, dict] = {}
  for name, w in tensors.items():
    collection, path, value, slot = _target(name, np.asarray(w), sp, layers)
    key = (collection,) + path
    if slot is None:
      rows[key] = value
    elif slot == "shared":
      if key in rows:  # pooled edges from one state have equal statistics
        np.testing.assert_allclose(rows[key], value, rtol=1e-6, atol=1e-7, err_msg=name)
      rows[key] = value
    else:
      rows.setdefault(key, {})[slot] = value
  tree: dict = {}
  for key, value in rows.items():
    if isinstance(value, dict):
      assert sorted(value) == list(range(len(value))), key
      value = np.stack([value[e] for e in range(len(value))])
    node = tree
    for part in key[:-1]:
      node = node.setdefault(part, {})
    node[key[-1]] = jnp.asarray(value, jnp.float32)
  return tree


def official_state(space: str, params_key: str = "state/params",
                   buffers_key: str = "state/buffers") -> dict:
  fx = fixture(space)
  tensors = {**unpack(fx, fx[params_key], "params"), **unpack(fx, fx[buffers_key], "buffers")}
  return official_to_flax(tensors, space, int(fx["meta/layers"]))


# ---------------------------------------------------------------- comparison

def assert_close(got, want, tol: float, what: str, floor=None):
  """Every leaf: max (|got - want| - floor) <= tol * max |want|, with `floor` a tree of
  per-leaf absolute floors (default 0). Prints the largest such relative error."""
  got_leaves = jax.tree_util.tree_leaves_with_path(got)
  want_leaves = jax.tree.leaves(want)
  floors = [0.0] * len(want_leaves) if floor is None else jax.tree.leaves(floor)
  assert len(got_leaves) == len(want_leaves) == len(floors), what
  worst, where, failed = 0.0, "", []
  for (path, g), w, f in zip(got_leaves, want_leaves, floors):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    assert g.shape == w.shape, (what, jax.tree_util.keystr(path), g.shape, w.shape)
    scale = max(np.max(np.abs(w), initial=0.0), 1e-30)
    err = np.max(np.abs(g - w) - f, initial=0.0) / scale  # beyond the floor
    if err > tol:
      failed.append(f"{jax.tree_util.keystr(path)} ({err:.1e})")
    if err > worst:
      worst, where = err, jax.tree_util.keystr(path)
  print(f"{what}: max relative error {worst:.2e} {where}")
  assert not failed, f"{what}: relative error above {tol:.0e} at {', '.join(failed[:5])}"


def assert_change(got, want, start, what: str):
  """Compare parameters by the change the steps made to them (their values would hide
  errors in the updates, which are 1e-5 to 1e-3 of them), allowing ULPS roundings of the
  parameters themselves on top of TOL_CHANGE."""
  delta = lambda a: jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y), a,
                                 start)
  rounding = jax.tree.map(lambda w: ULPS * np.finfo(np.float32).eps * np.max(np.abs(w)), want)
  assert_close(delta(got), delta(want), TOL_CHANGE, what, rounding)


# ---------------------------------------------------------------- compiled functions

def full_precision():
  """float32 arithmetic in convolutions and matrix products (on GPUs JAX's default may
  round their inputs to TF32 or bfloat16, 1e-3 relative); no change on CPU."""
  return jax.default_matmul_precision("highest")


@functools.lru_cache(maxsize=None)
def forward_fn(space: str):
  """jit (params, stats, A, x, y, train) -> (logits, loss, new stats, (d/dparams, d/dA));
  `train` traced, so train- and eval-mode BatchNorm share one compilation."""
  model = model_of(space)

  def f(params, stats, A, x, y, train):
    def loss_fn(params, A):
      logits, new = model.apply({"params": params, "batch_stats": stats}, x, A, train,
                                mutable=["batch_stats"])
      return losses.cross_entropy(logits, y), (logits, new["batch_stats"])

    (loss, (logits, new)), grads = jax.value_and_grad(loss_fn, (0, 1), has_aux=True)(params, A)
    return logits, loss, new, grads

  return jax.jit(f)


@functools.lru_cache(maxsize=None)
def forward_results(space: str):
  fx = fixture(space)
  state = official_state(space)
  A = {t: jnp.asarray(fx[f"forward/A/{t}"]) for t in spaces.CELL_TYPES}
  x, y = images(fx["batch/train_x"][0]), jnp.asarray(fx["batch/train_y"][0], jnp.int32)
  f = forward_fn(space)
  with full_precision():
    logits, loss, stats, grads = f(state["params"], state["batch_stats"], A, x, y,
                                   jnp.bool_(True))
    logits_eval = f(state["params"], stats, A, x, y, jnp.bool_(False))[0]
  return logits, loss, stats, grads, logits_eval


def identity_preprocess(key, images):
  """The fixtures' images are normalised already and not augmented."""
  return images


@functools.lru_cache(maxsize=None)
def step_fn(space: str, method: str):
  fx = fixture(space)
  return jax.jit(scan_step.make_step(model_of(space), config_of(space, method),
                                int(fx["meta/steps_per_epoch"]), identity_preprocess))


def initial_state(space: str, method: str) -> dict:
  """The search state of the fixture's start (as run_search.init_state builds it)."""
  fx = fixture(space)
  config = config_of(space, method)
  spe = int(fx["meta/steps_per_epoch"])
  official = official_state(space)
  alpha = {t: jnp.asarray(fx[f"alpha/{t}"]) for t in spaces.CELL_TYPES}
  params = official["params"]
  start = jnp.int32(int(fx["meta/epoch"]) * spe)
  # Fresh optimizers (as the official ones are), the lr schedule at the fixture's epoch.
  w_opt = optim.weight_optimizer(config.weights, config.epochs, spe).init(params)
  return {"params": params, "batch_stats": official["batch_stats"], "alpha": alpha,
          "w_opt": optax.tree_utils.tree_set(w_opt, count=start),
          "a_opt": optim.alpha_optimizer(config.alpha).init(alpha), "step": start}


def batch_of(fx: dict, t: int) -> dict:
  return {"train_image": images(fx["batch/train_x"][t]),
          "train_label": jnp.asarray(fx["batch/train_y"][t], jnp.int32),
          "val_image": images(fx["batch/val_x"][t]),
          "val_label": jnp.asarray(fx["batch/val_y"][t], jnp.int32)}


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("space", ["s5", "s1"])
def test_official_weights_map_one_to_one(space):
  """Every Flax parameter and statistic comes from exactly one official tensor, same size."""
  model = model_of(space)
  fx = fixture(space)
  alpha = {t: jnp.asarray(fx[f"alpha/{t}"]) for t in spaces.CELL_TYPES}
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)),
                                             alpha, False))
  mapped = official_state(space)
  for collection in ("params", "batch_stats"):
    assert jax.tree.structure(mapped[collection]) == jax.tree.structure(shapes[collection])
    for a, b in zip(jax.tree.leaves(mapped[collection]), jax.tree.leaves(shapes[collection])):
      assert a.shape == b.shape
  n_official = sum(int(np.prod(s)) for _, s in json.loads(str(fx["layout/params"])))
  assert sum(a.size for a in jax.tree.leaves(mapped["params"])) == n_official


@pytest.mark.parametrize("space", FORWARD)
def test_forward_train_and_eval_batchnorm(space):
  fx = fixture(space)
  logits, loss, stats, _, logits_eval = forward_results(space)
  want_stats = official_state(space, buffers_key="forward/buffers")["batch_stats"]
  assert_close(logits, fx["forward/logits_train"], TOL_FORWARD, f"{space} logits (train BN)")
  assert_close(loss, fx["forward/loss"], TOL_FORWARD, f"{space} loss")
  assert_close(stats, want_stats, TOL_FORWARD, f"{space} running statistics")
  assert_close(logits_eval, fx["forward/logits_eval"], TOL_FORWARD, f"{space} logits (eval BN)")


@pytest.mark.parametrize("space", FORWARD)
def test_gradients(space):
  fx = fixture(space)
  grad_params, grad_A = forward_results(space)[3]
  layers = int(fx["meta/layers"])
  want = official_to_flax(unpack(fx, fx["forward/grad"], "params"), space, layers)["params"]
  assert_close(grad_params, want, TOL_GRAD, f"{space} d loss / d weights")
  assert_close(grad_A, {t: fx[f"forward/grad_A/{t}"] for t in spaces.CELL_TYPES}, TOL_GRAD,
               f"{space} d loss / d A")


@pytest.mark.parametrize("space,method", [r for r in RUNS if r[1] != "darts"])
def test_jax_draws_are_the_noise_fed_to_the_official_code(space, method):
  """The fixtures hold the JAX step's draws at the time they were made: if JAX's random
  numbers or the step's key layout change, regenerate them (README, "Golden tests").
  Equal up to one float32 rounding: whether XLA fuses U(0, 1) * 2 eps - eps into one
  multiply-add depends on its optimisation level."""
  fx = fixture(space)
  config = config_of(space, method)
  spe = int(fx["meta/steps_per_epoch"])
  start = int(fx["meta/epoch"]) * spe
  for t in range(fx[f"{method}/noise/normal"].shape[0]):
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), start + t)
    k_perturb = jax.random.split(key, 4)[2]  # as scan_step.make_step splits it
    eps = optim.eps_at(jnp.int32(start + t), config.perturb, config.epochs, spe)
    # float32 0.03 + 0.27 * 40 / 50: three roundings, up to 1.5 ulps (6e-8 each at 0.246)
    # against the official value rounded once, where rtol=1e-7 allowed one; no cancellation.
    np.testing.assert_allclose(eps, fx[f"{method}/eps"], rtol=1e-6)
    A = {t_: jnp.zeros(fx[f"alpha/{t_}"].shape) for t_ in spaces.CELL_TYPES}
    noise = perturb.uniform_noise(k_perturb, A, eps)
    for cell_type in spaces.CELL_TYPES:
      np.testing.assert_allclose(noise[cell_type], fx[f"{method}/noise/{cell_type}"][t],
                                 rtol=0, atol=2 * np.finfo(np.float32).eps * eps,
                                 err_msg="regenerate tests/golden (tools/golden.py)")


@pytest.mark.parametrize("space,method", RUNS)
def test_search_steps(space, method):
  """2 steps of the JAX step from the official start: losses and alpha after every step,
  then weights, statistics and optimizer states, against the official train() loop."""
  fx = fixture(space)
  state = initial_state(space, method)
  start = state
  fn = step_fn(space, method)
  label = f"{space} {method}"
  lr_terms = config_of(space, method).weights.lr  # >= lr_min + 0.5 (lr - lr_min)(1 + |cos|)
  for t in range(fx[f"{method}/train_loss"].shape[0]):
    with full_precision():
      state, metrics = fn(state, batch_of(fx, t))
    # The cosine lr at epoch 41 of 50: 1 + cos = 0.16 cancels, so float32 leaves roundings
    # of cos times 0.012 (7e-10 each, 2.4e-7 of the lr 0.0029: observed one, where rtol=1e-6
    # allowed four); bounded by the terms' scale, 1e-6 of lr_terms (35 roundings of cos).
    np.testing.assert_allclose(metrics["lr"], fx[f"{method}/lr"], rtol=0, atol=1e-6 * lr_terms)
    np.testing.assert_allclose(metrics["eps"], fx[f"{method}/eps"], rtol=1e-6)  # as above
    step_losses = {"val_loss": metrics["val_loss"], "train_loss": metrics["train_loss"]}
    if method == "adv":
      step_losses.update(clean_loss=metrics["clean_loss"], attacked_loss=metrics["attacked_loss"])
      assert bool(metrics["attack_kept"]) == bool(fx["adv/attack_kept"][t])
    assert_close(step_losses, {k: fx[f"{method}/{k}"][t] for k in step_losses}, TOL_STEP,
                 f"{label} losses")
    alpha = {c: fx[f"{method}/alpha/{c}"][t] for c in spaces.CELL_TYPES}
    assert_change(state["alpha"], alpha, start["alpha"], f"{label} alpha change")
  want = official_state(space, f"{method}/params", f"{method}/buffers")
  assert_change(state["params"], want["params"], start["params"], f"{label} weight change")
  assert_close(state["batch_stats"], want["batch_stats"], TOL_STEP, f"{label} statistics")
  momentum = official_to_flax(unpack(fx, fx[f"{method}/momentum"], "params"), space,
                              int(fx["meta/layers"]))["params"]
  assert_close(optax.tree_utils.tree_get(state["w_opt"], "trace"), momentum, TOL_STEP,
               f"{label} SGD momentum")
  adam = {"mu": {c: fx[f"{method}/adam/exp_avg/{c}"] for c in spaces.CELL_TYPES},
          "nu": {c: fx[f"{method}/adam/exp_avg_sq/{c}"] for c in spaces.CELL_TYPES}}
  got = {k: optax.tree_utils.tree_get(state["a_opt"], k) for k in adam}
  assert_close(got, adam, TOL_STEP, f"{label} Adam moments")
  assert int(optax.tree_utils.tree_get(state["a_opt"], "count")) == int(fx[f"{method}/adam/step"])


def test_official_unrolled_alpha_step():
  """DARTS's second-order alpha step with the official central difference for H v
  (config.alpha.order=2, alpha.hvp=finite_difference: the compiled step's unroll,
  unrolled_val, hvp_plus and hvp_minus phases) from the s1 fixture's state, with SGD
  momentum buffers (the official ones after two DARTS steps), against one official
  `Architect.step(..., unrolled=True)` on the same state and batches
  (tests/golden/s1_unrolled.npz, tools/golden_unrolled.py): the validation loss at the
  unrolled weights, Adam's moments (the first is 0.5 (g + 1e-3 alpha), g the official
  alpha gradient grad L_val(w') - eta H v) and alpha's change. (BatchNorm's running
  statistics are not compared: the official step updates them three times,
  docs/deviations.md.)"""
  fx, ux = fixture("s1"), fixture("s1_unrolled")
  config = config_of("s1", "darts")
  config.alpha.order, config.alpha.hvp, config.alpha.hvp_r = 2, "finite_difference", 1e-2
  spe = int(fx["meta/steps_per_epoch"])
  start = initial_state("s1", "darts")
  momentum = official_to_flax(unpack(fx, fx["darts/momentum"], "params"), "s1",
                              int(fx["meta/layers"]))["params"]
  start = dict(start, w_opt=optax.tree_utils.tree_set(start["w_opt"], trace=momentum))
  fn = jax.jit(scan_step.make_step(model_of("s1"), config, spe, identity_preprocess))
  with full_precision():
    state, metrics = fn(start, batch_of(fx, 0))
  # The cancelling cosine lr, as in test_search_steps: bounded by its terms' scale.
  np.testing.assert_allclose(metrics["lr"], ux["unrolled/lr"], rtol=0,
                             atol=1e-6 * config.weights.lr)
  assert_close(metrics["val_loss"], ux["unrolled/val_loss"], TOL_UNROLLED,
               "s1 unrolled val loss")
  adam = {"mu": {c: ux[f"unrolled/adam/exp_avg/{c}"] for c in spaces.CELL_TYPES},
          "nu": {c: ux[f"unrolled/adam/exp_avg_sq/{c}"] for c in spaces.CELL_TYPES}}
  got = {k: optax.tree_utils.tree_get(state["a_opt"], k) for k in adam}
  assert_close(got, adam, TOL_UNROLLED, "s1 unrolled Adam moments")
  alpha = {c: ux[f"unrolled/alpha/{c}"] for c in spaces.CELL_TYPES}
  assert_change(state["alpha"], alpha, start["alpha"], "s1 unrolled alpha change")


@pytest.mark.parametrize("space,method", [r for r in RUNS if r[1] != "adv"])
def test_mixing_weights_of_the_weight_step_equal_the_official(space, method):
  """The A the official weight step used (its softmax of alpha, plus for RS the fed noise
  and its clamp-and-renormalise), at every step, from the official alpha after that step's
  update: `supernet.mixing_weights` and `perturb.clip` applied to the same numbers give it.
  (ADV's A comes out of PGD's gradients: test_search_steps checks its effect.)"""
  fx = fixture(space)
  for t in range(fx[f"{method}/train_loss"].shape[0]):
    A = supernet.mixing_weights({c: jnp.asarray(fx[f"{method}/alpha/{c}"][t])
                             for c in spaces.CELL_TYPES})
    if method == "rs":
      A = perturb.clip({c: A[c] + fx[f"rs/noise/{c}"][t] for c in spaces.CELL_TYPES})
    # Normwise: RS's A + noise cancels toward zero before the clamp, so entries there keep
    # roundings of the terms' scale (0.3), which atol=1e-7 bounded by 5; a softmax entry
    # carries a few roundings of the row. 1e-6 of the array's largest entry is 16 roundings
    # of it (observed 6e-8).
    for c in spaces.CELL_TYPES:
      want = fx[f"{method}/A_weights/{c}"][t]
      np.testing.assert_allclose(A[c], want, rtol=0, atol=1e-6 * np.max(np.abs(want)),
                                 err_msg=f"{space} {method} step {t} {c}")
