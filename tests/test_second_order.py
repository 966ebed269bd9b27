"""DARTS's second-order alpha step (config.alpha.order = 2, `sdarts_jax.search.unrolled`): the exact
hypergradient against jax.grad straight through the virtual SGD step (float64), the
reference's central difference converging to it, and the compiled scan step against the
same update written out plainly. The independent reference, the official code's second-order
alpha step on the golden s1 state, is tests/test_golden.py::test_official_unrolled_alpha_step.

Compilation is the cost of these tests, so the supernet is smaller than conftest's tiny one:
one reduction cell (C=8, so 16 channels) whose edge 0 carries sep_conv_3x3 and skip_connect
(FactorizedReduce), every other edge none and skip_connect. That sep_conv runs both
convolutions with a written-out backward pass that reverse-over-reverse differentiates: the
shifted multiply-adds (16 channels, stride 2) and the dense fused kernel (stride 1).
"""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import override, tiny_config
from sdarts_jax.data import pipeline
from sdarts_jax.defaults import from_file
from sdarts_jax.model import losses, ops, spaces, supernet
from sdarts_jax.model.kernels import Need
from sdarts_jax.search import optim, run_search, scan_step, step, unrolled

SPE = 4  # steps per epoch used by the schedules
EDGES = (("skip_connect", "sep_conv_3x3"),) + (("none", "skip_connect"),) * 13
SPACE = spaces.SearchSpace("second_order_test", EDGES, EDGES)
KEY = jax.random.PRNGKey(0)


@functools.lru_cache(maxsize=None)
def setup(channels=8):
  """(config, model, state, batches, preprocess) of a darts2 search (one reduction cell of
  2 * channels channels); the state's momentum
  buffer is non-zero (as after some weight steps) so that the unrolled weights use it, and
  preprocess only normalises (the augmentation is not what these tests check)."""
  config = tiny_config("darts2", **{"model.channels": channels})
  source = pipeline.load(config.data, "train")
  batches = pipeline.SearchBatches(source, 0.5, config.data.batch_size, config.seed)
  m = config.model
  model = supernet.Supernet(SPACE, source.num_classes, m.channels, m.layers,
                            m.stem_multiplier, "fused", m.bn_momentum)
  state = jax.jit(lambda: run_search.init_state(model, config, source.images.shape[1:], SPE))()
  buf = jax.tree.map(lambda w: 0.5 * w, state["params"])
  state = dict(state, w_opt=optax.tree_utils.tree_set(state["w_opt"], trace=buf))
  preprocess = lambda key, images: pipeline.preprocess(key, images, source.mean, source.std, False)
  return config, model, state, batches, preprocess


def loss_of(model, params, stats, A, x, y, key):
  """The cross-entropy, BatchNorm in train mode, straight from model.apply."""
  logits, _ = model.apply({"params": params, "batch_stats": stats}, x, A, True,
                          mutable=["batch_stats"], rngs={"noise": key})
  return losses.cross_entropy(logits, y)


def unrolled_val_loss(model, params, stats, A, train, val, buf, lr, weights_cfg, keys):
  """L_val(w - lr (momentum buf + grad_w L_train(w, A) + wd w), A): the function whose
  gradient w.r.t. A the second order descends, written out for jax.grad."""
  grad = jax.grad(lambda p: loss_of(model, p, stats, A, *train, keys[0]))(params)
  w_virtual = jax.tree.map(
      lambda w, g, b: w - lr * (weights_cfg.momentum * b + g + weights_cfg.weight_decay * w),
      params, grad, buf)
  return loss_of(model, w_virtual, stats, A, *val, keys[1])


# ---------------------------------------------------------------- float64

@functools.lru_cache(maxsize=None)
def first_step64(channels=8) -> dict:
  """The first darts2 step's inputs and second-order quantities in float64 (numpy): its
  (normalised) batches, lr and state, v, grad_A L_val(w'), the exact H v, and `straight`, the
  gradient w.r.t. A by jax.grad through the virtual step; with the jitted `evaluate` (call
  it under jax.enable_x64). The test space has no noise op: the evaluations' keys do not
  matter."""
  config, model, state, batches, preprocess = setup(channels)
  batch = batches.batch(0, 0)
  k_aug_t, k_aug_v, _, _ = jax.random.split(
      jax.random.fold_in(jax.random.PRNGKey(config.seed), state["step"]), 4)
  f64 = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float64), tree)
  out = dict(
      state=f64({k: state[k] for k in ("params", "batch_stats", "alpha", "w_opt", "a_opt")}),
      train=(f64(preprocess(k_aug_t, batch["train_image"])), batch["train_label"]),
      val=(f64(preprocess(k_aug_v, batch["val_image"])), batch["val_label"]),
      lr=float(optim.weight_lr(config.weights, config.epochs, SPE)(state["step"])))
  with jax.enable_x64(True):
    s, train, val, lr = out["state"], out["train"], out["val"], out["lr"]
    w, stats, A = s["params"], s["batch_stats"], supernet.mixing_weights(s["alpha"])
    buf, all_grads = unrolled.momentum_buffer(s["w_opt"]), jnp.int32(Need.ALL_GRADS)
    evaluate = jax.jit(step.make_evaluate(model))
    ev_train = evaluate(w, stats, A, *train, True, KEY, all_grads)
    w_virtual = unrolled.virtual_weights(w, ev_train.grad_params, buf, lr,
                                         config.weights.momentum, config.weights.weight_decay)
    ev_val = evaluate(w_virtual, stats, A, *val, True, KEY, all_grads)
    v = ev_val.grad_params
    hvp = jax.jit(step.make_mixed_evaluate(model))(w, stats, A, *train, True, KEY, all_grads,
                                                   v).grad_A
    straight = jax.jit(jax.grad(lambda A: unrolled_val_loss(
        model, w, stats, A, train, val, buf, lr, config.weights, (KEY, KEY))))(A)
    out.update(jax.device_get(dict(v=v, grad_A=ev_val.grad_A, hvp=hvp, straight=straight)))
  return dict(out, evaluate=evaluate)


@pytest.mark.parametrize("channels, shifted", [(8, True), (4, False)])
def test_exact_hypergradient_equals_grad_through_the_virtual_step(channels, shifted):
  """grad_A L_val(w') - lr H v, with H v by reverse over reverse (`make_mixed_evaluate`),
  equals jax.grad of L_val(w - lr (momentum buf + grad_w L_train + wd w), A) w.r.t. A, in
  float64; the H v term is far from negligible. The separable convolutions take the
  shifted path (`ops.uses_shifted`) at 8 channels (16 in the reduction cell), the
  dense fused kernel at 4."""
  assert ops.uses_shifted("fused", 2 * channels) == shifted
  p = first_step64(channels)
  with jax.enable_x64(True):
    got = jax.device_get(unrolled.hypergradient(p["grad_A"], p["hvp"], p["lr"]))
  for name, want in p["straight"].items():
    np.testing.assert_allclose(got[name], want, rtol=1e-9,
                               atol=1e-12 * np.max(np.abs(want)), err_msg=name)
  term = np.max(np.abs(p["lr"] * p["hvp"]["reduce"]))
  assert term > 1e-3 * np.max(np.abs(p["straight"]["reduce"])), term


def test_central_difference_approaches_the_exact_product():
  """The reference's central difference (grad_A L_train(w + R v) - grad_A L_train(w - R v))
  / 2R, R = r / ||v||, approaches the exact H v as r shrinks from the reference's 1e-2 to
  1e-5 (float64). Its error falls slowly (about as r) while w +- R v moves ReLUs across
  their kinks, where the gradient jumps (here down to r = 1e-3), then as r^2."""
  p = first_step64()
  s, v, hvp = p["state"], p["v"], p["hvp"]
  errors = []
  with jax.enable_x64(True):
    args = (s["batch_stats"], supernet.mixing_weights(s["alpha"]), *p["train"], True, KEY,
            jnp.int32(Need.INPUT_GRADS))
    for r in (1e-2, 1e-3, 1e-4, 1e-5):
      radius = unrolled.fd_radius(v, r)
      plus = p["evaluate"](unrolled.shifted(s["params"], v, radius), *args).grad_A
      minus = p["evaluate"](unrolled.shifted(s["params"], v, -radius), *args).grad_A
      fd = jax.device_get(unrolled.central_difference(plus, minus, radius))
      errors.append(max(np.max(np.abs(fd[k] - hvp[k])) for k in hvp))
  scale = max(np.max(np.abs(hvp[k])) for k in hvp)
  assert all(b < a / 2 for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 1e-4 * scale, (errors, scale)


# ---------------------------------------------------------------- the compiled step

def plain_second_order_step(config, p: dict) -> dict:
  """The first darts2 step written out without the scan, in float64 (call it under
  jax.enable_x64): Adam on alpha from `straight` (jax.grad through the virtual step);
  BatchNorm's running statistics from the train pass at w (not from the evaluations at w'
  or of H v); the weight step at the new A."""
  @jax.jit
  def alpha_step(grad_A, alpha, a_opt):
    g_alpha = jax.vjp(supernet.mixing_weights, alpha)[1](grad_A)[0]
    upd, a_opt = optim.alpha_optimizer(config.alpha).update(g_alpha, a_opt, alpha)
    return optax.apply_updates(alpha, upd), a_opt

  @jax.jit
  def weight_step(grad, w_opt, w):
    upd, w_opt = optim.weight_optimizer(config.weights, config.epochs, SPE).update(
        grad, w_opt, w)
    return optax.apply_updates(w, upd), w_opt

  s, train, all_grads = p["state"], p["train"], jnp.int32(Need.ALL_GRADS)
  w, A = s["params"], supernet.mixing_weights(s["alpha"])
  alpha, a_opt = alpha_step(p["straight"], s["alpha"], s["a_opt"])
  stats = p["evaluate"](w, s["batch_stats"], A, *train, True, KEY, all_grads).batch_stats
  ev = p["evaluate"](w, stats, supernet.mixing_weights(alpha), *train, True, KEY, all_grads)
  params, w_opt = weight_step(ev.grad_params, s["w_opt"], w)
  return dict(params=params, batch_stats=ev.batch_stats, alpha=alpha, a_opt=a_opt,
              w_opt=w_opt)


def test_darts2_step_equals_plain_second_order_update():
  """The compiled scan step of method darts2 (exact H v, one evaluation in a lax.cond of
  the scan's body) equals the plain step in float64: alpha, Adam's moments (whose first
  holds the hypergradient), the weights, the optimizer states, BatchNorm's statistics."""
  config, model, state, batches, preprocess = setup()
  assert step.phases(config.method, config.perturb.steps, config.alpha.order,
                     config.alpha.hvp) == ("unroll", "unrolled_val", "hvp", "weights")
  got, metrics = jax.jit(scan_step.make_step(model, config, SPE, preprocess))(
      state, batches.batch(0, 0))
  with jax.enable_x64(True):
    want = jax.device_get(plain_second_order_step(config, first_step64()))
  # float32 step against float64, per leaf and normwise: the leaves span 1e-14 (Adam's
  # second moments) to 1, so atol=2e-6 made the small ones vacuous, and the moments are
  # gradients that cancel toward zero entrywise. The step's roundings of each leaf's scale,
  # amplified by train-mode BatchNorm: observed 1.1e-6 of the leaf at most; bound 5e-5.
  for name, tree in want.items():
    for a, b in zip(jax.tree.leaves(got[name]), jax.tree.leaves(tree)):
      np.testing.assert_allclose(a, b, rtol=0, atol=5e-5 * np.max(np.abs(b)), err_msg=name)
  assert int(got["step"]) == 1 and np.isfinite(float(metrics["val_loss"]))


@pytest.mark.parametrize("method", ["rs", "adv"])
def test_second_order_rs_and_adv_steps_equal_plain_reference(method):
  """RS and ADV with the second-order alpha step (order=2: the reference's --unrolled with
  --perturb_alpha): the compiled scan step (unroll, unrolled_val, hvp, then RS's noise or
  ADV's clean, PGD and attacked evaluations, then the weights) equals `step.plain_step`,
  which takes the alpha gradient by jax.grad straight through the virtual step
  and perturbs and steps the weights as the first-order step does (test_step.py checks
  that part against the scan at order 1): alpha, Adam's moments, the weights, SGD's
  momentum, BatchNorm's statistics."""
  base, model, state, batches, preprocess = setup()
  config = override(base.copy_and_resolve_references(), {"method": method})
  assert step.phases(method, config.perturb.steps, 2)[:3] == ("unroll", "unrolled_val", "hvp")
  batch = batches.batch(0, 0)
  got, metrics = jax.jit(scan_step.make_step(model, config, SPE, preprocess))(state, batch)
  # float32 like the step: in float64 the RS noise and PGD's random start would be other
  # draws.
  want, _, clean = jax.jit(step.plain_step(model, config, SPE, preprocess))(state, batch)
  # Per leaf, normwise, as in test_darts2_step_equals_plain_second_order_update (atol=2e-6
  # made the leaves below 1e-5, down to Adam's 7e-15, vacuous): observed 4.7e-7 of the
  # leaf at most; bound 5e-5. The clean loss is a mean of positive terms: rtol.
  for name in ("params", "batch_stats", "alpha", "a_opt", "w_opt"):
    for a, b in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want[name])):
      np.testing.assert_allclose(a, b, rtol=0, atol=5e-5 * np.max(np.abs(b)), err_msg=name)
  if method == "adv":
    np.testing.assert_allclose(metrics["clean_loss"], clean, rtol=1e-5)


# ---------------------------------------------------------------- configs

def test_configs_name_the_second_order():
  """darts2 is darts with config.alpha.order = 2 (its own config file, with a smoke
  variant, and method=darts2 where configs take a method); order=2 gives RS and ADV the
  second-order alpha step, as the reference's --unrolled does; mistakes are one clear
  error before anything is built."""
  smoke = from_file("cifar10_darts2", "smoke")
  assert (smoke.method, smoke.alpha.order, smoke.alpha.hvp, smoke.epochs) == (
      "darts", 2, "exact", 2)
  run_search.check_config(smoke)
  assert from_file("cifar10_adv", "order=2,smoke").alpha.order == 2
  assert from_file("cifar10_adv", "").alpha.order == 1
  nb201 = from_file("nb201_search", "method=darts2,smoke")
  assert (nb201.method, nb201.alpha.order) == ("darts", 2)
  assert step.phases("adv", 2, 2, "finite_difference") == (
      "unroll", "unrolled_val", "hvp_plus", "hvp_minus", "clean", "pgd", "pgd", "attacked",
      "weights")
  for field, value, message in (("order", 3, "config.alpha.order=3"),
                                ("hvp", "fd", "config.alpha.hvp='fd'"),
                                ("hvp_r", 0.0, "config.alpha.hvp_r=0.0")):
    bad = from_file("cifar10_darts2", "smoke")
    bad.alpha[field] = value
    with pytest.raises(ValueError, match=re.escape(message)):
      run_search.check_config(bad)
  with pytest.raises(ValueError, match="order=1 or order=2"):
    from_file("cifar10_rs", "order=3")
