"""The GPU/TPU code paths, run on CPU: grouped depthwise convolutions equal the fused CPU
path for every op and for a whole search step; compiled Lanczos loops (on a mesh, as the
search runs them on accelerators) equal the host-driven ones. (A resume compiling nothing
new is in test_compiles.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import hessian_batches, tiny_config, tiny_search
from sdarts_jax.data import pipeline
from sdarts_jax.model import ops
from sdarts_jax.run import parallel
from sdarts_jax.search import hessian, run_search, scan_step

KEY = jax.random.PRNGKey(0)
CONV_OPS = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "nor_conv_1x1",
            "nor_conv_3x3")


def _close(a, b, tol):
  """Normwise, per leaf: max |a - b| <= tol * max |b|. The two implementations sum the same
  float32 products in different orders (grouped depthwise then pointwise convolutions
  against one dense convolution), so each entry's error is bounded by a few roundings of the
  largest terms that enter it, not of the entry itself: an entry that cancels to near zero
  (a gradient, a BatchNorm mean) keeps the absolute error of its leaf's scale. Comparing
  against the leaf's scale is what holds on any CPU (AVX2 and AVX-512 differ in summation
  order and fused multiply-adds, not in that bound)."""
  def check(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = np.max(np.abs(y)) if y.size else 0.0
    np.testing.assert_array_less(np.max(np.abs(x - y), initial=0.0), tol * scale + 1e-30)
  jax.tree.map(check, a, b)


@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_grouped_equals_fused(stride):
  """Every convolution op (the ops whose implementation differs) on two edges, mixed by
  random weights, in training mode: the output, the updated BatchNorm statistics, and the
  gradients of the input, of every op's parameters and of the weights (one entry per edge
  and op) agree."""
  edge_ops = (CONV_OPS, CONV_OPS[::-1])
  x = jax.random.normal(KEY, (4, 8, 8, 4))
  w = jax.random.uniform(jax.random.PRNGKey(1), (2, len(CONV_OPS)))
  build = lambda impl: ops.MixedOps(edge_ops, stride, impl)
  variables = build("fused").init(KEY, x, w, True)
  assert set(variables["params"]) == set(CONV_OPS)

  def run(impl):
    def loss(params, x, w):
      y, new = build(impl).apply({"params": params, "batch_stats": variables["batch_stats"]},
                                 x, w, True, mutable=["batch_stats"])
      return jnp.sum(jnp.sin(y)), (y, new["batch_stats"])
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
        variables["params"], x, w)

  (l_f, (y_f, s_f)), g_f = run("fused")
  (l_g, (y_g, s_g)), g_g = run("grouped")
  assert y_f.shape == (4, 8 // stride, 8 // stride, 2, 4)
  # Outputs and statistics: a few float32 roundings of the leaf's scale (observed on AVX-512
  # Xeon: 1.4e-7 for y); 1e-5 is 80 roundings (u = 6e-8).
  _close(y_g, y_f, 1e-5)
  _close(s_g, s_f, 1e-5)
  # The loss sum(sin y) cancels heavily (at stride 1 |loss| is 2e-4 of sum |sin y|), so it is
  # bounded relative to its sum of absolute terms: each term carries the outputs' error
  # above (|d sin y| <= |dy|). Observed: 1.3e-8 * sum|sin y| on Xeon, 2.4e-8 on Zen 4 (where
  # rtol=1e-5 on the loss itself failed); the bound 1e-6 is 17 roundings per term.
  terms = float(jnp.sum(jnp.abs(jnp.sin(y_f))))
  assert abs(float(l_g) - float(l_f)) <= 1e-6 * terms, (float(l_g), float(l_f), terms)
  # Gradients: each entry is a sum over batch and pixels of products through BatchNorm's
  # backward pass (itself a difference of means), so the error scales with the leaf, not the
  # entry (observed: 1e-6 of the leaf's largest entry on Xeon); 1e-4 leaves 100x.
  _close(g_g, g_f, 1e-4)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_f))  # none vacuous


@pytest.mark.parametrize("method", ["adv"])
def test_search_step_grouped_equals_fused(method):
  """One whole SDARTS-ADV step (alpha step, PGD attack, weight step) from the same state:
  the two implementations give the same new state and metrics."""
  outs = {}
  for impl in ("fused", "grouped"):
    config = tiny_config(method, **{"model.impl": impl})
    source = pipeline.load(config.data, "train")
    batches = pipeline.SearchBatches(source, 0.5, config.data.batch_size, config.seed)
    model = run_search.build_model(config, source.num_classes)
    assert model.impl == impl
    state = jax.jit(lambda: run_search.init_state(model, config, source.images.shape[1:], 4))()
    preprocess = lambda k, im: pipeline.preprocess(k, im, source.mean, source.std, True)
    outs[impl] = jax.jit(scan_step.make_step(model, config, 4, preprocess))(state, batches.batch(0, 0))
  (s_f, m_f), (s_g, m_g) = outs["fused"], outs["grouped"]
  # Metrics are losses, accuracies and schedule values (each its own leaf, so normwise is
  # relative); the losses are means of positive per-example terms: well conditioned, a few
  # roundings of the logits' error, which a whole step's forward pass keeps near 1e-6.
  _close(m_g, m_f, 1e-4)
  # The new state is the old one plus updates; each update carries the gradients' error
  # above (1e-4 of its leaf), and is itself 1e-3 to 1e-2 of the leaf at these learning
  # rates, so the state agrees to about 1e-6 of its leaf; 1e-5 bounds that with margin.
  _close(s_g["alpha"], s_f["alpha"], 1e-5)
  _close(s_g["params"], s_f["params"], 1e-5)
  _close(s_g["batch_stats"], s_f["batch_stats"], 1e-4)  # the batch means' errors (1e-5 of
  # the leaf, as for y above) enter the running statistics at momentum 0.1
  assert float(m_f["attack_kept"]) in (0.0, 1.0)


def test_compiled_lanczos_on_a_mesh_equals_host_driven():
  """The search's Hessian tracker on an accelerator (loops compiled, jitted with the batch
  sharded over 4 devices) and on CPU (loops driven from Python, one device): the same
  Lanczos coefficients, so the same eigenvalues, in float32."""
  _, model, state, batches, _ = tiny_search("darts", **{"model.impl": "grouped"})
  images, labels = hessian_batches(batches.source)
  options = hessian.HessianLoss("alpha", True, 1e-3)
  args = (state["params"], state["batch_stats"], state["alpha"], images, labels, KEY)
  host = hessian.Measure(model, options, k=3, num_iters=12, host=True)
  compiled = hessian.Measure(model, options, k=3, num_iters=12, host=False)
  mesh = parallel.make_mesh(4)
  sharded = parallel.batch_sharded(mesh, axis=1)
  on_mesh = compiled.on_mesh(mesh)
  assert on_mesh is not compiled  # jitted with shardings: the accelerator path
  got = on_mesh(*args[:3], jax.device_put(images, sharded), jax.device_put(labels, sharded),
                KEY)
  want = host(*args)
  assert got["eigenvalues"].shape == (3,)
  # Eigenvalues of a symmetric matrix are perfectly conditioned (|d lambda| <= ||dH||), and
  # both sides run the same float32 HVPs on differently sharded sums, so they agree to a few
  # roundings of the largest eigenvalue times the Lanczos iterations (12): 1e-4 of lambda_max.
  _close(got["eigenvalues"], want["eigenvalues"], 1e-4)
  assert float(got["lambda_max"]) > 0
