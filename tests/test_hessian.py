"""Exact Hessian-vector products, Lanczos, Hutchinson, and device-count invariance."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import hessian_batches, tiny_search
from sdarts_jax.run import parallel
from sdarts_jax.search import hessian

KEY = jax.random.PRNGKey(0)


@functools.lru_cache(maxsize=None)
def setup():
  """A tiny supernet after init, two batches of 8 images: [2, 8, 8, 8, 3]."""
  _, model, state, batches, _ = tiny_search("darts")
  return (model, state, *hessian_batches(batches.source))


def _f64(tree):
  return jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, tree)


@functools.lru_cache(maxsize=None)
def dense_hessian(options: hessian.HessianLoss) -> np.ndarray:
  """jax.hessian of the loss `options` defines at setup()'s state, in float64 (computed
  once per options: several tests compare with the same matrix)."""
  model, state, x, y = setup()
  with jax.enable_x64(True):
    params, stats, alpha, x64 = _f64((state["params"], state["batch_stats"], state["alpha"], x))
    loss, x0 = hessian.make_loss(model, options, params, stats, alpha, x64, y, KEY)
    return np.asarray(jax.jit(jax.hessian(loss))(x0))


@pytest.mark.parametrize("wrt", ["alpha", "A"])
def test_hvp_equals_dense_hessian_times_v(wrt):
  model, state, x, y = setup()
  options = hessian.HessianLoss(wrt=wrt, train_bn=True, weight_decay=1e-3)
  with jax.enable_x64(True):
    params, stats, alpha, x64 = _f64((state["params"], state["batch_stats"], state["alpha"], x))
    loss, x0 = hessian.make_loss(model, options, params, stats, alpha, x64, y, KEY)
    assert x0.dtype == jnp.float64 and x0.shape == (2 * 14 * 3,)
    v = jax.random.normal(KEY, x0.shape, jnp.float64)
    hv = jax.jit(lambda v: hessian.hvp(loss, x0, v))(v)
    h = dense_hessian(options)
    # float64 throughout (here and in the spectra below): errors are roundings of 1e-16 of
    # the scale (0.02-0.25; observed 2e-15 of it), so atol=1e-12 for entries near zero is
    # still 1e4 times that on any CPU, and 1e-8 of the scale catches any wrong term.
    np.testing.assert_allclose(hv, h @ v, rtol=1e-9, atol=1e-12)
    # alpha's weight decay w adds w I: every eigenvalue moves by exactly w.
    h0 = dense_hessian(dataclasses.replace(options, weight_decay=0.0))
    shift = np.linalg.eigvalsh(h) - np.linalg.eigvalsh(h0)
    np.testing.assert_allclose(shift, 1e-3, rtol=1e-9, atol=1e-12)


# The host-driven loops (CPU); the compiled loops (GPU/TPU) equal them
# (test_accel_paths.py::test_compiled_lanczos_on_a_mesh_equals_host_driven).
@pytest.mark.parametrize("host", [True])
def test_lanczos_and_spectrum_match_eigh(host):
  """Lanczos and the dense spectrum agree with eigh of jax.hessian."""
  model, state, x, y = setup()
  options = hessian.HessianLoss(train_bn=True)
  measure = hessian.Measure(model, options, k=3, num_iters=30, host=host)
  call = measure if host else jax.jit(measure)
  spectrum = measure.spectrum if host else jax.jit(measure.spectrum)
  with jax.enable_x64(True):
    params, stats, alpha, x64 = _f64((state["params"], state["batch_stats"], state["alpha"], x))
    args = (params, stats, alpha, x64, y, KEY)
    want = np.linalg.eigvalsh(dense_hessian(options))[::-1]
    h, eig = spectrum(*args)
    np.testing.assert_allclose(eig, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(np.asarray(h))[::-1], want, rtol=1e-9,
                               atol=1e-12)
    out = call(*args)
    # Lanczos (30 iterations, float64) against eigh: its convergence, not rounding (observed
    # 2e-15); the top 3 (0.026, 0.020, 0.014) are none near zero, so rtol is the bound.
    np.testing.assert_allclose(out["eigenvalues"], want[:3], rtol=1e-4)
    np.testing.assert_allclose(out["lambda_max"], want[0], rtol=1e-4)



@pytest.mark.parametrize("host", [True, False])
def test_lanczos_on_a_known_matrix(host):
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(50, 50)))
  eig = np.concatenate([[10.0, 7.0, 6.5], rng.uniform(-1, 1, 47)])
  m = jnp.asarray((q * eig) @ q.T, jnp.float32)
  body = hessian.lanczos_body(lambda v, a: a @ v)
  v0 = jax.random.normal(KEY, (50,))
  top = hessian.ritz_values(*hessian.lanczos(body, m, v0, 25, host))[:3]
  # float32: eigenvalues are perfectly conditioned (|d lambda| <= |dM|, a few roundings of
  # |M| = 10 from the matrix and the products), none near zero: observed 1.5e-7; 1e-4.
  np.testing.assert_allclose(top, [10.0, 7.0, 6.5], rtol=1e-4)


def test_hutchinson_within_its_stated_error():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(40, 40))
  m = jnp.asarray(a + a.T, jnp.float32)
  true = float(jnp.trace(m))
  body = hessian.hutchinson_body(lambda v, a: a @ v)
  est, se = hessian.hutchinson(body, m, 40, 2000, KEY, jnp.float32, host=False)
  # The per-probe variance is 2 (|M|_F^2 - sum M_ii^2) for Rademacher probes.
  theory = np.sqrt(2 * (np.sum(np.asarray(m) ** 2) - np.sum(np.diag(m) ** 2)) / 2000)
  # Statistical bounds on fixed draws (JAX's PRNG is bit-exact on any CPU); float32
  # roundings (1e-6 of the terms) are far below them.
  assert abs(float(se) - theory) < 0.1 * theory
  assert abs(float(est) - true) < 4 * theory


def test_one_and_four_devices_agree():
  """On the compiled loops, the path of multi-device (GPU/TPU) runs; the host-driven loops
  evaluate the same sharded loss and equal them (test_lanczos_and_spectrum_match_eigh)."""
  if jax.device_count() < 4:
    pytest.skip("needs the 4 CPU devices of conftest")
  model, state, x, y = setup()
  measure = hessian.Measure(model, hessian.HessianLoss(), k=2, num_iters=15, trace_samples=8,
                            host=False)
  results = []
  for n in (1, 4):
    mesh = parallel.make_mesh(n)
    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh, axis=1)
    args = [jax.device_put(a, rep) for a in (state["params"], state["batch_stats"],
                                             state["alpha"])]
    args += [jax.device_put(x, shard), jax.device_put(y, shard), KEY]
    results.append(measure.on_mesh(mesh)(*args))
  # The same float32 HVPs on differently sharded batch sums: H carries a few roundings of
  # its scale. Eigenvalues are perfectly conditioned (|d lambda| <= |dH|): normwise, by the
  # largest (observed 2.9e-7; 1e-5). The trace is a mean of Rademacher forms v'Hv, each
  # bounded by n |H| but here cancelling to 1/400 of that (trace 5.2e-3, n |H| = 2.2,
  # n = 84 alpha entries), so it is bounded by that scale: 1e-6 of it (observed 2.6e-9;
  # 4e-4 of the trace, below the 1e-3 of a wrong loss or probe).
  lam = np.max(np.abs(np.asarray(results[1]["eigenvalues"])))
  n = sum(a.size for a in jax.tree.leaves(state["alpha"]))
  np.testing.assert_allclose(results[0]["eigenvalues"], results[1]["eigenvalues"], rtol=0,
                             atol=1e-5 * lam)
  np.testing.assert_allclose(results[0]["trace"], results[1]["trace"], rtol=0,
                             atol=1e-6 * n * lam)


def test_early_stop_rule():
  flat = [1.0] * 9
  assert not hessian.early_stop(flat, 5, 4, 1.3)
  rising = [1.0] * 5 + [1.2, 1.5, 1.8, 2.0]  # last 5 mean 1.5 vs first 5 mean 1.0
  assert hessian.early_stop(rising, 5, 4, 1.3)
  assert not hessian.early_stop(rising, 5, 4, 1.6)
  assert not hessian.early_stop(rising[:-1], 5, 4, 1.3)  # too few values
