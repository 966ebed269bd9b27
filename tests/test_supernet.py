"""Supernet shapes, parameter count, and mixing weights as an input (never a parameter)."""
import jax
import jax.numpy as jnp
import pytest

from sdarts_jax.model import spaces, supernet


def _A(space, key=None):
  shape = space.alpha_shape()
  if key is None:
    return {t: jnp.full(shape, 1 / space.num_ops) for t in spaces.CELL_TYPES}
  return supernet.mixing_weights({t: jax.random.normal(k, shape)
                              for t, k in zip(spaces.CELL_TYPES, jax.random.split(key))})


def _init_shapes(model, image_size=32):
  A = _A(model.space)
  return jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)},
                                           jnp.zeros((2, image_size, image_size, 3)), A, False))


def test_parameter_count_matches_reference():
  """The DARTS reference supernet (C=16, 8 cells, 10 classes) has 1,930,618 parameters."""
  for name in ("s5", "darts"):
    shapes = _init_shapes(supernet.Supernet(spaces.get_space(name), 10, 16, 8))
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == 1_930_618


@pytest.mark.parametrize("name", list(spaces.SPACES))
def test_cell_and_logit_shapes(name):
  space = spaces.get_space(name)
  model = supernet.Supernet(space, 10, 4, 5)
  variables = _init_shapes(model)
  A = _A(space)
  logits, inter = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((2, 32, 32, 3)), A, True, mutable=["intermediates"],
                            capture_intermediates=lambda mdl, _: isinstance(mdl, supernet.Cell),
                            rngs={"noise": jax.random.PRNGKey(0)}), variables)
  assert logits.shape == (2, 10)
  cells = inter["intermediates"]
  # 5 cells: reduction at 1 and 3; output 4 * C channels, C doubling at each reduction.
  want = [(32, 16), (16, 32), (16, 32), (8, 64), (8, 64)]
  for i, (size, channels) in enumerate(want):
    assert cells[f"cell_{i}"]["__call__"][0].shape == (2, size, size, channels)
  assert "alpha" not in str(jax.tree_util.tree_structure(variables["params"]))
