"""Optimizers and schedules against hand-computed updates and the references' formulas."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from sdarts_jax.defaults import from_file
from sdarts_jax.evaluation import defaults, train
from sdarts_jax.search import optim


def test_alpha_optimizer_is_pytorch_adam_with_coupled_l2():
  cfg = tiny_config().alpha
  opt = optim.alpha_optimizer(cfg)
  w = jnp.array([0.3, -0.2])
  grads = [jnp.array([0.1, 0.4]), jnp.array([-0.2, 0.05])]
  state, m, v, ref = opt.init(w), np.zeros(2), np.zeros(2), np.asarray(w, np.float64)
  for t, g in enumerate(grads, start=1):
    upd, state = opt.update(g, state, w)
    w = optax.apply_updates(w, upd)
    d = np.asarray(g) + cfg.weight_decay * ref            # coupled L2
    m = cfg.b1 * m + (1 - cfg.b1) * d
    v = cfg.b2 * v + (1 - cfg.b2) * d**2
    denom = np.sqrt(v) / np.sqrt(1 - cfg.b2**t) + cfg.adam_eps
    ref = ref - cfg.lr / (1 - cfg.b1**t) * m / denom
    # float32 w (0.2-0.3, no cancellation: the updates are 1e-3 of it) against float64: a
    # few roundings of w (observed 3e-8); 1e-6 is 16 roundings.
    np.testing.assert_allclose(w, ref, rtol=1e-6)


def test_weight_optimizer_is_clip_decay_momentum_sgd():
  cfg = tiny_config().weights
  epochs, spe = 10, 2
  opt = optim.weight_optimizer(cfg, epochs, spe)
  w = {"a": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}
  grads = [{"a": jnp.array([3.0, 4.0]), "b": jnp.array([12.0])},   # norm 13 > 5: clipped
           {"a": jnp.array([0.1, -0.2]), "b": jnp.array([0.3])},   # small: not clipped
           {"a": jnp.array([1.0, 1.0]), "b": jnp.array([-1.0])}]
  state = opt.init(w)
  ref = {k: np.asarray(v, np.float64) for k, v in w.items()}
  buf = {k: np.zeros_like(v) for k, v in ref.items()}
  for t, g in enumerate(grads):
    upd, state = opt.update(g, state, w)
    w = optax.apply_updates(w, upd)
    norm = np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in g.values()))
    scale = min(1.0, cfg.grad_clip / norm)
    e = t // spe + cfg.lr_epoch_offset
    lr = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + np.cos(np.pi * e / epochs))
    for k in ref:
      d = np.asarray(g[k]) * scale + cfg.weight_decay * ref[k]
      buf[k] = cfg.momentum * buf[k] + d
      ref[k] = ref[k] - lr * buf[k]
      # As above: w (0.5-2) moves by lr * buf, 1e-2 of it; observed 1.2e-7, 1e-5 is 80x.
      np.testing.assert_allclose(w[k], ref[k], rtol=1e-5, err_msg=f"step {t} {k}")


def test_schedules():
  cfg = tiny_config()
  lr = optim.weight_lr(cfg.weights, 50, 10)
  # The reference steps its scheduler first: epoch 0 uses the cosine value at epoch 1.
  # float32 schedules: lr_min + 0.012 (1 + cos): near 1 + cos = 2 a few roundings (observed
  # 7e-9; rtol 1e-6 is 16 roundings); at the end 1 + cos(pi) cancels, leaving k roundings
  # of cos (7e-10 each) on lr_min = 0.001: rtol 1e-5 allows 14 (observed 5e-8).
  np.testing.assert_allclose(lr(0), 0.001 + 0.024 * 0.5 * (1 + np.cos(np.pi / 50)), rtol=1e-6)
  np.testing.assert_array_equal(lr(9), lr(0))  # the same epoch: the same computation
  np.testing.assert_allclose(lr(49 * 10), 0.001, rtol=1e-5)  # epoch 49 uses epoch 50: lr_min
  eps = [float(optim.eps_at(s, cfg.perturb, 50, 10)) for s in (0, 9, 10, 499)]
  # Python ints in, float64 out (no XLA): the default rtol 1e-7 holds on any machine.
  np.testing.assert_allclose(eps, [0.03, 0.03, 0.03 + 0.27 / 50, 0.03 + 0.27 * 49 / 50])


def test_learning_rate_schedules_follow_the_references():
  spe = 3
  cfg = from_file("imagenet_eval").optim  # linear, 5 warm-up epochs
  lr = optim.training_lr(cfg, 250, spe)

  def official(epoch, epochs=250, base=0.5):  # sota/cnn/train_imagenet.py, batch 1024
    if epochs - epoch > 5:  # adjust_lr
      value = base * (epochs - 5 - epoch) / (epochs - 5)
    else:
      value = base * (epochs - epoch) / ((epochs - 5) * 5)
    return base * (epoch + 1) / 5.0 if epoch < 5 else value  # the warm-up overwrites it

  for epoch in (0, 1, 4, 5, 100, 244, 245, 249):
    # A ratio of exact integers times lr, rounded to float32: 2-3 roundings (observed 4e-8).
    np.testing.assert_allclose(lr(epoch * spe + 1), official(epoch), rtol=1e-6)
  cfg = defaults.cifar_config().optim  # cosine to 0; the scheduler steps before epoch e
  lr = optim.training_lr(cfg, 600, spe)
  for epoch in (0, 299, 599):
    # 0.0125 (1 + cos) cancels to 0 at the last epoch, where float32 leaves k roundings of
    # cos times 0.0125 (7.5e-10 each; observed 1, which atol=1e-9 left 1.3x): bounded by the
    # terms' scale 0.025, 1e-6 of it (33 roundings of cos); elsewhere no cancellation.
    np.testing.assert_allclose(lr(epoch * spe), 0.0125 * (1 + np.cos(np.pi * (epoch + 1) / 600)),
                               rtol=0, atol=1e-6 * 0.025)
  assert train.drop_prob_at(10 * spe, 0.2, 600, spe) == pytest.approx(0.2 * 10 / 600)
