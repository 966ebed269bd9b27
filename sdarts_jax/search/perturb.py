"""Perturbations of the mixing weights A (docs/method.md, section 1.3), as pure functions.

A is a pytree of [edges, ops] arrays (one per cell type) whose rows lie on the simplex.
SDARTS-RS adds uniform noise; SDARTS-ADV runs a sign-PGD attack in the L-inf ball of
radius eps around A. After every move the rows are projected back with `clip`
(clamp-and-renormalise, as the reference code does; not a Euclidean simplex projection).
`pgd` is the attack written plainly (one loss call per use, `sdarts_jax.search.step.plain_step`);
the compiled step runs the same pieces as phases of its scan.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def clip(A):
  """Project each row back onto the simplex the reference's way.

  Per row: remember the argmax, clamp every entry to [0, 1]; if the row then sums to 0,
  set the remembered argmax entry to 1; divide the row by its sum.
  A: pytree of [edges, ops] -> same.
  """
  def clip_rows(a):
    best = jax.nn.one_hot(jnp.argmax(a, axis=-1), a.shape[-1], dtype=a.dtype)
    a = jnp.clip(a, 0.0, 1.0)
    a = jnp.where(jnp.sum(a, axis=-1, keepdims=True) == 0, best, a)
    return a / jnp.sum(a, axis=-1, keepdims=True)

  return jax.tree.map(clip_rows, A)


def uniform_noise(key: jax.Array, A, eps):
  """Independent U(-eps, eps) for every entry of every array in A (same pytree)."""
  leaves, treedef = jax.tree.flatten(A)
  keys = jax.random.split(key, len(leaves))
  noise = [jax.random.uniform(k, a.shape, a.dtype, -eps, eps) for k, a in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, noise)


def random_start(key: jax.Array, A, eps):
  """A + U(-eps, eps), projected: SDARTS-RS's perturbation and the PGD random start."""
  return clip(jax.tree.map(jnp.add, A, uniform_noise(key, A, eps)))


def pgd_update(A_adv, grad, A, eps, step_size):
  """One sign-gradient ascent step in the L-inf ball of radius eps around A, projected.

  A_adv' = clip(A + clamp(A_adv + step_size * sign(grad) - A, -eps, eps)).
  A_adv, grad, A: pytrees of [edges, ops].
  """
  def move(a_adv, g, a):
    a_adv = a_adv + step_size * jnp.sign(g)
    return a + jnp.clip(a_adv - a, -eps, eps)

  return clip(jax.tree.map(move, A_adv, grad, A))


def accept(A_adv, A, loss_adv, loss_clean):
  """The attack's acceptance test: keep the clean A when it had the larger loss."""
  reject = loss_clean > loss_adv
  return jax.tree.map(lambda adv, clean: jnp.where(reject, clean, adv), A_adv, A)


def pgd(loss_of, key: jax.Array, A, eps, steps: int, start_at_random: bool = True):
  """SDARTS-ADV's attack: a random start (or A itself), `steps` sign-gradient steps of size
  2 eps / steps, then the acceptance test against the clean loss.

  loss_of(A, i) -> scalar loss at mixing weights A (the i-th evaluation of the attack: 0 the
  clean loss, 1..steps the PGD gradients, steps + 1 the attacked loss; the index feeds the
  noise op's key). Returns (the perturbed A, the clean loss).
  """
  clean = loss_of(A, 0)
  A_adv = random_start(key, A, eps) if start_at_random else A
  for i in range(steps):
    A_adv = pgd_update(A_adv, jax.grad(loss_of)(A_adv, 1 + i), A, eps, 2 * eps / steps)
  return accept(A_adv, A, loss_of(A_adv, 1 + steps), clean), clean
