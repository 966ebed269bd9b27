"""Analyses: the theory check's estimators on known functions, Hessians over checkpoints."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from sdarts_jax.analysis import figure, hessian_runs, plots, runs, theory
from sdarts_jax.search import hessian

KEY = jax.random.PRNGKey(0)


def test_uniform_gain_is_exact_for_a_quadratic():
  rng = np.random.default_rng(0)
  m = rng.normal(size=(6, 6))
  h = jnp.asarray(m @ m.T)
  g = jnp.asarray(rng.normal(size=6))
  loss = lambda a: g @ a + 0.5 * a @ h @ a
  a = jnp.zeros(6)
  for eps in (0.01, 0.3):
    mean, se = theory.uniform_gain(loss, a, eps, KEY, 4000)
    want = theory.predictions(g, h, eps)["uniform"]
    # Statistical, on fixed draws: float32 roundings of the samples (1e-9) are 1e-5 of se.
    assert abs(float(mean - want)) < 4 * float(se)
    assert float(se) < 0.05 * float(want)


@pytest.mark.parametrize("host", [False, True])
def test_pgd_gain_matches_taylor_for_small_eps_and_not_for_large(host):
  rng = np.random.default_rng(1)
  g = jnp.asarray(rng.normal(size=5))
  h = jnp.asarray(np.diag([1.0, -2.0, 0.5, 3.0, -1.0]))
  loss = lambda a: g @ a + 0.5 * a @ h @ a + jnp.sum(a**4)  # quartic term breaks it
  a = jnp.zeros(5)
  small = theory.pgd_gain(loss, a, 1e-3, 20, host)
  pred = theory.predictions(g, h, 1e-3)
  # Bounds the Taylor model's error (the quartic term, 1e-9 of the gain), not rounding: the
  # gain eps |g|_1 (4e-3) is a float32 sum of same-sign terms, a few roundings (1e-7).
  np.testing.assert_allclose(small, pred["pgd_second"], rtol=1e-3)
  big = theory.pgd_gain(loss, a, 3.0, 40, host)
  assert float(big) > 1.5 * float(theory.predictions(g, h, 3.0)["pgd_second"])


@functools.lru_cache(maxsize=None)
def tiny_run(tmp: str) -> str:
  """A finished tiny DARTS search, run by the figures' runner (figure.run_searches)."""
  config = tiny_config("darts", checkpoints_to_keep=0)
  return figure.run_searches({"darts": config}, tmp, "test")["darts"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return tiny_run(str(tmp_path_factory.mktemp("run")))


def test_hessian_over_checkpoints(workdir, tmp_path):
  assert workdir.endswith(os.sep + "darts")
  run = runs.open_run(workdir)
  assert run.steps() == [4, 8]
  flags = type("F", (), dict(top_k=2, lanczos_iters=10, trace_samples=4, batches=2))
  records = hessian_runs.measure_run(run, hessian.HessianLoss(), flags)
  assert [r["step"] for r in records] == [4, 8] and [r["epoch"] for r in records] == [1, 2]
  assert all(r["lambda_max"] >= r["eigenvalues"][1] for r in records)
  out = str(tmp_path / "lambda.png")
  plots.trajectories({"tiny": [(r["epoch"], r["lambda_max"]) for r in records]}, out)
  assert os.path.getsize(out) > 1000
  state = run.state(8)
  plots.alpha_heatmaps(runs.mixing_weights(state), run.model.space, "t", str(tmp_path / "a.png"))
  assert os.path.getsize(tmp_path / "a.png") > 1000


def test_runner_reuses_a_finished_run(workdir):
  """Rerunning the figures' runner on a finished search redoes nothing."""
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    before = f.read()
  config = tiny_config("darts", checkpoints_to_keep=0)
  assert figure.run_searches({"darts": config}, os.path.dirname(workdir), "test") == {
      "darts": workdir}
  with open(path) as f:
    assert f.read() == before
  assert runs.open_run(workdir).steps() == [4, 8]


def test_open_run_errors(tmp_path):
  with pytest.raises(ValueError, match="not a search workdir"):
    runs.open_run(str(tmp_path))


@pytest.mark.parametrize("name", ["nb201", "1shot1_ss3", "s1"])
def test_alpha_heatmaps_of_every_space(tmp_path, name, monkeypatch):
  """One heat map per array of A, labelled by the space (NAS-Bench-201's single cell and
  1Shot1's differently shaped arrays used to fail: the plot assumed normal + reduce)."""
  from sdarts_jax.model import spaces
  space = spaces.get_space(name)
  shapes = space.alpha_shapes()
  rng = np.random.default_rng(0)
  A = {k: rng.dirichlet(np.ones(s[1]), s[0]) for k, s in shapes.items()}
  titles, labels = [], []
  real = plots.plt.subplots

  def subplots(*args, **kwargs):  # record what each panel shows
    fig, axes = real(*args, **kwargs)
    for ax in axes.ravel():
      monkeypatch.setattr(ax, "set_title", lambda t, ax=ax: titles.append(t))
      monkeypatch.setattr(ax, "set_yticklabels", lambda l, ax=ax, **kw: labels.append(list(l)))
    return fig, axes

  monkeypatch.setattr(plots.plt, "subplots", subplots)
  plots.alpha_heatmaps(A, space, name, str(tmp_path / "a.png"))
  assert os.path.getsize(tmp_path / "a.png") > 1000
  assert titles == list(shapes)
  assert [len(l) for l in labels] == [s[0] for s in shapes.values()]
  if name == "nb201":
    assert labels[0] == ["0->1", "0->2", "1->2", "0->3", "1->3", "2->3"]
