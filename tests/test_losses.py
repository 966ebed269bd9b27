"""The one cross-entropy against a plainly written numpy reference."""
import jax
import numpy as np

from sdarts_jax.model import losses


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
  # Each loss is a weighted sum of log-softmax entries, |log p| <= range of the row's logits
  # + log K (here 14): float32 carries a few roundings of those terms, so an example whose
  # loss is near 0.02 keeps the terms' absolute error, and so does the mean. Bounded by
  # 1e-6 of the terms' scale (17 roundings; observed 7e-7 absolute, 5e-8 of the scale).
  x = np.asarray(logits, np.float64)
  terms = np.max(x.max(-1) - x.min(-1)) + np.log(x.shape[-1])
  for smoothing in (0.0, 0.1):
    got = losses.cross_entropy_per_example(logits, labels, smoothing)
    want = smoothed_ce_per_example(logits, labels, smoothing)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * terms)
    np.testing.assert_allclose(losses.cross_entropy(logits, labels, smoothing),
                               smoothed_ce(logits, labels, smoothing), rtol=0, atol=1e-6 * terms)
