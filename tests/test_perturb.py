"""Perturbations of the mixing weights: projection, RS noise, PGD pieces."""
import jax
import jax.numpy as jnp
import numpy as np

from sdarts_jax.search import perturb

KEY = jax.random.PRNGKey(0)


def _rows_on_simplex(a):
  a = np.asarray(a)
  assert (a >= 0).all() and (a <= 1).all()
  # float32 rows of 7 divided by their float32 sum, summed again: at most 2 * 7 roundings
  # (8e-7; observed 2.4e-7, which rtol=1e-6 left 4x); 1e-5 leaves 12x over the bound.
  np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-5)


def test_clip_hand_cases():
  a = jnp.array([[0.5, 0.7, -0.2],     # clamp -> [0.5, 0.7, 0] -> / 1.2
                 [-0.1, -0.3, -0.2],   # all clamped to 0: argmax (entry 0) becomes 1
                 [1.5, 0.5, 0.0]])     # clamp -> [1, 0.5, 0] -> / 1.5
  want = np.array([[0.5 / 1.2, 0.7 / 1.2, 0.0], [1.0, 0.0, 0.0], [1 / 1.5, 0.5 / 1.5, 0.0]])
  # Elementwise is well conditioned here: a non-negative entry over a sum of 3 non-negative
  # ones, from float32 inputs: at most 4 roundings (2.4e-7) on any CPU; zeros exact.
  np.testing.assert_allclose(perturb.clip({"normal": a})["normal"], want, rtol=1e-6)


def test_clip_properties():
  a = jax.random.normal(KEY, (14, 7))
  c = perturb.clip(a)
  _rows_on_simplex(c)
  # Idempotent on the simplex up to the renormalisation: each entry over a float32 sum of 7
  # non-negative ones that is 1 within 7 roundings, so elementwise 8 roundings at most
  # (5e-7, which rtol=1e-6 left 2x; observed 2.6e-7); 1e-5.
  np.testing.assert_allclose(perturb.clip(c), c, rtol=1e-5)
  s = jax.nn.softmax(a)
  np.testing.assert_allclose(perturb.clip(s), s, rtol=1e-5)


def test_uniform_noise_in_box_and_independent():
  A = {"normal": jnp.zeros((14, 7)), "reduce": jnp.zeros((14, 7))}
  eps = 0.3
  noise = perturb.uniform_noise(KEY, A, eps)
  for n in noise.values():
    assert (jnp.abs(n) <= eps).all()
    assert len(np.unique(np.asarray(n))) == n.size  # every entry drawn independently
  assert not np.allclose(noise["normal"], noise["reduce"])
  big = perturb.uniform_noise(KEY, {"x": jnp.zeros((200000,))}, eps)["x"]
  assert abs(float(big.mean())) < 0.01 and abs(float(big.var()) - eps**2 / 3) < 1e-3


def test_random_start_matches_the_official_rule_in_distribution():
  """The official Random_alpha, written in numpy with numpy's draws: A + U(-eps, eps) per
  entry, clamp to [0, 1], divide each row by its sum. Some entries of A are below eps, so
  the clamp is exercised. Per-entry means and standard deviations over 4,000 draws agree
  within about 4 standard errors."""
  A = np.asarray(jax.nn.softmax(2 * jax.random.normal(KEY, (14, 7))), np.float64)
  assert (A < 0.1).any()
  eps, n, rng = 0.1, 4000, np.random.default_rng(0)
  noisy = np.clip(A + rng.uniform(-eps, eps, (n,) + A.shape), 0, 1)
  want = noisy / noisy.sum(-1, keepdims=True)
  got = np.asarray(jax.vmap(lambda k: perturb.random_start(k, {"n": A}, eps)["n"])(
      jax.random.split(KEY, n)))
  _rows_on_simplex(got.reshape(-1, 7))
  np.testing.assert_allclose(got.mean(0), want.mean(0), atol=6e-3)
  np.testing.assert_allclose(got.std(0), want.std(0), rtol=0.1, atol=1e-3)
  assert (got.min(0) >= 0).all() and np.allclose(got.min(0) == 0, want.min(0) == 0)


def test_pgd_update_hand_case():
  A = jnp.array([[0.5, 0.3, 0.2]])
  A_adv = jnp.array([[0.45, 0.35, 0.2]])
  grad = jnp.array([[-1.0, 2.0, 0.0]])
  eps, step = 0.1, 0.08
  # A_adv + step * sign(grad) = [0.37, 0.43, 0.2]; minus A = [-0.13, 0.13, 0.0]
  # clamp to the box: [-0.1, 0.1, 0] -> [0.4, 0.4, 0.2], already on the simplex.
  # No cancellation in the result (entries 0.2-0.4 from float32 inputs 0.1-0.5): at most 5
  # roundings of each entry (3e-7) on any CPU; observed 1.5e-8.
  np.testing.assert_allclose(perturb.pgd_update(A_adv, grad, A, eps, step), [[0.4, 0.4, 0.2]],
                             rtol=1e-6)


def test_accept_keeps_clean_when_attack_failed():
  A, A_adv = {"n": jnp.ones((2, 2)) / 2}, {"n": jnp.eye(2)}
  np.testing.assert_array_equal(perturb.accept(A_adv, A, 1.0, 2.0)["n"], A["n"])
  np.testing.assert_array_equal(perturb.accept(A_adv, A, 2.0, 1.0)["n"], A_adv["n"])
  np.testing.assert_array_equal(perturb.accept(A_adv, A, 1.0, 1.0)["n"], A_adv["n"])
