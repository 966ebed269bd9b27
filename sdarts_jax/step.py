"""One SDARTS search step (SPEC section 1) as a single compiled function.

Read `make_step` top to bottom: it is SPEC section 1. Every use of the supernet in a step
is one *evaluation*: the loss, its gradients with respect to the weights and to the mixing
weights A, and the updated BatchNorm statistics, at some A, on the train or the validation
batch, with BatchNorm in train or inference mode:

  darts, rs: alpha step (val, train BN) -> weight step (train, train BN)
  adv:       alpha step -> clean loss (train, inference BN) -> 7 PGD steps -> attacked loss
             -> weight step

XLA compiles every inlined copy of the supernet's forward and backward pass anew, and on
XLA:CPU one copy of the paper-size supernet takes about a minute to compile. So the step
runs its evaluations as the iterations of one `lax.scan` over a static list of *phases*:
the body evaluates the supernet once at the request held in the carry (A, which batch, BN
mode) and a `lax.switch` on the phase applies that phase's update, which also sets the
next request. The supernet is compiled once per step function whatever the method;
`tests/test_step.py` checks the result against the same step written without the scan.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sdarts_jax import losses, ops, optim, perturb

TRAIN, VAL = 0, 1  # which batch an evaluation uses
METHODS = ("darts", "rs", "adv")


class Evaluation(NamedTuple):
  """What one supernet evaluation returns (scalars are means over the global batch)."""
  loss: jax.Array
  accuracy: jax.Array
  grad_params: Any
  grad_A: Any
  batch_stats: Any


def make_evaluate(model) -> Callable[..., Evaluation]:
  """evaluate(params, batch_stats, A, x, y, train_bn, key, need) -> Evaluation.

  x [N, H, W, 3] float, y [N] int; train_bn a (traced) bool; key feeds the `noise` op;
  need (a traced int, `ops.ALL_GRADS` by default) says which gradients the evaluation's
  caller uses: gradients it does not ask for are not computed (their values are
  meaningless, see `ops.NO_GRADS`).
  """
  def loss_fn(params, batch_stats, A, x, y, train_bn, key, need):
    logits, new = model.apply({"params": params, "batch_stats": batch_stats}, x, A, train_bn,
                              need, mutable=["batch_stats"], rngs={"noise": key})
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    return losses.cross_entropy(logits, y), (accuracy, new["batch_stats"])

  grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 2), has_aux=True)

  def evaluate(params, batch_stats, A, x, y, train_bn, key, need=ops.ALL_GRADS) -> Evaluation:
    (loss, (accuracy, stats)), (g_params, g_A) = grad_fn(params, batch_stats, A, x, y,
                                                         train_bn, key, need)
    return Evaluation(loss, accuracy, g_params, g_A, stats)

  return evaluate


def mixing_weights(alpha):
  """A = softmax(alpha) per edge row. alpha: pytree of [edges, ops]."""
  return jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), alpha)


# ---------------------------------------------------------------- the step

# The gradients each phase uses: the alpha step and PGD differentiate with respect to the
# mixing weights only, the clean and attacked losses are values alone.
NEEDS = {"alpha": ops.INPUT_GRADS, "clean": ops.NO_GRADS, "pgd": ops.INPUT_GRADS,
         "attacked": ops.NO_GRADS, "weights": ops.ALL_GRADS}


def phases(method: str, pgd_steps: int) -> tuple[str, ...]:
  """The evaluations of one step of `method`, in order."""
  if method == "adv":
    return ("alpha", "clean") + ("pgd",) * pgd_steps + ("attacked", "weights")
  return ("alpha", "weights")


def make_step(model, config, steps_per_epoch: int, preprocess):
  """step(state, batch) -> (state, metrics), pure; jit it (see `sdarts_jax.search`).

  preprocess(key, images uint8 [N, H, W, 3]) -> float [N, H, W, 3]: augmentation and
  normalisation (`sdarts_jax.data.preprocess` with the dataset's statistics).

  state: {"params", "batch_stats", "alpha", "w_opt", "a_opt", "step"}.
  batch: {"train_image", "train_label", "val_image", "val_label"}, images [N, H, W, 3]
    uint8, labels [N] int32 (global batch; shard it on the mesh's data axis).
  metrics: scalars: train/val loss and accuracy, eps, lr, and for adv the clean and
    attacked losses and whether the attack was kept.
  Random numbers (augmentation, RS noise, PGD start, the noise op) come from
  fold_in(PRNGKey(config.seed), step), so a run reproduces and resumes exactly.
  """
  method = config.method
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r} (config.method); known: {METHODS}")
  evaluate = make_evaluate(model)
  a_opt = optim.alpha_optimizer(config.alpha)
  w_opt = optim.weight_optimizer(config.weights, config.epochs, steps_per_epoch)
  lr_of = optim.weight_lr(config.weights, config.epochs, steps_per_epoch)
  pgd = config.perturb
  plan = phases(method, pgd.steps)

  def step(state, batch):
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), state["step"])
    k_aug_t, k_aug_v, k_perturb, k_eval = jax.random.split(key, 4)
    xs = (preprocess(k_aug_t, batch["train_image"]), preprocess(k_aug_v, batch["val_image"]))
    ys = (batch["train_label"], batch["val_label"])
    eps = optim.eps_at(state["step"], pgd, config.epochs, steps_per_epoch)
    A = mixing_weights(state["alpha"])

    # 1. Architecture step: Adam on alpha from the validation loss at softmax(alpha).
    def alpha_phase(c, ev: Evaluation):
      grad_alpha = jax.vjp(mixing_weights, c["state"]["alpha"])[1](ev.grad_A)[0]
      updates, opt = a_opt.update(grad_alpha, c["state"]["a_opt"], c["state"]["alpha"])
      alpha = optax.apply_updates(c["state"]["alpha"], updates)
      c = _replace(c, state=dict(c["state"], alpha=alpha, a_opt=opt, batch_stats=ev.batch_stats),
                   val_loss=ev.loss, val_accuracy=ev.accuracy)
      # 2. Mixing weights for the weight step, 3. perturbed.
      A = mixing_weights(alpha)
      if method == "darts":
        return _request(c, A=A, A_eval=A, batch=TRAIN, train_bn=True)
      if method == "rs":
        return _request(c, A=A, A_eval=perturb.random_start(k_perturb, A, eps), batch=TRAIN,
                        train_bn=True)
      return _request(c, A=A, A_eval=A, batch=TRAIN, train_bn=False)  # adv: clean loss first

    # 3 (adv). PGD on the train batch, BatchNorm in inference mode.
    def clean_phase(c, ev: Evaluation):
      start = perturb.random_start(k_perturb, c["A"], eps) if pgd.random_start else c["A"]
      return _request(_replace(c, clean_loss=ev.loss), A_eval=start)

    def pgd_phase(c, ev: Evaluation):
      A_adv = perturb.pgd_update(c["A_eval"], ev.grad_A, c["A"], eps,
                                 2 * eps / pgd.steps)
      return _request(c, A_eval=A_adv)

    def attacked_phase(c, ev: Evaluation):
      A_adv = perturb.accept(c["A_eval"], c["A"], ev.loss, c["clean_loss"])
      return _request(_replace(c, attacked_loss=ev.loss,
                               attack_kept=(ev.loss >= c["clean_loss"]).astype(jnp.float32)),
                      A_eval=A_adv, train_bn=True)

    # 4. Weight step at the (perturbed) mixing weights, BatchNorm in train mode.
    def weights_phase(c, ev: Evaluation):
      s = c["state"]
      updates, opt = w_opt.update(ev.grad_params, s["w_opt"], s["params"])
      params = optax.apply_updates(s["params"], updates)
      return _replace(c, state=dict(s, params=params, w_opt=opt, batch_stats=ev.batch_stats),
                      train_loss=ev.loss, train_accuracy=ev.accuracy)

    handlers = {"alpha": alpha_phase, "clean": clean_phase, "pgd": pgd_phase,
                "attacked": attacked_phase, "weights": weights_phase}
    kinds = list(dict.fromkeys(plan))
    branches = [handlers[k] for k in kinds]

    def body(c, i):
      phase_id, index, need = i
      s = c["state"]
      x = jnp.where(c["batch"] == TRAIN, xs[TRAIN], xs[VAL])
      y = jnp.where(c["batch"] == TRAIN, ys[TRAIN], ys[VAL])
      ev = evaluate(s["params"], s["batch_stats"], c["A_eval"], x, y, c["train_bn"],
                    jax.random.fold_in(k_eval, index), need)
      return lax.switch(phase_id, branches, c, ev), None

    zero = jnp.zeros((), jnp.float32)
    carry = {"state": state, "A": A, "A_eval": A, "batch": jnp.int32(VAL),
             "train_bn": jnp.bool_(True), "val_loss": zero, "val_accuracy": zero,
             "train_loss": zero, "train_accuracy": zero, "clean_loss": zero,
             "attacked_loss": zero, "attack_kept": zero}
    ids = jnp.array([kinds.index(p) for p in plan], jnp.int32)
    needs = jnp.array([NEEDS[p] for p in plan], jnp.int32)
    carry, _ = lax.scan(body, carry, (ids, jnp.arange(len(plan)), needs))
    new_state = dict(carry["state"], step=state["step"] + 1)
    metrics = {k: carry[k] for k in ("train_loss", "train_accuracy", "val_loss",
                                     "val_accuracy")}
    metrics.update(eps=jnp.asarray(eps, jnp.float32), lr=lr_of(state["step"]))
    if method == "adv":
      metrics.update({k: carry[k] for k in ("clean_loss", "attacked_loss", "attack_kept")})
    return new_state, metrics

  return step


def _replace(c: dict, **kw) -> dict:
  return {**c, **kw}


def _request(c: dict, A=None, A_eval=None, batch=None, train_bn=None) -> dict:
  """Set the next evaluation's request (fields left None keep their value)."""
  new = dict(c)
  for name, value in (("A", A), ("A_eval", A_eval)):
    if value is not None:
      new[name] = value
  if batch is not None:
    new["batch"] = jnp.int32(batch)
  if train_bn is not None:
    new["train_bn"] = jnp.bool_(train_bn)
  return new
