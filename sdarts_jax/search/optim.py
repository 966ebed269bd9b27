"""Optimizers and schedules (docs/method.md, section 2), as small optax pieces.

Search: the supernet weights use `weight_optimizer` (`sgd` with the cosine `weight_lr`),
alpha uses `alpha_optimizer`, and the perturbation radius follows `eps_at`. Evaluation
training uses `sgd` with `training_lr` (cosine or PC-DARTS's linear decay, with warm-up).
Schedules map an optimizer step count to a value that is constant within an epoch.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jax.Array], jax.Array]


def epoch_of(step, steps_per_epoch: int):
  """The epoch (from 0) a step count falls in."""
  return step // steps_per_epoch


def weight_lr(cfg, epochs: int, steps_per_epoch: int) -> Schedule:
  """Cosine lr from cfg.lr to cfg.lr_min over `epochs`.

  With cfg.lr_epoch_offset = 1, epoch e uses the value at e + 1, as the reference code does
  (it steps its scheduler at the start of every epoch). cfg: config.weights (search) or
  config.optim (training).
  """
  def schedule(count):
    e = epoch_of(count, steps_per_epoch) + cfg.lr_epoch_offset
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + jnp.cos(jnp.pi * e / epochs))

  return schedule


def linear_lr(cfg, epochs: int, steps_per_epoch: int) -> Schedule:
  """PC-DARTS's `adjust_lr` (the official train_imagenet.py): epoch e uses
  lr (E - T - e) / (E - T) while E - e > T, then lr (E - e) / (T (E - T)), with
  T = cfg.linear_tail_epochs (a gentler slope at the end). cfg: config.optim."""
  tail = cfg.linear_tail_epochs

  def schedule(count):
    e = epoch_of(count, steps_per_epoch) + cfg.lr_epoch_offset
    return cfg.lr * jnp.where(epochs - e > tail, (epochs - tail - e) / (epochs - tail),
                              (epochs - e) / (tail * (epochs - tail)))

  return schedule


# config.optim.schedule of the evaluation training -> its schedule.
TRAINING_SCHEDULES = {"cosine": weight_lr, "linear": linear_lr}


def training_lr(cfg, epochs: int, steps_per_epoch: int) -> Schedule:
  """The evaluation training's lr: `weight_lr` (cfg.schedule "cosine") or `linear_lr`
  ("linear"); epoch e < cfg.warmup_epochs uses cfg.lr (e + 1) / warmup in place of the
  schedule's value, as the official train_imagenet.py overwrites the lr after its schedule
  (it does so only for batches above 256; the config decides here). cfg: config.optim."""
  base = TRAINING_SCHEDULES[cfg.schedule](cfg, epochs, steps_per_epoch)

  def schedule(count):
    e = epoch_of(count, steps_per_epoch)
    warm = cfg.lr * (e + 1) / max(cfg.warmup_epochs, 1)
    return jnp.where(e < cfg.warmup_epochs, warm, base(count))

  return schedule


def sgd(cfg, learning_rate: Schedule) -> optax.GradientTransformation:
  """Clip the raw gradient to global norm cfg.grad_clip, add weight decay, momentum SGD
  (buf = momentum * buf + g; w -= lr * buf), as PyTorch's SGD with clip_grad_norm_.
  learning_rate: step count -> lr. cfg: config.weights (search) or config.optim (training).

  optax's clip divides by the norm where PyTorch divides by (norm + 1e-6): a relative
  difference of 1e-6 / norm.
  """
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.add_decayed_weights(cfg.weight_decay),
                     optax.trace(decay=cfg.momentum),
                     optax.scale_by_learning_rate(learning_rate))


def weight_optimizer(cfg, epochs: int, steps_per_epoch: int) -> optax.GradientTransformation:
  """The search's weight optimizer: `sgd` with the cosine `weight_lr`. cfg: config.weights."""
  return sgd(cfg, weight_lr(cfg, epochs, steps_per_epoch))


def training_optimizer(cfg, epochs: int, steps_per_epoch: int) -> optax.GradientTransformation:
  """The evaluation training's optimizer: `sgd` with `training_lr`. cfg: config.optim."""
  return sgd(cfg, training_lr(cfg, epochs, steps_per_epoch))


def alpha_optimizer(cfg) -> optax.GradientTransformation:
  """Adam on raw alpha with *coupled* L2 (added to the gradient first, as PyTorch's
  Adam(weight_decay=...) does; not AdamW). cfg: config.alpha."""
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                     optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.adam_eps),
                     optax.scale(-cfg.lr))


def eps_at(step, cfg, epochs: int, steps_per_epoch: int):
  """The perturbation radius eps = eps_start + (eps_max - eps_start) * epoch / epochs.
  cfg: config.perturb."""
  e = epoch_of(step, steps_per_epoch)
  return cfg.eps_start + (cfg.eps_max - cfg.eps_start) * e / epochs
