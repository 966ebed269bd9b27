"""One SDARTS search step (docs/method.md, section 1) as a single compiled function.

Read `make_step` top to bottom: it is docs/method.md, section 1. Every use of the supernet in a step
is one *evaluation*: the loss, its gradients with respect to the weights and to the mixing
weights A, and the updated BatchNorm statistics, at some A, on the train or the validation
batch, with BatchNorm in train or inference mode:

  darts, rs: alpha step (val, train BN) -> weight step (train, train BN)
  adv:       alpha step -> clean loss (train, inference BN) -> 7 PGD steps -> attacked loss
             -> weight step

With the second-order alpha step (config.alpha.order = 2, `sdarts_jax.unrolled`) the alpha
step is three or four evaluations, all with BatchNorm in train mode: the train gradient at
the weights w (which gives the unrolled weights w'), the validation gradients at w', and
H v, either exactly at w (one reverse-over-reverse evaluation) or as a central difference
at w + R v and w - R v:

  order 2:   unroll (train) -> unrolled_val (val, at w') -> hvp, or hvp_plus -> hvp_minus
             (train) -> then as above from the perturbation on

XLA compiles every inlined copy of the supernet's forward and backward pass anew, and on
XLA:CPU one copy of the paper-size supernet takes about a minute to compile. So the step
runs its evaluations as the iterations of one `lax.scan` over a static list of *phases*:
the body evaluates the supernet once at the request held in the carry (A, which batch, BN
mode, and with the second order the weights) and a `lax.switch` on the phase applies that
phase's update, which also sets the next request. The supernet is compiled once per step
function whatever the method; the exact H v adds a second copy (its reverse-over-reverse
evaluation, chosen by a `lax.cond` in the body). `tests/test_step.py` and
`tests/test_second_order.py` check the result against the same step written without the
scan.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sdarts_jax import losses, ops, optim, perturb, unrolled

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
  need (a traced int, `ops.ALL_GRADS` by default) says which gradients the evaluation's
  caller uses: gradients it does not ask for are not computed (their values are
  meaningless, see `ops.NO_GRADS`).
  """
  grad_fn = jax.value_and_grad(make_loss(model), argnums=(0, 2), has_aux=True)

  def evaluate(params, batch_stats, A, x, y, train_bn, key, need=ops.ALL_GRADS) -> Evaluation:
    (loss, (accuracy, stats)), (g_params, g_A) = grad_fn(params, batch_stats, A, x, y,
                                                         train_bn, key, need)
    return Evaluation(loss, accuracy, g_params, g_A, stats)

  return evaluate


def make_mixed_evaluate(model) -> Callable[..., Evaluation]:
  """mixed(params, batch_stats, A, x, y, train_bn, key, need, v) -> Evaluation whose
  grad_A is the mixed product H v = d/dA <grad_w L(w, A), v> (see `sdarts_jax.unrolled`)
  and grad_params grad_w L(w, A); v: a pytree of params' shapes, the other arguments as
  `make_evaluate`'s (need must ask for `ops.ALL_GRADS`).

  Reverse over reverse: the pullback of A -> grad_w L(w, A), which differentiates the
  written-out backward pass of `ops.conv` (forward mode cannot, see `ops.autodiff_impl`).
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


def mixing_weights(alpha):
  """A = softmax(alpha) per edge row. alpha: pytree of [edges, ops]."""
  return jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), alpha)


# ---------------------------------------------------------------- the step

def plain_step(model, config, steps_per_epoch: int, preprocess):
  """The step of docs/method.md, section 1, written plainly: step(state, batch) ->
  (state, A_w, clean loss or None), with arguments as `make_step`'s and A_w the mixing
  weights the weight step used. It compiles one copy of the supernet per evaluation (ten
  for ADV), so it is the definition to test against, not the step to run.

  With config.alpha.order = 2 the alpha gradient is DARTS's second order by its definition,
  jax.grad of L_val(w - xi (momentum buf + grad_w L_train(w, A) + wd w), A) with respect
  to alpha straight through the virtual step (xi the weight lr, whatever
  config.alpha.hvp says), and BatchNorm's running statistics follow the train pass at w.
  """
  a_opt = optim.alpha_optimizer(config.alpha)
  w_opt = optim.weight_optimizer(config.weights, config.epochs, steps_per_epoch)
  lr_of = optim.weight_lr(config.weights, config.epochs, steps_per_epoch)
  w_cfg = config.weights
  # The noise keys of make_step's evaluations: the second order's alpha step has 3 or 4.
  plan = phases(config.method, config.perturb.steps, config.alpha.order, config.alpha.hvp)
  offset = len(plan) - len(phases(config.method, config.perturb.steps))

  def step(state, batch):
    k_aug_t, k_aug_v, k_perturb, k_eval = jax.random.split(
        jax.random.fold_in(jax.random.PRNGKey(config.seed), state["step"]), 4)
    x, xv = preprocess(k_aug_t, batch["train_image"]), preprocess(k_aug_v, batch["val_image"])
    y, yv = batch["train_label"], batch["val_label"]
    eps = optim.eps_at(state["step"], config.perturb, config.epochs, steps_per_epoch)

    def loss(params, stats, A, x, y, train, index):  # index: the evaluation's noise key
      logits, new = model.apply({"params": params, "batch_stats": stats}, x, A, train,
                                mutable=["batch_stats"],
                                rngs={"noise": jax.random.fold_in(k_eval, index)})
      return losses.cross_entropy(logits, y), new["batch_stats"]

    params, stats, alpha = state["params"], state["batch_stats"], state["alpha"]
    # 1. Alpha step: Adam on the validation loss (BatchNorm in train mode).
    if config.alpha.order == 1:
      g_alpha, stats = jax.grad(
          lambda a: loss(params, stats, mixing_weights(a), xv, yv, True, 0), has_aux=True)(alpha)
    else:
      lr, buf = lr_of(state["step"]), optax.tree_utils.tree_get(state["w_opt"], "trace")

      def unrolled_val_loss(a):
        A = mixing_weights(a)
        g_w, train_stats = jax.grad(lambda p: loss(p, stats, A, x, y, True, 0),
                                    has_aux=True)(params)
        w_virtual = jax.tree.map(
            lambda w, g, b: w - lr * (w_cfg.momentum * b + g + w_cfg.weight_decay * w),
            params, g_w, buf)
        return loss(w_virtual, stats, A, xv, yv, True, 1)[0], train_stats

      g_alpha, stats = jax.grad(unrolled_val_loss, has_aux=True)(alpha)
    updates, alpha_opt = a_opt.update(g_alpha, state["a_opt"], alpha)
    alpha = optax.apply_updates(alpha, updates)
    # 2-3. The mixing weights, perturbed (the attack with BatchNorm in inference mode).
    A, clean = mixing_weights(alpha), None
    if config.method == "rs":
      A_w = perturb.random_start(k_perturb, A, eps)
    elif config.method == "adv":
      A_w, clean = perturb.pgd(lambda a, i: loss(params, stats, a, x, y, False,
                                                 1 + offset + i)[0],
                               k_perturb, A, eps, config.perturb.steps,
                               config.perturb.random_start)
    else:
      A_w = A
    # 4. Weight step: SGD on the train loss at A_w (BatchNorm in train mode).
    index = (3 + config.perturb.steps if config.method == "adv" else 1) + offset
    g_w, stats = jax.grad(lambda p: loss(p, stats, A_w, x, y, True, index), has_aux=True)(
        params)
    updates, weight_opt = w_opt.update(g_w, state["w_opt"], params)
    new = dict(state, params=optax.apply_updates(params, updates), batch_stats=stats,
               alpha=alpha, a_opt=alpha_opt, w_opt=weight_opt, step=state["step"] + 1)
    return new, A_w, clean

  return step


# The gradients each phase uses: the alpha step, the central difference and PGD
# differentiate with respect to the mixing weights only, the clean and attacked losses are
# values alone; the unrolled weights, v and the exact H v need the weight gradients.
NEEDS = {"alpha": ops.INPUT_GRADS, "unroll": ops.ALL_GRADS, "unrolled_val": ops.ALL_GRADS,
         "hvp": ops.ALL_GRADS, "hvp_plus": ops.INPUT_GRADS, "hvp_minus": ops.INPUT_GRADS,
         "clean": ops.NO_GRADS, "pgd": ops.INPUT_GRADS, "attacked": ops.NO_GRADS,
         "weights": ops.ALL_GRADS}
# The evaluations of H v differentiate the train loss of the "unroll" evaluation.
HVP_PHASES = ("hvp", "hvp_plus", "hvp_minus")


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
  return [plan.index("unroll") if p in HVP_PHASES else i for i, p in enumerate(plan)]


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


def make_step(model, config, steps_per_epoch: int, preprocess):
  """step(state, batch) -> (state, metrics), pure; jit it (see `sdarts_jax.search`).

  preprocess(key, images uint8 [N, H, W, 3]) -> float [N, H, W, 3]: augmentation and
  normalisation (`sdarts_jax.data.preprocess` with the dataset's statistics).

  state: {"params", "batch_stats", "alpha", "w_opt", "a_opt", "step"}.
  batch: {"train_image", "train_label", "val_image", "val_label"}, images [N, H, W, 3]
    uint8, labels [N] int32 (global batch; shard it on the mesh's data axis).
  metrics: scalars: train/val loss and accuracy (with the second-order alpha step the
    validation loss at the unrolled weights), eps, lr, and for adv the clean and attacked
    losses and whether the attack was kept.
  Random numbers (augmentation, RS noise, PGD start, the noise op) come from
  fold_in(PRNGKey(config.seed), step), so a run reproduces and resumes exactly.
  """
  method = config.method
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r} (config.method); known: {METHODS}")
  check_alpha_step(config.alpha)
  evaluate, mixed = make_evaluate(model), make_mixed_evaluate(model)
  a_opt = optim.alpha_optimizer(config.alpha)
  w_opt = optim.weight_optimizer(config.weights, config.epochs, steps_per_epoch)
  lr_of = optim.weight_lr(config.weights, config.epochs, steps_per_epoch)
  pgd, second = config.perturb, config.alpha
  plan = phases(method, pgd.steps, second.order, second.hvp)

  def step(state, batch):
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), state["step"])
    k_aug_t, k_aug_v, k_perturb, k_eval = jax.random.split(key, 4)
    xs = (preprocess(k_aug_t, batch["train_image"]), preprocess(k_aug_v, batch["val_image"]))
    ys = (batch["train_label"], batch["val_label"])
    eps = optim.eps_at(state["step"], pgd, config.epochs, steps_per_epoch)
    lr = lr_of(state["step"])  # also xi, the lr of the second order's unrolled weights
    A = mixing_weights(state["alpha"])

    # 1. Architecture step: Adam on alpha from the validation loss's gradient w.r.t. A.
    def architecture_step(c, grad_A):
      s = c["state"]
      grad_alpha = jax.vjp(mixing_weights, s["alpha"])[1](grad_A)[0]
      updates, opt = a_opt.update(grad_alpha, s["a_opt"], s["alpha"])
      alpha = optax.apply_updates(s["alpha"], updates)
      c = _replace(c, state=dict(s, alpha=alpha, a_opt=opt))
      # 2. Mixing weights for the weight step, 3. perturbed.
      A = mixing_weights(alpha)
      if method == "darts":
        return _request(c, A=A, A_eval=A, batch=TRAIN, train_bn=True)
      if method == "rs":
        return _request(c, A=A, A_eval=perturb.random_start(k_perturb, A, eps), batch=TRAIN,
                        train_bn=True)
      return _request(c, A=A, A_eval=A, batch=TRAIN, train_bn=False)  # adv: clean loss first

    # First order: the gradient of L_val(w, A), at A = softmax(alpha).
    def alpha_phase(c, ev: Evaluation):
      c = _replace(c, state=dict(c["state"], batch_stats=ev.batch_stats),
                   val_loss=ev.loss, val_accuracy=ev.accuracy)
      return architecture_step(c, ev.grad_A)

    # Second order: the gradient of L_val(w', A) (`sdarts_jax.unrolled`). BatchNorm's
    # running statistics follow the train pass at w alone: the evaluation at w' belongs to
    # the virtual weights, those of H v differentiate the train pass (the reference's
    # central difference also updates them at w +- R v).
    def unroll_phase(c, ev: Evaluation):  # ev: L_train(w, A)
      s = c["state"]
      w_virtual = unrolled.virtual_weights(
          s["params"], ev.grad_params, unrolled.momentum_buffer(s["w_opt"]), lr,
          config.weights.momentum, config.weights.weight_decay)
      c = _replace(c, state=dict(s, batch_stats=ev.batch_stats))
      return _request(c, params=w_virtual, batch=VAL)

    def unrolled_val_phase(c, ev: Evaluation):  # ev: L_val(w', A)
      w, v = c["state"]["params"], ev.grad_params
      c = _replace(c, val_loss=ev.loss, val_accuracy=ev.accuracy, grad_A=ev.grad_A, v=v)
      if second.hvp == "exact":
        return _request(c, params=w, batch=TRAIN)
      radius = unrolled.fd_radius(v, second.hvp_r)
      return _request(_replace(c, radius=radius), params=unrolled.shifted(w, v, radius),
                      batch=TRAIN)

    def hvp_phase(c, ev: Evaluation):  # ev: H v at (w, A), exact
      return architecture_step(c, unrolled.hypergradient(c["grad_A"], ev.grad_A, lr))

    def hvp_plus_phase(c, ev: Evaluation):  # ev: L_train(w + R v, A)
      return _request(_replace(c, grad_A_plus=ev.grad_A),
                      params=unrolled.shifted(c["state"]["params"], c["v"], -c["radius"]))

    def hvp_minus_phase(c, ev: Evaluation):  # ev: L_train(w - R v, A)
      hvp = unrolled.central_difference(c["grad_A_plus"], ev.grad_A, c["radius"])
      c = architecture_step(c, unrolled.hypergradient(c["grad_A"], hvp, lr))
      return _request(c, params=c["state"]["params"])

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

    handlers = {"alpha": alpha_phase, "unroll": unroll_phase,
                "unrolled_val": unrolled_val_phase, "hvp": hvp_phase,
                "hvp_plus": hvp_plus_phase, "hvp_minus": hvp_minus_phase,
                "clean": clean_phase, "pgd": pgd_phase, "attacked": attacked_phase,
                "weights": weights_phase}
    kinds = list(dict.fromkeys(plan))
    branches = [handlers[k] for k in kinds]

    def body(c, i):
      phase_id, key_index, need = i
      s = c["state"]
      x = jnp.where(c["batch"] == TRAIN, xs[TRAIN], xs[VAL])
      y = jnp.where(c["batch"] == TRAIN, ys[TRAIN], ys[VAL])
      args = (c.get("params", s["params"]), s["batch_stats"], c["A_eval"], x, y,
              c["train_bn"], jax.random.fold_in(k_eval, key_index), need)
      if "hvp" in kinds:
        ev = lax.cond(phase_id == kinds.index("hvp"), lambda: mixed(*args, c["v"]),
                      lambda: evaluate(*args))
      else:
        ev = evaluate(*args)
      return lax.switch(phase_id, branches, c, ev), None

    zero = jnp.zeros((), jnp.float32)
    carry = {"state": state, "A": A, "A_eval": A, "batch": jnp.int32(VAL),
             "train_bn": jnp.bool_(True), "val_loss": zero, "val_accuracy": zero,
             "train_loss": zero, "train_accuracy": zero, "clean_loss": zero,
             "attacked_loss": zero, "attack_kept": zero}
    if second.order == 2:  # the weights of the request, v and the gradients w.r.t. A
      zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
      carry.update(batch=jnp.int32(TRAIN), params=state["params"], v=zeros(state["params"]),
                   grad_A=zeros(A))
      if second.hvp == "finite_difference":
        carry.update(grad_A_plus=zeros(A), radius=zero)
    ids = jnp.array([kinds.index(p) for p in plan], jnp.int32)
    needs = jnp.array([NEEDS[p] for p in plan], jnp.int32)
    carry, _ = lax.scan(body, carry, (ids, jnp.array(noise_indices(plan), jnp.int32), needs))
    new_state = dict(carry["state"], step=state["step"] + 1)
    metrics = {k: carry[k] for k in ("train_loss", "train_accuracy", "val_loss",
                                     "val_accuracy")}
    metrics.update(eps=jnp.asarray(eps, jnp.float32), lr=lr)
    if method == "adv":
      metrics.update({k: carry[k] for k in ("clean_loss", "attacked_loss", "attack_kept")})
    return new_state, metrics

  return step


def _replace(c: dict, **kw) -> dict:
  return {**c, **kw}


def _request(c: dict, params=None, A=None, A_eval=None, batch=None, train_bn=None) -> dict:
  """Set the next evaluation's request (fields left None keep their value; params, the
  weights, only with the second-order alpha step: else the state's are used)."""
  new = dict(c)
  for name, value in (("params", params), ("A", A), ("A_eval", A_eval)):
    if value is not None:
      new[name] = value
  if batch is not None:
    new["batch"] = jnp.int32(batch)
  if train_bn is not None:
    new["train_bn"] = jnp.bool_(train_bn)
  return new
