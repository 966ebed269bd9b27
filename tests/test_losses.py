"""The one cross-entropy against a plainly written numpy reference."""
import jax
import numpy as np

from sdarts_jax import losses


def smoothed_ce_per_example(logits, labels, smoothing):
  """CrossEntropyLabelSmooth of the reference in numpy, per example: targets
  (1 - s) one_hot + s / K."""
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  picked = logp[np.arange(len(labels)), labels]
  return -((1 - smoothing) * picked + smoothing / logits.shape[-1] * logp.sum(-1))


def smoothed_ce(logits, labels, smoothing):
  return np.mean(smoothed_ce_per_example(logits, labels, smoothing))


def test_cross_entropy_by_hand():
  logits = 3 * jax.random.normal(jax.random.PRNGKey(0), (6, 7))
  labels = np.array([0, 3, 6, 2, 2, 5])
  for smoothing in (0.0, 0.1):
    np.testing.assert_allclose(losses.cross_entropy_per_example(logits, labels, smoothing),
                               smoothed_ce_per_example(logits, labels, smoothing), rtol=1e-6,
                               atol=1e-6)  # float32: entries near 0.02
    np.testing.assert_allclose(losses.cross_entropy(logits, labels, smoothing),
                               smoothed_ce(logits, labels, smoothing), rtol=1e-6)
