"""The TPU compile check (`sdarts_jax.tpu_check`): the smoke-size SDARTS-ADV search step and
the Hessian's HVP loop compiled for a v5e:2x2 slice by the real TPU compiler, with no TPU.

The compiling tests need libtpu, which `make test`'s venv does not have (it would make
every CPU run probe for a TPU): there they are skipped, and `make tpu-test` runs them in
.venv-tpu (`.ci/run` does, after `make test`). The estimate's arithmetic and the missing-
libtpu error are checked everywhere.
"""
import importlib.util
import re

import pytest

from sdarts_jax import tpu_check

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAS_LIBTPU, reason="libtpu is not installed in this venv; `make tpu-test` runs the "
    "TPU compile tests in .venv-tpu")
V5E = tpu_check.CHIPS["TPU v5 lite"]


def test_a_device_that_is_one_of_a_chips_cores_gets_its_share():
  """v4 and v5p slices list each TensorCore as a device (`core_on_chip` 0 and 1): each gets
  half the chip's HBM and peaks (the public v4 figures: 32 GiB, 275 TFLOP/s, 1,228 GB/s per
  chip); a one-core chip's device (v5e) gets the whole chip."""
  from types import SimpleNamespace
  v4 = [SimpleNamespace(device_kind="TPU v4", core_on_chip=i % 2) for i in range(8)]
  core = tpu_check.chip_of(v4)
  assert (core.hbm_gib, core.bf16_flops, core.hbm_bytes_s) == (16, 137.5e12, 614e9)
  v5e = [SimpleNamespace(device_kind="TPU v5 lite", core_on_chip=0) for _ in range(4)]
  assert tpu_check.chip_of(v5e) == V5E


def test_estimate_counts_loops_and_prefers_valid_compiler_figures():
  """Roofline by hand: 1.97e12 FLOP at 197 TFLOP/s is 10 ms, 8.19e9 bytes at 819 GB/s is
  10 ms; a loop body counted once by the cost analysis is multiplied by its trip count;
  the compiler's optimal_seconds is used only for a loop-free program, and only when
  positive (it is negative for most supernet programs)."""
  est, how = tpu_check.estimate(1.97e12, 8.19e8, 1.0, V5E, -1.0)
  assert est == pytest.approx(0.01) and how == "roofline"
  est, _ = tpu_check.estimate(1.97e11, 8.19e9, 1.0, V5E, -354.0)
  assert est == pytest.approx(0.01)
  est, how = tpu_check.estimate(1.97e12, 0.0, tpu_check.loop_factor((11,)), V5E, 0.5)
  assert est == pytest.approx(0.11) and "x11" in how
  assert tpu_check.estimate(1.97e12, 0.0, 1.0, V5E, 0.02) == (0.02, "compiler")
  assert tpu_check.loop_factor(()) == 1.0
  assert tpu_check.loop_factor((20, 4)) == 12.0  # two loops, each body counted once


def test_step_loop_factor_by_hand():
  """SDARTS-ADV with 7 PGD steps runs alpha (3 units), clean (1), 7 PGD (3 each), attacked
  (1), weights (3): 29 units. The scan step's cost analysis counts one full evaluation (3),
  the static step's each distinct phase once (3 + 1 + 3 + 1 + 3 = 11); DARTS's static step
  has no loop (alpha and weights, 6 of 6)."""
  from sdarts_jax import defaults
  adv, darts = defaults.search_config("adv"), defaults.search_config("darts")
  assert tpu_check.step_loop_factor(adv, "scan") == pytest.approx(29 / 3)
  assert tpu_check.step_loop_factor(adv, "static") == pytest.approx(29 / 11)
  assert tpu_check.step_loop_factor(darts, "static") == 1.0
  assert tpu_check.step_loop_factor(darts, "scan") == 2.0


def test_largest_batch_that_fits_scales_the_temporaries():
  """16 GiB chip; fixed buffers 1 GiB, temporaries 2 GiB for 8 examples (0.25 GiB each):
  15 GiB / 0.25 GiB = 60 examples."""
  gib = 2**30
  v = tpu_check.Verdict("step", 0, 0, 3 * gib, gib, 2 * gib, 0, 0, 1, -1, 0, "", 1, 8)
  assert tpu_check.largest_batch_that_fits(v, V5E) == 60


@pytest.mark.skipif(HAS_LIBTPU, reason="libtpu is installed here")
def test_missing_libtpu_is_one_clear_error():
  with pytest.raises(tpu_check.CheckError, match=r"libtpu is not installed.*make tpu-check"):
    tpu_check.topology_devices("v5e:2x2")


@needs_libtpu
def test_bad_topology_is_one_clear_error():
  with pytest.raises(tpu_check.CheckError, match=r"--topology='v9x:2x2'.*v5e:2x2"):
    tpu_check.topology_devices("v9x:2x2")


@pytest.fixture(scope="module")
def compiled_smoke_adv():
  """{name: (verdict, compiled)} of the smoke-size SDARTS-ADV search step (3 cells, C=4,
  global batch 32) and the Hessian's Lanczos loop of HVPs, compiled for v5e:2x2 as
  `tpu_check.check` does."""
  from sdarts_jax import defaults
  from sdarts_jax.model import ops
  from sdarts_jax.run import parallel
  config = defaults.apply_search_args(defaults.search_config("adv"), "smoke")
  config.data.batch_size = 32
  config.hessian.lanczos_iters = 4
  devices = tpu_check.topology_devices("v5e:2x2")
  mesh = parallel.make_mesh(devices=devices)
  config.model.impl = ops.depthwise_impl("tpu")
  programs = {p.name: p for p in tpu_check.search_programs(config, mesh)}
  chip = tpu_check.chip_of(devices)
  # Effort -1 (the compiler's fastest): these tests check that the programs compile, fit
  # and are laid out as a run's; the estimates in docs/tpu.md use a run's default, 0.
  return {name: tpu_check.compile_program(programs[name], chip, len(devices), -1.0)
          for name in ("step", "hessian")}


@needs_libtpu
@pytest.mark.parametrize("name", ["step", "hessian"])
def test_compiles_for_v5e_and_fits_a_chip(compiled_smoke_adv, name):
  verdict, compiled = compiled_smoke_adv[name]
  assert 0 < verdict.memory_bytes <= V5E.hbm_gib * 2**30
  assert verdict.flops > 0 and verdict.bytes_accessed > 0 and verdict.step_s > 0
  # The implementation a TPU run picks: depthwise convolutions as grouped convolutions.
  assert re.search(r"convolution\(.*feature_group_count=\d+", compiled.as_text())


@needs_libtpu
def test_each_chip_holds_a_quarter_of_the_batch(compiled_smoke_adv):
  """Read from the compiled step's input shardings: every batch array [32, ...] is split
  8 rows per chip over the 4 chips, and the state is whole on every chip."""
  _, compiled = compiled_smoke_adv["step"]
  (state_shardings, batch_shardings), _ = compiled.input_shardings
  for name, sharding in batch_shardings.items():
    shape = (32, 32, 32, 3) if name.endswith("image") else (32,)
    assert sharding.shard_shape(shape) == (8,) + shape[1:], name
  alpha = state_shardings["alpha"]["normal"]
  assert alpha.is_fully_replicated
