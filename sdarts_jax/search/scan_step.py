"""The search step compiled as one `lax.scan` over its evaluations: a table of phases.

`sdarts_jax.search.step` defines the step (`step.plain_step`); this module compiles it for XLA:CPU.
XLA compiles every inlined copy of the supernet's forward and backward pass anew, and on
XLA:CPU one copy of the paper-size supernet takes about a minute to compile. So the step
runs its evaluations (`step.phases`: ten for ADV) as the iterations of one `lax.scan`: the
body evaluates the supernet once, on the batch, in the BatchNorm mode and with the
gradients that the phase's record (`Phase`) asks for, at the point held in the carry
(`Carry.A_eval`, and with the second order `Carry.params`), and a `lax.switch` on the phase
applies the record's `update`, which also sets the point of the next evaluation. The
supernet is compiled once per step function whatever the method; the exact H v adds a
second copy (its reverse-over-reverse evaluation, chosen by a `lax.cond` in the body).

Read `PHASES` top to bottom for the method: the alpha step (first order: `alpha`; second
order: `unroll`, `unrolled_val`, then `hvp` or `hvp_plus`, `hvp_minus`), for ADV the attack
(`clean`, `pgd` per PGD step, `attacked`), and the weight step (`weights`).
`tests/test_step.py` and `tests/test_second_order.py` check the result against
`step.plain_step`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sdarts_jax.model import supernet
from sdarts_jax.model.kernels import Need
from sdarts_jax.search import optim, perturb, step, unrolled
from sdarts_jax.search.step import TRAIN, VAL, Evaluation


class Context(NamedTuple):
  """What the phases of one step read and never change."""
  config: Any            # the search config
  a_opt: Any             # the alpha optimizer (`optim.alpha_optimizer`)
  w_opt: Any             # the weight optimizer (`optim.weight_optimizer`)
  k_perturb: jax.Array   # the key of RS's noise and PGD's random start
  eps: jax.Array         # the perturbation radius at this step
  lr: jax.Array          # the weight lr at this step; xi of the second order


class Carry(NamedTuple):
  """The scan's carry. Mixing weights are pytrees of [edges, ops], weights and v pytrees of
  the supernet's params; the losses and accuracies are scalars (means over the batch)."""
  state: dict            # the search state, as `step.plain_step`'s
  A: Any                 # softmax(alpha): the new alpha's once the alpha step is done
  A_eval: Any            # the mixing weights of the next evaluation
  params: Any            # second order: the weights of the next evaluation (else None)
  v: Any                 # second order: grad_w' L_val(w', A) (else None)
  grad_A: Any            # second order: grad_A L_val(w', A) (else None)
  grad_A_plus: Any       # finite difference: grad_A L_train(w + R v, A) (else None)
  radius: Any            # finite difference: R = hvp_r / ||v|| (else None)
  val_loss: jax.Array
  val_accuracy: jax.Array
  train_loss: jax.Array
  train_accuracy: jax.Array
  clean_loss: jax.Array
  attacked_loss: jax.Array
  attack_kept: jax.Array


# ---------------------------------------------------------------- 1. the alpha step

def architecture_step(ctx: Context, c: Carry, grad_A) -> Carry:
  """Adam on alpha from the validation loss's gradient grad_A w.r.t. A, then the mixing
  weights of the weight step (2), for RS perturbed (3); ADV first evaluates the clean loss
  at them."""
  s = c.state
  grad_alpha = jax.vjp(supernet.mixing_weights, s["alpha"])[1](grad_A)[0]
  updates, opt = ctx.a_opt.update(grad_alpha, s["a_opt"], s["alpha"])
  alpha = optax.apply_updates(s["alpha"], updates)
  A = supernet.mixing_weights(alpha)
  A_eval = perturb.random_start(ctx.k_perturb, A, ctx.eps) if ctx.config.method == "rs" else A
  return c._replace(state=dict(s, alpha=alpha, a_opt=opt), A=A, A_eval=A_eval)


def alpha_phase(ctx: Context, c: Carry, ev: Evaluation) -> Carry:
  """First order: ev is L_val(w, A) with its gradient w.r.t. A."""
  c = c._replace(state=dict(c.state, batch_stats=ev.batch_stats), val_loss=ev.loss,
                 val_accuracy=ev.accuracy)
  return architecture_step(ctx, c, ev.grad_A)


# Second order: the gradient of L_val(w', A) (`sdarts_jax.search.unrolled`). BatchNorm's running
# statistics follow the train pass at w alone: the evaluation at w' belongs to the virtual
# weights, those of H v differentiate the train pass (the reference's central difference
# also updates them at w +- R v).

def unroll_phase(ctx: Context, c: Carry, ev: Evaluation) -> Carry:
  """ev: L_train(w, A); the next evaluation is at the unrolled weights w'."""
  s, w_cfg = c.state, ctx.config.weights
  w_virtual = unrolled.virtual_weights(
      s["params"], ev.grad_params, unrolled.momentum_buffer(s["w_opt"]), ctx.lr,
      w_cfg.momentum, w_cfg.weight_decay)
  return c._replace(state=dict(s, batch_stats=ev.batch_stats), params=w_virtual)


def unrolled_val_phase(ctx: Context, c: Carry, ev: Evaluation) -> Carry:
  """ev: L_val(w', A); the next evaluation is H v at w, or the train loss at w + R v."""
  w, v = c.state["params"], ev.grad_params
  c = c._replace(val_loss=ev.loss, val_accuracy=ev.accuracy, grad_A=ev.grad_A, v=v)
  if ctx.config.alpha.hvp == "exact":
    return c._replace(params=w)
  radius = unrolled.fd_radius(v, ctx.config.alpha.hvp_r)
  return c._replace(radius=radius, params=unrolled.shifted(w, v, radius))


def hvp_phase(ctx: Context, c: Carry, ev: Evaluation) -> Carry:
  """ev: H v at (w, A), exact."""
  return architecture_step(ctx, c, unrolled.hypergradient(c.grad_A, ev.grad_A, ctx.lr))


def hvp_plus_phase(ctx: Context, c: Carry, ev: Evaluation) -> Carry:
  """ev: L_train(w + R v, A); the next evaluation is at w - R v."""
  return c._replace(grad_A_plus=ev.grad_A,
                    params=unrolled.shifted(c.state["params"], c.v, -c.radius))


def hvp_minus_phase(ctx: Context, c: Carry, ev: Evaluation) -> Carry:
  """ev: L_train(w - R v, A); the evaluations after it are at w again."""
  hvp = unrolled.central_difference(c.grad_A_plus, ev.grad_A, c.radius)
  c = architecture_step(ctx, c, unrolled.hypergradient(c.grad_A, hvp, ctx.lr))
  return c._replace(params=c.state["params"])


# ---------------------------------------------------------------- 3 (adv). the attack

def clean_phase(ctx: Context, c: Carry, ev: Evaluation) -> Carry:
  """ev: the clean loss L_train(w, A); the attack starts at A or a random point near it."""
  pgd = ctx.config.perturb
  start = perturb.random_start(ctx.k_perturb, c.A, ctx.eps) if pgd.random_start else c.A
  return c._replace(clean_loss=ev.loss, A_eval=start)


def pgd_phase(ctx: Context, c: Carry, ev: Evaluation) -> Carry:
  """ev: the loss at the attack's point and its gradient; one projected ascent step."""
  steps = ctx.config.perturb.steps
  return c._replace(A_eval=perturb.pgd_update(c.A_eval, ev.grad_A, c.A, ctx.eps,
                                              2 * ctx.eps / steps))


def attacked_phase(ctx: Context, c: Carry, ev: Evaluation) -> Carry:
  """ev: the attacked loss; the weight step uses the attack if it raised the loss."""
  return c._replace(A_eval=perturb.accept(c.A_eval, c.A, ev.loss, c.clean_loss),
                    attacked_loss=ev.loss,
                    attack_kept=(ev.loss >= c.clean_loss).astype(jnp.float32))


# ---------------------------------------------------------------- 4. the weight step

def weights_phase(ctx: Context, c: Carry, ev: Evaluation) -> Carry:
  """ev: L_train(w, A_w) at the (perturbed) mixing weights; SGD on the weights."""
  s = c.state
  updates, opt = ctx.w_opt.update(ev.grad_params, s["w_opt"], s["params"])
  params = optax.apply_updates(s["params"], updates)
  return c._replace(state=dict(s, params=params, w_opt=opt, batch_stats=ev.batch_stats),
                    train_loss=ev.loss, train_accuracy=ev.accuracy)


class Phase(NamedTuple):
  """One evaluation of the supernet and what the step does with it.

  batch: TRAIN or VAL; train_bn: BatchNorm's mode; need: the gradients the update uses;
  update(ctx, carry, evaluation) -> carry, which also sets the point of the next evaluation.
  """
  name: str
  batch: int
  train_bn: bool
  need: Need
  update: Callable[[Context, Carry, Evaluation], Carry]


# The alpha step, the central difference and PGD differentiate with respect to the mixing
# weights only, the clean and attacked losses are values alone; the unrolled weights, v and
# the exact H v need the weight gradients.
PHASES = {p.name: p for p in (
    Phase("alpha", VAL, True, Need.INPUT_GRADS, alpha_phase),
    Phase("unroll", TRAIN, True, Need.ALL_GRADS, unroll_phase),
    Phase("unrolled_val", VAL, True, Need.ALL_GRADS, unrolled_val_phase),
    Phase("hvp", TRAIN, True, Need.ALL_GRADS, hvp_phase),
    Phase("hvp_plus", TRAIN, True, Need.INPUT_GRADS, hvp_plus_phase),
    Phase("hvp_minus", TRAIN, True, Need.INPUT_GRADS, hvp_minus_phase),
    Phase("clean", TRAIN, False, Need.NO_GRADS, clean_phase),
    Phase("pgd", TRAIN, False, Need.INPUT_GRADS, pgd_phase),
    Phase("attacked", TRAIN, False, Need.NO_GRADS, attacked_phase),
    Phase("weights", TRAIN, True, Need.ALL_GRADS, weights_phase))}


def plan(config) -> list[Phase]:
  """The phases of one step of config.method with config.alpha's alpha step, in order."""
  names = step.phases(config.method, config.perturb.steps, config.alpha.order,
                      config.alpha.hvp)
  return [PHASES[name] for name in names]


# ---------------------------------------------------------------- the compiled step

def make_step(model, config, steps_per_epoch: int, preprocess):
  """step(state, batch) -> (state, metrics), pure; jit it (see `sdarts_jax.search.run_search`).

  preprocess(key, images uint8 [N, H, W, 3]) -> float [N, H, W, 3]: augmentation and
  normalisation (`sdarts_jax.data.pipeline.preprocess` with the dataset's statistics).

  state: {"params", "batch_stats", "alpha", "w_opt", "a_opt", "step"}.
  batch: {"train_image", "train_label", "val_image", "val_label"}, images [N, H, W, 3]
    uint8, labels [N] int32 (global batch; shard it on the mesh's data axis).
  metrics: scalars: train/val loss and accuracy (with the second-order alpha step the
    validation loss at the unrolled weights), eps, lr, and for adv the clean and attacked
    losses and whether the attack was kept.
  Random numbers (augmentation, RS noise, PGD start, the noise op) come from
  `step.step_key` (config.seed and the step count), so a run reproduces and resumes exactly.
  """
  step.check_method(config.method)
  step.check_alpha_step(config.alpha)
  a_opt = optim.alpha_optimizer(config.alpha)
  w_opt = optim.weight_optimizer(config.weights, config.epochs, steps_per_epoch)
  lr_of = optim.weight_lr(config.weights, config.epochs, steps_per_epoch)
  phases = plan(config)
  kinds = list(dict.fromkeys(p.name for p in phases))
  scanned = (np.array([kinds.index(p.name) for p in phases], np.int32),  # host constants
             np.array(step.noise_indices(tuple(p.name for p in phases)), np.int32),
             np.array([p.batch for p in phases], np.int32),
             np.array([p.train_bn for p in phases], np.bool_),
             np.array([p.need for p in phases], np.int32))
  body = _body(model, kinds)

  def run(state, batch):
    key = step.step_key(config, state)
    k_aug_t, k_aug_v, k_perturb, k_eval = jax.random.split(key, 4)
    xs = (preprocess(k_aug_t, batch["train_image"]), preprocess(k_aug_v, batch["val_image"]))
    ys = (batch["train_label"], batch["val_label"])
    eps = optim.eps_at(state["step"], config.perturb, config.epochs, steps_per_epoch)
    ctx = Context(config, a_opt, w_opt, k_perturb, eps, lr_of(state["step"]))
    carry, _ = lax.scan(functools.partial(body, ctx, xs, ys, k_eval),
                        _initial_carry(state, config.alpha), scanned)
    return dict(carry.state, step=state["step"] + 1), _metrics(carry, ctx)

  return run


def _body(model, kinds: list[str]) -> Callable:
  """body(ctx, xs, ys, k_eval, carry, phase) -> (carry, None): one evaluation and the
  phase's update. xs, ys: (train, val) images [N, H, W, 3] and labels [N]; phase: (its index
  in `kinds`, its noise key's index, batch, train_bn, need), scanned."""
  evaluate, mixed = step.make_evaluate(model), step.make_mixed_evaluate(model)

  def body(ctx, xs, ys, k_eval, c: Carry, phase):
    phase_id, key_index, batch, train_bn, need = phase
    x = jnp.where(batch == TRAIN, xs[TRAIN], xs[VAL])
    y = jnp.where(batch == TRAIN, ys[TRAIN], ys[VAL])
    params = c.state["params"] if c.params is None else c.params
    args = (params, c.state["batch_stats"], c.A_eval, x, y, train_bn,
            jax.random.fold_in(k_eval, key_index), need)
    if "hvp" in kinds:
      ev = lax.cond(phase_id == kinds.index("hvp"), lambda: mixed(*args, c.v),
                    lambda: evaluate(*args))
    else:
      ev = evaluate(*args)
    updates = [functools.partial(PHASES[k].update, ctx) for k in kinds]
    return lax.switch(phase_id, updates, c, ev), None

  return body


def _initial_carry(state: dict, alpha_cfg) -> Carry:
  """The carry before the first evaluation, at A = softmax(alpha) and the state's weights."""
  A = supernet.mixing_weights(state["alpha"])
  zero = jnp.zeros((), jnp.float32)
  zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
  second = alpha_cfg.order == 2
  difference = second and alpha_cfg.hvp == "finite_difference"
  return Carry(state=state, A=A, A_eval=A,
               params=state["params"] if second else None,
               v=zeros(state["params"]) if second else None,
               grad_A=zeros(A) if second else None,
               grad_A_plus=zeros(A) if difference else None,
               radius=zero if difference else None,
               val_loss=zero, val_accuracy=zero, train_loss=zero, train_accuracy=zero,
               clean_loss=zero, attacked_loss=zero, attack_kept=zero)


def _metrics(c: Carry, ctx: Context) -> dict:
  """The step's scalar metrics (see `make_step`)."""
  metrics = {"train_loss": c.train_loss, "train_accuracy": c.train_accuracy,
             "val_loss": c.val_loss, "val_accuracy": c.val_accuracy,
             "eps": jnp.asarray(ctx.eps, jnp.float32), "lr": ctx.lr}
  if ctx.config.method == "adv":
    metrics.update(clean_loss=c.clean_loss, attacked_loss=c.attacked_loss,
                   attack_kept=c.attack_kept)
  return metrics
