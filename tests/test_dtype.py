"""config.dtype = bfloat16 (`supernet.MixedPrecision`): activations and convolutions in
bfloat16, everything the search keeps in float32; one step's updates against float32."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_search
from sdarts_jax.model import losses, spaces, supernet
from sdarts_jax.search import scan_step

SPE = 4


def _models():
  """One small supernet per family, computing in bfloat16."""
  return {
      "darts": supernet.Supernet(spaces.get_space("s3"), 10, channels=4, layers=2,
                                 dtype="bfloat16"),
      "nb201": supernet.NB201Supernet(spaces.get_space("nb201"), 10, channels=4,
                                      cells_per_stage=1, dtype="bfloat16"),
      "1shot1": supernet.OneShot1Supernet(spaces.get_space("1shot1_ss1"), 10, channels=2,
                                          layers=3, dtype="bfloat16"),
  }


def _products(jaxpr, found):
  """Append (primitive, lhs dtype, rhs dtype) of every convolution and matrix product in
  `jaxpr` and the jaxprs nested in it (loops, conditionals, custom derivatives)."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      found.append((eqn.primitive.name,) + tuple(str(v.aval.dtype) for v in eqn.invars[:2]))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          _products(sub.jaxpr, found)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          _products(sub, found)
  return found


@pytest.mark.parametrize("family", ["darts", "nb201", "1shot1"])
def test_bfloat16_computes_in_bfloat16_and_keeps_float32(family):
  """The loss and its gradients w.r.t. the parameters and A, traced: every convolution and
  matrix product of the forward and backward pass takes bfloat16 operands; the logits, the
  new BatchNorm statistics and the gradients are float32."""
  model = _models()[family]
  x = jnp.zeros((2, 8, 8, 3))
  A = supernet.mixing_weights({k: jnp.zeros(s) for k, s in model.alpha_shapes().items()})
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, A, False))

  def loss(params, A, batch_stats):
    logits, new = model.apply({"params": params, "batch_stats": batch_stats}, x, A, True,
                              mutable=["batch_stats"])
    return losses.cross_entropy(logits, jnp.zeros(2, jnp.int32)), (logits, new)

  grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
  args = (variables["params"], A, variables["batch_stats"])
  products = _products(jax.make_jaxpr(grad)(*args).jaxpr, [])
  assert products and all(p[1:] == ("bfloat16", "bfloat16") for p in products), \
      sorted(set(products))
  (g_params, g_A), (logits, new) = jax.eval_shape(grad, *args)
  assert logits.dtype == jnp.float32
  for tree in (g_params, g_A, new):
    assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}


@functools.lru_cache(maxsize=None)
def _step(impl: str, dtype: str):
  """(compiled SDARTS-RS step, initial state, batch) of the tiny search. adam_eps = 1 makes
  Adam's first alpha update lr g / (|g| + 1), about linear in the gradient (with the default
  1e-8 it is lr sign(g), which a rounding flips wherever g is near zero)."""
  config, model, state, batches, preprocess = tiny_search(
      "rs", SPE, **{"dtype": dtype, "model.impl": impl, "alpha.adam_eps": 1.0})
  return (jax.jit(scan_step.make_step(model, config, SPE, preprocess)), state,
          batches.batch(0, 0))


def _updates(step, state, batch) -> dict:
  """One step's changes (new - old, float64) of the parameters, BatchNorm statistics and alpha."""
  new, metrics = step(state, batch)
  assert np.isfinite(float(metrics["train_loss"]))
  return {key: jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                            new[key], state[key])
          for key in ("params", "batch_stats", "alpha")}


def _relative_error(got, want) -> float:
  """||got - want|| / ||want|| over all the leaves of a tree (2-norm)."""
  pairs = list(zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  return float(np.sqrt(sum(np.sum((g - w) ** 2) for g, w in pairs)
                       / sum(np.sum(w ** 2) for _, w in pairs)))


# `grouped`, what TPUs and GPUs run; the fused kernels' bfloat16 dtypes are checked above
# (the supernets there are `fused`), and a second implementation would cost two more
# compilations of the suite's budget.
@pytest.mark.parametrize("impl", ["grouped"])
def test_bfloat16_step_updates_float32_within_its_precision(impl):
  """One SDARTS-RS step (alpha step, noise, weight step) in bfloat16 against float32 from the
  same state, batch and keys: the updates (new - old) of the parameters, of the BatchNorm
  statistics and of alpha, each as a whole (2-norm), agree within the error that bfloat16's
  precision implies for this step.

  That error is measured, not guessed: the float32 step from the parameters rounded to
  bfloat16 (one rounding, each entry off by at most u = 2^-9 relative) moves the updates by
  e_round, which holds the step's conditioning (tiny batches through train-mode BatchNorm
  make the weight gradients cancel: e_round is 5-7 %, observed). The bfloat16 step rounds
  the parameters and then the activations about 16 times along its longest path forward and
  as often backward, each a relative perturbation of the same size; independent roundings
  add in quadrature, so the bound is sqrt(32) e_round < 6 e_round (observed: 0.95-1.5
  e_round). And bfloat16 did run: its error is at least e_round / 4 (a float32 program
  would agree to float32's precision)."""
  step32, state, batch = _step(impl, "float32")
  want = _updates(step32, state, batch)
  rounded = jax.tree.map(lambda p: p.astype(jnp.bfloat16).astype(jnp.float32), state["params"])
  e_round = _updates(step32, dict(state, params=rounded), batch)
  got = _updates(*_step(impl, "bfloat16"))
  for key in want:
    bound = _relative_error(e_round[key], want[key])
    err = _relative_error(got[key], want[key])
    assert bound / 4 <= err <= 6 * bound, (key, err, bound)


def test_dtype_names_and_configs_saved_before_it():
  """A config without `dtype` (saved before it existed, read back by the analysis tools)
  builds a float32 supernet; an unknown name is a ValueError that names the choices."""
  from sdarts_jax import defaults
  from sdarts_jax.search import run_search
  config = defaults.search_config("adv")
  del config["dtype"]
  assert run_search.build_model(config, 10).dtype == "float32"
  config.dtype = "float16"
  with pytest.raises(ValueError, match="float32, bfloat16"):
    run_search.build_model(config, 10)
