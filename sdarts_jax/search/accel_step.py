"""The first-order search step for TPUs and GPUs: the step of docs/method.md, section 1,
with static phases.

`scan_step.make_step` runs every supernet evaluation of a step as one iteration of a scan whose
body holds a single copy of the supernet, with the evaluation's BatchNorm mode and
gradients chosen at run time: built for XLA:CPU, where each inlined copy of the supernet
costs about a minute of compilation. On TPU that design costs more than it saves: the
run-time BatchNorm mode puts a conditional inside every BatchNorm, which splits the
supernet's fusions in two, and the TPU compiler's time goes into code generation per fusion
(measured in docs/tpu.md). Here each evaluation is written as what it is, with JAX's own
gradients and a static BatchNorm mode, and the PGD attack's steps, which are identical, are
one `lax.fori_loop`: the supernet appears five times for SDARTS-ADV (alpha step, clean
loss, one PGD step, attacked loss, weight step) and twice for DARTS and SDARTS-RS, none of
them with a conditional.

Same arguments, state, metrics and random numbers as `scan_step.make_step` (every evaluation's
`noise` key included), which `tests/test_accel_step.py` checks against it. First order
only: with config.alpha.order = 2 `step_for` returns `scan_step.make_step` on every backend.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sdarts_jax.model import losses, supernet
from sdarts_jax.search import optim, perturb, scan_step
from sdarts_jax.search.step import METHODS, phases, step_key

STEPS = ("auto", "scan", "static")  # config.step: auto = static on TPU/GPU, scan on CPU


def step_kind(config, platform: str | None = None) -> str:
  """"scan" (`scan_step.make_step`) or "static" (`make_static_step`) for config.step on
  `platform` (default JAX's default backend); the second order always runs the scan."""
  kind = config.get("step", "auto")
  if kind not in STEPS:
    raise ValueError(f"config.step={kind!r}; use one of {', '.join(STEPS)}")
  if kind == "auto":
    kind = "scan" if (platform or jax.default_backend()) == "cpu" else "static"
  return "scan" if config.alpha.order != 1 else kind


def step_for(model, config, steps_per_epoch: int, preprocess, platform: str | None = None):
  """The search step that config.step picks for `platform` (see `step_kind`)."""
  make = make_static_step if step_kind(config, platform) == "static" else scan_step.make_step
  return make(model, config, steps_per_epoch, preprocess)


def make_static_step(model, config, steps_per_epoch: int, preprocess):
  """step(state, batch) -> (state, metrics), pure, as `scan_step.make_step` (first order)."""
  method, pgd = config.method, config.perturb
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r} (config.method); known: {METHODS}")
  if config.alpha.order != 1:
    raise ValueError("make_static_step is first order; the second order runs "
                     "scan_step.make_step")
  a_opt = optim.alpha_optimizer(config.alpha)
  w_opt = optim.weight_optimizer(config.weights, config.epochs, steps_per_epoch)
  lr_of = optim.weight_lr(config.weights, config.epochs, steps_per_epoch)
  plan = phases(method, pgd.steps)  # each evaluation's noise key is its index here

  def step(state, batch):
    key = step_key(config, state)
    k_aug_t, k_aug_v, k_perturb, k_eval = jax.random.split(key, 4)
    x, xv = preprocess(k_aug_t, batch["train_image"]), preprocess(k_aug_v, batch["val_image"])
    y, yv = batch["train_label"], batch["val_label"]
    eps = optim.eps_at(state["step"], pgd, config.epochs, steps_per_epoch)
    params, stats = state["params"], state["batch_stats"]

    def loss(params, stats, A, x, y, train_bn, index):
      """(cross-entropy, (accuracy, new batch_stats)) of one evaluation."""
      logits, new = model.apply({"params": params, "batch_stats": stats}, x, A, train_bn,
                                mutable=["batch_stats"],
                                rngs={"noise": jax.random.fold_in(k_eval, index)})
      accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
      return losses.cross_entropy(logits, y), (accuracy, new["batch_stats"])

    # 1. Alpha step: Adam on the validation loss (BatchNorm in train mode).
    (val_loss, (val_acc, stats)), g_alpha = jax.value_and_grad(
        lambda a: loss(params, stats, supernet.mixing_weights(a), xv, yv, True, 0),
        has_aux=True)(state["alpha"])
    updates, alpha_opt = a_opt.update(g_alpha, state["a_opt"], state["alpha"])
    alpha = optax.apply_updates(state["alpha"], updates)
    # 2-3. The mixing weights of the weight step, perturbed.
    A = supernet.mixing_weights(alpha)
    extra = {}
    if method == "rs":
      A = perturb.random_start(k_perturb, A, eps)
    elif method == "adv":  # the attack with BatchNorm in inference mode
      A, extra = attack(lambda a, index: loss(params, stats, a, x, y, False, index)[0],
                        k_perturb, A, eps, pgd)
    # 4. Weight step: SGD on the train loss at the perturbed A (BatchNorm in train mode).
    (train_loss, (train_acc, stats)), g_w = jax.value_and_grad(
        lambda p: loss(p, stats, A, x, y, True, len(plan) - 1), has_aux=True)(params)
    updates, weight_opt = w_opt.update(g_w, state["w_opt"], params)
    new_state = dict(state, params=optax.apply_updates(params, updates), batch_stats=stats,
                     alpha=alpha, a_opt=alpha_opt, w_opt=weight_opt, step=state["step"] + 1)
    metrics = {"train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss,
               "val_accuracy": val_acc, "eps": jnp.asarray(eps, jnp.float32),
               "lr": lr_of(state["step"]), **extra}
    return new_state, metrics

  return step


def attack(loss_of, key, A, eps, pgd):
  """SDARTS-ADV's attack with the PGD steps as one `fori_loop` -> (the A of the weight step,
  {"clean_loss", "attacked_loss", "attack_kept"}). loss_of(A, index) -> the train loss at
  mixing weights A (pytree of [edges, ops]) with the noise key of evaluation `index` of the
  step's plan (1 the clean loss, 2.. the PGD steps, then the attacked loss); pgd:
  config.perturb."""
  clean = loss_of(A, 1)
  start = perturb.random_start(key, A, eps) if pgd.random_start else A

  def pgd_step(i, A_adv):
    grad = jax.grad(loss_of)(A_adv, 2 + i)
    return perturb.pgd_update(A_adv, grad, A, eps, 2 * eps / pgd.steps)

  A_adv = lax.fori_loop(0, pgd.steps, pgd_step, start)
  attacked = loss_of(A_adv, 2 + pgd.steps)
  return perturb.accept(A_adv, A, attacked, clean), {
      "clean_loss": clean, "attacked_loss": attacked,
      "attack_kept": (attacked >= clean).astype(jnp.float32)}
