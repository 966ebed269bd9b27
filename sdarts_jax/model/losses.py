"""The one cross-entropy of the project: search, evaluation training, inference, Hessian."""
from __future__ import annotations

import jax
import optax


def cross_entropy_per_example(logits: jax.Array, labels: jax.Array,
                              smoothing: float = 0.0) -> jax.Array:
  """Softmax cross-entropy against (1 - smoothing) one_hot + smoothing / classes (the
  reference's CrossEntropyLabelSmooth; smoothing 0 is nn.CrossEntropyLoss).
  logits [N, classes], labels [N] int -> [N]."""
  if not smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
  """The mean of `cross_entropy_per_example` over the batch: a scalar."""
  return cross_entropy_per_example(logits, labels, smoothing).mean()
