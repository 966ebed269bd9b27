"""The GPU/TPU code paths, run on CPU: grouped depthwise convolutions equal the fused CPU
path for every op and for a whole search step; compiled Lanczos loops (on a mesh, as the
search runs them on accelerators) equal the host-driven ones. (A resume compiling nothing
new is in test_compiles.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from sdarts_jax import data, hessian, ops, parallel, search, step

KEY = jax.random.PRNGKey(0)
CONV_OPS = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "nor_conv_1x1",
            "nor_conv_3x3")


def _close(a, b, rtol=2e-5, atol=2e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


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
  _close(y_g, y_f)
  _close(s_g, s_f)
  _close(l_g, l_f, rtol=1e-5)
  _close(g_g, g_f, rtol=1e-4, atol=1e-4)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_f))  # none vacuous


@pytest.mark.parametrize("method", ["adv"])
def test_search_step_grouped_equals_fused(method):
  """One whole SDARTS-ADV step (alpha step, PGD attack, weight step) from the same state:
  the two implementations give the same new state and metrics."""
  outs = {}
  for impl in ("fused", "grouped"):
    config = tiny_config(method, **{"model.impl": impl})
    source = data.load(config.data, "train")
    batches = data.SearchBatches(source, 0.5, config.data.batch_size, config.seed)
    model = search.build_model(config, source.num_classes)
    assert model.impl == impl
    state = jax.jit(lambda: search.init_state(model, config, source.images.shape[1:], 4))()
    preprocess = lambda k, im: data.preprocess(k, im, source.mean, source.std, True)
    outs[impl] = jax.jit(step.make_step(model, config, 4, preprocess))(state, batches.batch(0, 0))
  (s_f, m_f), (s_g, m_g) = outs["fused"], outs["grouped"]
  _close(m_g, m_f, rtol=1e-4, atol=1e-5)
  _close(s_g["alpha"], s_f["alpha"], rtol=1e-5, atol=1e-6)
  _close(s_g["params"], s_f["params"], rtol=1e-4, atol=1e-5)
  _close(s_g["batch_stats"], s_f["batch_stats"], rtol=1e-4, atol=1e-5)
  assert float(m_f["attack_kept"]) in (0.0, 1.0)


def test_compiled_lanczos_on_a_mesh_equals_host_driven():
  """The search's Hessian tracker on an accelerator (loops compiled, jitted with the batch
  sharded over 4 devices) and on CPU (loops driven from Python, one device): the same
  Lanczos coefficients, so the same eigenvalues, in float32."""
  config = tiny_config("darts", **{"model.impl": "grouped"})
  source = data.load(config.data, "train")
  model = search.build_model(config, source.num_classes)
  state = jax.jit(lambda: search.init_state(model, config, source.images.shape[1:], 4))()
  x = data.preprocess(None, source.images[:16], source.mean, source.std, False)
  images, labels = x.reshape(2, 8, 8, 8, 3), jnp.asarray(source.labels[:16]).reshape(2, 8)
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
  _close(got["eigenvalues"], want["eigenvalues"], rtol=1e-4, atol=1e-5)
  assert float(got["lambda_max"]) > 0
