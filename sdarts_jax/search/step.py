"""One SDARTS search step (docs/method.md, section 1), written plainly: the definition.

Every use of the supernet in a step is one *evaluation*: the loss, its gradients with
respect to the weights and to the mixing weights A, and the updated BatchNorm statistics,
at some A, on the train or the validation batch, with BatchNorm in train or inference mode.
A step's evaluations, in order, are its *phases* (`phases`):

  darts, rs: alpha step (val, train BN) -> weight step (train, train BN)
  adv:       alpha step -> clean loss (train, inference BN) -> 7 PGD steps -> attacked loss
             -> weight step

With the second-order alpha step (config.alpha.order = 2, `sdarts_jax.search.unrolled`) the alpha
step is three or four evaluations, all with BatchNorm in train mode: the train gradient at
the weights w (which gives the unrolled weights w'), the validation gradients at w', and
H v, either exactly at w (one reverse-over-reverse evaluation) or as a central difference
at w + R v and w - R v:

  order 2:   unroll (train) -> unrolled_val (val, at w') -> hvp, or hvp_plus -> hvp_minus
             (train) -> then as above from the perturbation on

`plain_step` compiles one copy of the supernet per evaluation, which on XLA:CPU costs about
a minute each at paper size: the steps that runs use are `sdarts_jax.search.scan_step` (XLA:CPU,
one copy in a scan over the phases) and `sdarts_jax.search.accel_step` (TPU/GPU), both tested
against `plain_step`. All three draw every evaluation's `noise` key from its place in the
phases (`noise_indices`).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sdarts_jax.model import losses, supernet
from sdarts_jax.model.kernels import Need
from sdarts_jax.search import optim, perturb, unrolled

TRAIN, VAL = 0, 1  # which batch an evaluation uses
METHODS = ("darts", "rs", "adv")
ORDERS = (1, 2)  # config.alpha.order: first order, DARTS's second order
HVPS = ("exact", "finite_difference")  # config.alpha.hvp: how the second order gets H v


class Evaluation(NamedTuple):
  """What one supernet evaluation returns (scalars are means over the global batch)."""
  loss: jax.Array
  accuracy: jax.Array
  grad_params: Any
  grad_A: Any
  batch_stats: Any


def make_loss(model) -> Callable:
  """loss(params, batch_stats, A, x, y, train_bn, key, need) -> (cross-entropy,
  (accuracy, new batch_stats)); arguments as `make_evaluate`'s."""
  def loss(params, batch_stats, A, x, y, train_bn, key, need):
    logits, new = model.apply({"params": params, "batch_stats": batch_stats}, x, A, train_bn,
                              need, mutable=["batch_stats"], rngs={"noise": key})
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    return losses.cross_entropy(logits, y), (accuracy, new["batch_stats"])

  return loss


def make_evaluate(model) -> Callable[..., Evaluation]:
  """evaluate(params, batch_stats, A, x, y, train_bn, key, need) -> Evaluation.

  x [N, H, W, 3] float, y [N] int; train_bn a (traced) bool; key feeds the `noise` op;
  need (a traced int, `Need.ALL_GRADS` by default) says which gradients the evaluation's
  caller uses: gradients it does not ask for are not computed (their values are
  meaningless, see `kernels.Need`).
  """
  grad_fn = jax.value_and_grad(make_loss(model), argnums=(0, 2), has_aux=True)

  def evaluate(params, batch_stats, A, x, y, train_bn, key, need=Need.ALL_GRADS) -> Evaluation:
    (loss, (accuracy, stats)), (g_params, g_A) = grad_fn(params, batch_stats, A, x, y,
                                                         train_bn, key, need)
    return Evaluation(loss, accuracy, g_params, g_A, stats)

  return evaluate


def make_mixed_evaluate(model) -> Callable[..., Evaluation]:
  """mixed(params, batch_stats, A, x, y, train_bn, key, need, v) -> Evaluation whose
  grad_A is the mixed product H v = d/dA <grad_w L(w, A), v> (see `sdarts_jax.search.unrolled`)
  and grad_params grad_w L(w, A); v: a pytree of params' shapes, the other arguments as
  `make_evaluate`'s (need must ask for `Need.ALL_GRADS`).

  Reverse over reverse: the pullback of A -> grad_w L(w, A), which differentiates the
  written-out backward pass of `kernels.dense_conv` (forward mode cannot, see `ops.autodiff_impl`).
  """
  value_and_grad_w = jax.value_and_grad(make_loss(model), has_aux=True)

  def mixed(params, batch_stats, A, x, y, train_bn, key, need, v) -> Evaluation:
    def grad_w(A):
      (loss, (accuracy, stats)), g = value_and_grad_w(params, batch_stats, A, x, y, train_bn,
                                                      key, need)
      return g, (loss, accuracy, stats)

    g_params, pullback, (loss, accuracy, stats) = jax.vjp(grad_w, A, has_aux=True)
    return Evaluation(loss, accuracy, g_params, pullback(v)[0], stats)

  return mixed


# ---------------------------------------------------------------- the step

def plain_step(model, config, steps_per_epoch: int, preprocess):
  """The step of docs/method.md, section 1, written plainly: step(state, batch) ->
  (state, A_w, clean loss or None), with arguments as `scan_step.make_step`'s and A_w the
  mixing weights the weight step used. It compiles one copy of the supernet per evaluation
  (ten for ADV), so it is the definition to test against, not the step to run.

  With config.alpha.order = 2 the alpha gradient is DARTS's second order by its definition
  (`_alpha_gradient`).
  """
  a_opt = optim.alpha_optimizer(config.alpha)
  w_opt = optim.weight_optimizer(config.weights, config.epochs, steps_per_epoch)
  lr_of = optim.weight_lr(config.weights, config.epochs, steps_per_epoch)
  plan = phases(config.method, config.perturb.steps, config.alpha.order, config.alpha.hvp)
  # The noise keys of the alpha step's evaluations come first: the second order has 3 or 4.
  offset = len(plan) - len(phases(config.method, config.perturb.steps))

  def step(state, batch):
    k_aug_t, k_aug_v, k_perturb, k_eval = jax.random.split(step_key(config, state), 4)
    train = preprocess(k_aug_t, batch["train_image"]), batch["train_label"]
    val = preprocess(k_aug_v, batch["val_image"]), batch["val_label"]
    eps = optim.eps_at(state["step"], config.perturb, config.epochs, steps_per_epoch)

    def loss(params, stats, A, x, y, train_bn, index):  # index: the evaluation's noise key
      logits, new = model.apply({"params": params, "batch_stats": stats}, x, A, train_bn,
                                mutable=["batch_stats"],
                                rngs={"noise": jax.random.fold_in(k_eval, index)})
      return losses.cross_entropy(logits, y), new["batch_stats"]

    params = state["params"]
    # 1. Alpha step: Adam on the validation loss (BatchNorm in train mode).
    g_alpha, stats = _alpha_gradient(loss, config, state, lr_of(state["step"]), train, val)
    updates, alpha_opt = a_opt.update(g_alpha, state["a_opt"], state["alpha"])
    alpha = optax.apply_updates(state["alpha"], updates)
    # 2-3. The mixing weights, perturbed (the attack with BatchNorm in inference mode).
    A, clean = supernet.mixing_weights(alpha), None
    if config.method == "rs":
      A_w = perturb.random_start(k_perturb, A, eps)
    elif config.method == "adv":
      A_w, clean = perturb.pgd(lambda a, i: loss(params, stats, a, *train, False,
                                                 1 + offset + i)[0],
                               k_perturb, A, eps, config.perturb.steps,
                               config.perturb.random_start)
    else:
      A_w = A
    # 4. Weight step: SGD on the train loss at A_w (BatchNorm in train mode).
    g_w, stats = jax.grad(lambda p: loss(p, stats, A_w, *train, True, len(plan) - 1),
                          has_aux=True)(params)
    updates, weight_opt = w_opt.update(g_w, state["w_opt"], params)
    new = dict(state, params=optax.apply_updates(params, updates), batch_stats=stats,
               alpha=alpha, a_opt=alpha_opt, w_opt=weight_opt, step=state["step"] + 1)
    return new, A_w, clean

  return step


def _alpha_gradient(loss, config, state: dict, lr, train, val):
  """(the alpha step's gradient w.r.t. alpha, a pytree of [edges, ops]; BatchNorm's new
  running statistics), by the definition of config.alpha.order. loss(params, stats, A, x, y,
  train_bn, noise index) -> (loss, new stats); train, val: (images, labels); lr: the weight
  lr, xi of the second order.

  First order: grad_alpha L_val(w, softmax(alpha)). Second order: jax.grad of
  L_val(w - xi (momentum buf + grad_w L_train(w, A) + wd w), A) with respect to alpha
  straight through the virtual step (whatever config.alpha.hvp says), and BatchNorm's running
  statistics follow the train pass at w.
  """
  params, stats, w_cfg = state["params"], state["batch_stats"], config.weights
  if config.alpha.order == 1:
    return jax.grad(lambda a: loss(params, stats, supernet.mixing_weights(a), *val, True, 0),
                    has_aux=True)(state["alpha"])
  buf = unrolled.momentum_buffer(state["w_opt"])

  def unrolled_val_loss(alpha):
    A = supernet.mixing_weights(alpha)
    g_w, train_stats = jax.grad(lambda p: loss(p, stats, A, *train, True, 0),
                                has_aux=True)(params)
    w_virtual = jax.tree.map(
        lambda w, g, b: w - lr * (w_cfg.momentum * b + g + w_cfg.weight_decay * w),
        params, g_w, buf)
    return loss(w_virtual, stats, A, *val, True, 1)[0], train_stats

  return jax.grad(unrolled_val_loss, has_aux=True)(state["alpha"])


# ---------------------------------------------------------------- the phases and checks

def step_key(config, state: dict) -> jax.Array:
  """The step's random key, fold_in(PRNGKey(seed), state["step"]): seed is the state's own
  "seed" in a run of several seeds (`sdarts_jax.search.seeds`: traced, one per seed), else
  config.seed."""
  seed = state["seed"] if "seed" in state else config.seed
  return jax.random.fold_in(jax.random.PRNGKey(seed), state["step"])


def phases(method: str, pgd_steps: int, order: int = 1, hvp: str = "exact"
           ) -> tuple[str, ...]:
  """The evaluations of one step of `method` with the alpha step of `order`, in order."""
  if order == 1:
    architecture = ("alpha",)
  else:
    architecture = ("unroll", "unrolled_val") + (
        ("hvp",) if hvp == "exact" else ("hvp_plus", "hvp_minus"))
  if method == "adv":
    return architecture + ("clean",) + ("pgd",) * pgd_steps + ("attacked", "weights")
  return architecture + ("weights",)


def noise_indices(plan: tuple[str, ...]) -> list[int]:
  """The index whose key each evaluation's `noise` op draws from: its position in the
  plan, except that the evaluations of H v redraw the "unroll" evaluation's noise (they
  differentiate that same train loss)."""
  return [plan.index("unroll") if p in ("hvp", "hvp_plus", "hvp_minus") else i
          for i, p in enumerate(plan)]


def check_method(method: str) -> None:
  """ValueError for a config.method that names no search method."""
  if method == "darts2":
    raise ValueError("config.method=darts2: second-order DARTS is method darts with "
                     "config.alpha.order=2 (--config.method=darts --config.alpha.order=2, or "
                     "the config argument method=darts2, as in configs/cifar10_darts2.py)")
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r} (config.method); known: "
                     f"{', '.join(METHODS)}")


def check_alpha_step(cfg) -> None:
  """ValueError for a config.alpha whose order, hvp or hvp_r names no alpha step."""
  if cfg.order not in ORDERS:
    raise ValueError(f"config.alpha.order={cfg.order!r}; use 1 (first order, as every "
                     f"published SDARTS run) or 2 (DARTS's second order: the one-step "
                     f"unrolled weights)")
  if cfg.hvp not in HVPS:
    raise ValueError(f"config.alpha.hvp={cfg.hvp!r}; use exact (autodiff) or "
                     f"finite_difference (the reference's central difference)")
  if not cfg.hvp_r > 0:
    raise ValueError(f"config.alpha.hvp_r={cfg.hvp_r!r} must be positive (the central "
                     f"difference's step is hvp_r / ||v||; the reference's is 0.01)")


