"""DARTS's second-order alpha step (docs/method.md, section 1.5), as the pure
pieces that the step's phases compose (`sdarts_jax.search.scan_step`);
`sdarts_jax.search.step` owns the supernet evaluations.

The alpha step descends the validation loss at the one-step unrolled weights

  w' = w - xi (momentum * buf + grad_w L_train(w, A) + weight_decay * w)  (`virtual_weights`)

where xi is the weight step's current lr and buf its momentum buffer. Its gradient with
respect to the mixing weights A is (`hypergradient`)

  grad_A L_val(w', A) - xi * H v,  v = grad_w' L_val(w', A),
  H v = d/dA <grad_w L_train(w, A), v>   (the mixed second derivative of L_train applied to v).

H v is computed exactly by reverse-over-reverse autodiff (`step.make_mixed_evaluate`), or,
as the reference does, by the central difference of grad_A L_train at w + R v and w - R v
with R = r / ||v|| (`fd_radius`, `shifted`, `central_difference`).

Weights, gradients and v are pytrees of the supernet's params; A and the gradients with
respect to it are pytrees of [edges, ops] arrays (one per cell type).
"""
from __future__ import annotations

import jax
import optax


def momentum_buffer(w_opt_state):
  """The momentum buffer buf (a pytree of params' shapes) of the weight optimizer's state
  (`optim.sgd`: zeros before the first weight step, as the reference's missing buffer)."""
  return optax.tree_utils.tree_get(w_opt_state, "trace")


def virtual_weights(params, grad, buf, lr, momentum: float, weight_decay: float):
  """w' = w - lr (momentum * buf + grad + weight_decay * w), leaf by leaf: the weight step
  of `optim.sgd` without its gradient clipping, as the reference unrolls it."""
  return jax.tree.map(lambda w, g, b: w - lr * (momentum * b + g + weight_decay * w),
                      params, grad, buf)


def fd_radius(v, r: float):
  """R = r / ||v||, ||v|| the global norm over v's leaves: the central difference's step."""
  return r / optax.tree.norm(v)


def shifted(params, v, scale):
  """w + scale * v, leaf by leaf."""
  return jax.tree.map(lambda w, d: w + scale * d, params, v)


def central_difference(grad_plus, grad_minus, radius):
  """H v ~ (grad_A L_train(w + R v) - grad_A L_train(w - R v)) / (2 R), leaf by leaf."""
  return jax.tree.map(lambda p, m: (p - m) / (2 * radius), grad_plus, grad_minus)


def hypergradient(grad_A, hvp, lr):
  """grad_A L_val(w', A) - lr * H v, leaf by leaf: d/dA of L_val at the unrolled weights."""
  return jax.tree.map(lambda g, h: g - lr * h, grad_A, hvp)
