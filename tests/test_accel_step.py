"""The static-phase step (`accel_step.make_static_step`, the TPU/GPU default) against the
scan step (`scan_step.make_step`, the CPU default, itself tested against the plain definition in
test_step.py): from the same state and batch, the same new state and metrics, for SDARTS-RS
and SDARTS-ADV."""
import jax
import pytest

from conftest import assert_close_normwise, tiny_config, tiny_search
from sdarts_jax.search import accel_step, scan_step


# DARTS's step is RS's without the noise (the same two evaluations), so RS and ADV cover
# every path of the static step; each case compiles both steps (about a minute on 2 cores).
@pytest.mark.parametrize("method", ["rs", "adv"])
def test_static_step_equals_scan_step(method):
  config, model, state, batches, preprocess = tiny_search(method)
  batch = batches.batch(0, 1)
  s_scan, m_scan = jax.jit(scan_step.make_step(model, config, 4, preprocess))(state, batch)
  s_static, m_static = jax.jit(accel_step.make_static_step(model, config, 4, preprocess))(
      state, batch)
  assert set(m_static) == set(m_scan)
  if method == "adv":  # a discrete outcome: the same attack kept or rejected
    assert float(m_static["attack_kept"]) == float(m_scan["attack_kept"])
  # Both run the same float32 evaluations; they differ only in how the gradients are
  # formed (the scan's written-out backward passes against JAX's derivative rules through
  # the same forward pass), a few roundings of each leaf's scale (observed <= 3e-7 of the
  # leaf; 1e-5 is 80 roundings). A wrong noise key, BN mode or perturbation moves the
  # compared leaves by 1e-3 or more.
  assert_close_normwise(m_static, m_scan, 1e-5)
  for part in ("params", "batch_stats", "alpha", "w_opt", "a_opt"):
    assert_close_normwise(s_static[part], s_scan[part], 1e-5, err_msg=part)
  assert int(s_static["step"]) == int(s_scan["step"]) == 1


def test_step_kind_by_platform():
  """Static on accelerators, scan on CPU and for the second order; a bad name is an error."""
  config = tiny_config("adv")
  assert accel_step.step_kind(config, "cpu") == "scan"
  assert accel_step.step_kind(config, "tpu") == accel_step.step_kind(config, "gpu") == "static"
  config.step = "static"
  assert accel_step.step_kind(config, "cpu") == "static"
  config.alpha.order = 2
  assert accel_step.step_kind(config, "tpu") == "scan"
  config.step = "fast"
  with pytest.raises(ValueError, match="config.step"):
    accel_step.step_kind(config, "tpu")
