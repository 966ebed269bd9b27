"""The SDARTS step: the scan-of-phases program against the step written out plainly
(`step.plain_step`), the PGD invariants, eps and lr across an epoch boundary, and
device-count invariance."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_close_normwise, tiny_search
from sdarts_jax.data import pipeline
from sdarts_jax.model import losses, supernet
from sdarts_jax.run import parallel
from sdarts_jax.search import genotype, perturb, scan_step, step

SPE = 4  # steps per epoch used by the schedules


@functools.lru_cache(maxsize=None)
def setup(method):
  """(config, model, initial state, batches, preprocess) for a tiny search."""
  return tiny_search(method, SPE)


@functools.lru_cache(maxsize=None)
def compiled_step(method):
  config, model, _, _, preprocess = setup(method)
  return jax.jit(scan_step.make_step(model, config, SPE, preprocess))


@functools.lru_cache(maxsize=None)
def compiled_reference(method):
  config, model, _, _, preprocess = setup(method)
  return jax.jit(step.plain_step(model, config, SPE, preprocess))


# ADV runs every phase of the scan (alpha, clean, pgd, attacked, weights); DARTS and RS (the
# alpha and weights phases, RS's noise) are checked against the official code by
# test_golden.py's search steps, so they are not compiled a second time here (CI budget).
@pytest.mark.parametrize("method", ["adv"])
def test_step_equals_plain_reference(method):
  _, _, state, batches, _ = setup(method)
  batch = batches.batch(0, 0)
  got, metrics = compiled_step(method)(state, batch)
  want, _, clean = compiled_reference(method)(state, batch)
  # Per leaf, normwise: the leaves span 1e-14 (Adam's second moments) to 1 (weights), so a
  # fixed atol (2e-6 before) made the small ones vacuous, and gradient-like leaves (the
  # optimizers' moments) cancel toward zero entrywise. Two float32 programs of one step
  # differ by roundings of each leaf's scale amplified by train-mode BatchNorm: observed
  # 1.8e-6 of the leaf at most; 5e-5 (test_golden's TOL_STEP) leaves 28x.
  for name in ("params", "batch_stats", "alpha", "a_opt", "w_opt", "step"):
    assert_close_normwise(got[name], want[name], 5e-5, err_msg=name)
  assert set(metrics) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "eps", "lr"}
  if method == "adv":
    # A mean of positive cross-entropies: well conditioned (relative error of a few
    # roundings of the logits' scale; observed 0); 1e-5.
    np.testing.assert_allclose(metrics["clean_loss"], clean, rtol=1e-5)


@functools.lru_cache(maxsize=None)
def inference_loss():
  """(loss(variables, A, x, y), its gradient w.r.t. A): BatchNorm in inference mode."""
  _, model, _, _, _ = setup("adv")

  def loss(variables, A, x, y):
    logits = model.apply(variables, x, A, False, rngs={"noise": jax.random.PRNGKey(0)})
    return losses.cross_entropy(logits, y)

  return jax.jit(loss), jax.jit(jax.grad(loss, argnums=1))


def test_pgd_raises_the_loss_over_its_random_starts():
  """From each of 6 random starts (3 batches x 2 keys) at eps = 0.3, the package's PGD
  steps (`perturb.pgd_update`, step size of docs/method.md 1.3) end at a higher inference-mode loss
  than the start: the ascent goes uphill."""
  config, _, state, batches, preprocess = setup("adv")
  loss, grad = inference_loss()
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  A, eps, n = supernet.mixing_weights(state["alpha"]), 0.3, config.perturb.steps
  gains = []
  for b in range(3):
    batch = batches.batch(0, b)
    x, y = preprocess(jax.random.PRNGKey(b), batch["train_image"]), batch["train_label"]
    for k in range(2):
      start = A_adv = perturb.random_start(jax.random.PRNGKey(10 + k), A, eps)
      for _ in range(n):
        A_adv = perturb.pgd_update(A_adv, grad(variables, A_adv, x, y), A, eps, 2 * eps / n)
      gains.append(float(loss(variables, A_adv, x, y) - loss(variables, start, x, y)))
  assert min(gains) > 0, gains


def test_attack_sees_inference_batchnorm():
  """The step's clean loss (the attack's reference point) equals the loss with BatchNorm's
  running statistics (those after the alpha step's train-mode pass) at the updated A,
  recomputed here from model.apply; with batch statistics it would differ."""
  config, model, state, batches, preprocess = setup("adv")
  batch = batches.batch(0, 1)
  new_state, metrics = compiled_step("adv")(state, batch)
  k_aug_t, k_aug_v, _, _ = jax.random.split(
      jax.random.fold_in(jax.random.PRNGKey(config.seed), state["step"]), 4)
  x, xv = preprocess(k_aug_t, batch["train_image"]), preprocess(k_aug_v, batch["val_image"])
  params = state["params"]
  _, after_alpha_step = model.apply(
      {"params": params, "batch_stats": state["batch_stats"]}, xv,
      supernet.mixing_weights(state["alpha"]), True, mutable=["batch_stats"],
      rngs={"noise": jax.random.PRNGKey(0)})
  variables = {"params": params, "batch_stats": after_alpha_step["batch_stats"]}
  A = supernet.mixing_weights(new_state["alpha"])
  want = inference_loss()[0](variables, A, x, batch["train_label"])
  np.testing.assert_allclose(metrics["clean_loss"], want, rtol=1e-5)  # as above (observed 0)
  train_bn = losses.cross_entropy(model.apply(variables, x, A, True, mutable=["batch_stats"],
                                            rngs={"noise": jax.random.PRNGKey(0)})[0],
                                batch["train_label"])
  assert abs(float(train_bn) - float(want)) > 1e-3 * float(want)


def test_eps_and_lr_used_across_an_epoch_boundary():
  """The eps and lr the step reports at the last step of epoch 0 and the first of epoch 1
  (2 epochs, eps 0.03 -> 0.3, cosine 0.025 -> 0.001 with the reference's epoch offset),
  by hand."""
  _, _, state, batches, _ = setup("rs")
  for count, eps, lr in ((SPE - 1, 0.03, 0.001 + 0.012), (SPE, 0.03 + 0.27 / 2, 0.001)):
    m = compiled_step("rs")(dict(state, step=jnp.asarray(count, jnp.int32)), batches.batch(0, 0))[1]
    # float32 eps: 2-3 roundings, no cancellation. lr = 0.001 + 0.012 (1 + cos): at the
    # epoch boundary 1 + cos(pi) cancels, leaving roundings of cos times 0.012 (7e-10 each,
    # 7e-7 of lr: rtol=1e-6 allowed one); bounded by the terms' scale 0.025 (1e-6 of it).
    np.testing.assert_allclose(m["eps"], eps, rtol=1e-6, err_msg=str(count))
    np.testing.assert_allclose(m["lr"], lr, rtol=0, atol=1e-6 * 0.025, err_msg=str(count))


def test_one_and_four_devices_agree():
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices (conftest sets XLA_FLAGS for 4 CPU devices)")
  config, model, state, batches, preprocess = setup("adv")
  results = []
  for n in (1, 4):
    mesh = parallel.make_mesh(n)
    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    fn = jax.jit(scan_step.make_step(model, config, SPE, preprocess), in_shardings=(rep, shard),
                 out_shardings=(rep, rep))
    s = jax.device_put(state, rep)
    for i in range(3):
      s, _ = fn(s, pipeline.to_global(batches.batch(0, i), shard))
    results.append(jax.device_get(s))
  # Per leaf, normwise, as in test_step_equals_plain_reference (atol=1e-5 made the leaves
  # below 1e-5 vacuous): batch sums split over 4 devices, 3 steps; observed 4.3e-6 of the
  # leaf at most; 1e-4 leaves 23x and is 10x below a missing cross-device reduction.
  assert_close_normwise(results[0], results[1], 1e-4)
  genos = [genotype.derive(jax.device_get(supernet.mixing_weights(r["alpha"])), model.space)
           for r in results]
  assert genos[0] == genos[1]
