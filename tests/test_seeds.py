"""Several seeds as one program (`sdarts_jax.search.seeds`): against one-seed runs, resume,
data order and noise per seed, a seed that diverges."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import check_exact_resume, final_state, tiny_config, tiny_search
from sdarts_jax.run import lifecycle, metrics
from sdarts_jax.search import run_search, seeds


def epoch_records(folder):
  return [{k: v for k, v in r.items() if k != "seconds"}
          for r in metrics.read_records(folder, "epoch")]


def test_two_seeds_in_one_program_equal_two_one_seed_runs_and_resume_exactly(
    tmp_path, monkeypatch):
  """The run of seeds (2, 5) ends, seed by seed, where the one-seed runs with config.seed 2
  and 5 end: the same state and the same epoch records (metrics, genotypes, A). Stopped
  mid-epoch and resumed, it ends bit-identical, with the same records."""
  config = tiny_config("adv", seeds=(2, 5))  # 2 epochs of 4 steps
  records = seeds.train_and_evaluate(config, str(tmp_path / "both"))
  resumed = str(tmp_path / "resumed")  # the same programs: no compilation of its own
  check_exact_resume(seeds.train_and_evaluate, config, str(tmp_path / "both"), resumed,
                     monkeypatch, steps=8)
  for s in seeds.seed_list(config):
    assert epoch_records(seeds.seed_dir(resumed, s)) == epoch_records(
        seeds.seed_dir(str(tmp_path / "both"), s))
  assert [r["epoch"] for r in records] == [2, 2]
  _, both = final_state(str(tmp_path / "both"))
  assert both["alive"].tolist() == [True, True] and int(both["step"]) == 8
  for i, seed in enumerate((2, 5)):
    one = str(tmp_path / f"one_{seed}")
    run_search.train_and_evaluate(tiny_config("adv", seed=seed), one)
    _, want = final_state(one)
    got = jax.tree.map(lambda x: x[i], both["seeds"])
    assert int(got.pop("seed")) == seed
    # lax.map runs the one-seed step's program as the body of a loop: the same operations
    # on the same numbers; XLA may fuse them differently inside the loop (float32
    # roundings, amplified by 8 steps of SGD and Adam), so normwise, not bit for bit.
    for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                          jax.tree.leaves(want), strict=True):
      g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
      scale = max(np.max(np.abs(w), initial=0.0), 1e-30)
      assert np.max(np.abs(g - w), initial=0.0) <= 1e-5 * scale, jax.tree_util.keystr(path)
    mine, theirs = epoch_records(seeds.seed_dir(str(tmp_path / "both"), seed)), epoch_records(one)
    assert [r["genotype"] for r in mine] == [r["genotype"] for r in theirs]
    for a, b in zip(mine, theirs):
      for k in ("train_loss", "val_loss", "eval_loss", "eval_accuracy"):
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
    with open(os.path.join(seeds.seed_dir(str(tmp_path / "both"), seed), "genotype.json")) as f:
      assert json.load(f) == theirs[-1]["genotype"]


@pytest.fixture(scope="module")
def rs_step():
  """(config, the one-seed state, batches, the RS step of seeds compiled for "map" and for
  "vmap")."""
  config, model, state, batches, preprocess = tiny_search("rs")
  one = run_search.make_train_step(model, config, 4, batches.source)
  return config, state, batches, {axis: jax.jit(seeds.make_step(one, axis))
                                  for axis in ("map", "vmap")}


def stacked(state, seeds_, alive=None):
  """Two copies of one seed's state, given the seeds `seeds_`."""
  two = jax.tree.map(lambda x: jnp.stack([x, x]), state)
  return {"seeds": dict(two, seed=jnp.asarray(seeds_, jnp.int32)),
          "alive": jnp.asarray(alive if alive is not None else [True, True]),
          "step": jnp.zeros((), jnp.int32)}


def test_seeds_see_their_own_data_order_and_noise(rs_step):
  config, state, batches, steps = rs_step
  per_seed = seeds.Batches(batches.source, config, [2, 5])
  b = per_seed.batch(0, 0)
  assert b["train_label"].shape == (2, config.data.batch_size)
  for k in b:  # seed 2's rows are the one-seed run's
    np.testing.assert_array_equal(b[k][0], batches.batch(0, 0)[k])
  assert not np.array_equal(b["train_image"][0], b["train_image"][1])
  # The same state and batch for both: only the seed can tell them apart (RS's noise, the
  # augmentation); with the same seed the two come out identical.
  same = {k: np.stack([v[0], v[0]]) for k, v in b.items()}
  for axis, step in steps.items():
    new, _ = step(stacked(state, [2, 5]), same)
    assert not np.allclose(new["seeds"]["params"]["stem_kernel"][0],
                           new["seeds"]["params"]["stem_kernel"][1]), axis
    twin, _ = step(stacked(state, [2, 2]), same)
    for x in jax.tree.leaves(twin["seeds"]):
      np.testing.assert_array_equal(x[0], x[1])


# A step batched over seeds (vmap) against the one-seed step: XLA orders the convolutions'
# sums differently, a float32 rounding (~1e-7) of each sum's absolute terms. After one step
# an array is a learning rate times such sums; a BatchNorm bias's gradient sums N*H*W terms
# that cancel to about a hundredth of their absolute sum (observed: 1.2e-5 of the array's
# scale, a 1Shot1 BN bias), hence 1e-4 of each array's largest entry.
VMAP_TOL = 1e-4


def test_map_and_vmap_agree(rs_step):
  config, state, batches, steps = rs_step
  b = seeds.Batches(batches.source, config, [2, 5]).batch(0, 1)
  (a, ma), (v, mv) = (steps[axis](stacked(state, [2, 5]), b) for axis in ("map", "vmap"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(v)):
    if np.issubdtype(np.asarray(x).dtype, np.floating):
      x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
      assert np.max(np.abs(x - y)) <= VMAP_TOL * max(np.max(np.abs(y)), 1e-30)
    else:
      np.testing.assert_array_equal(x, y)
  np.testing.assert_allclose(ma["train_loss"], mv["train_loss"], rtol=1e-6)  # a mean of logs


def test_a_diverged_seed_is_frozen_and_the_others_go_on(rs_step):
  config, state, batches, steps = rs_step
  b = seeds.Batches(batches.source, config, [2, 5]).batch(0, 0)
  clean = stacked(state, [2, 5])
  poisoned = jax.tree.map(lambda x: x, clean)
  poisoned["seeds"]["alpha"] = jax.tree.map(lambda a: a.at[1].set(jnp.nan),
                                            clean["seeds"]["alpha"])
  want, _ = steps["map"](clean, b)
  got, m = steps["map"](poisoned, b)
  assert got["alive"].tolist() == [True, False] and int(got["step"]) == 1
  assert np.isfinite(m["train_loss"][0]) and np.isnan(m["train_loss"][1])
  for g, w, p in zip(jax.tree.leaves(got["seeds"]), jax.tree.leaves(want["seeds"]),
                     jax.tree.leaves(poisoned["seeds"])):
    np.testing.assert_array_equal(g[0], w[0])  # seed 2 as without seed 5's trouble
    np.testing.assert_array_equal(g[1], p[1])  # seed 5 frozen
  # Once frozen, always frozen, even on a step that would have gone well.
  again, m = steps["map"](dict(clean, alive=jnp.asarray([True, False])), b)
  assert again["alive"].tolist() == [True, False] and np.isnan(m["train_loss"][1])
  for g, c in zip(jax.tree.leaves(again["seeds"]), jax.tree.leaves(clean["seeds"])):
    np.testing.assert_array_equal(g[1], c[1])


def test_a_run_goes_on_without_its_diverged_seed(tmp_path, monkeypatch, capsys):
  init = seeds.init_states

  def poisoned(*args):
    state = init(*args)
    state["seeds"]["alpha"] = jax.tree.map(lambda a: a.at[1].set(jnp.nan),
                                           state["seeds"]["alpha"])
    return state

  monkeypatch.setattr(seeds, "init_states", poisoned)
  config = tiny_config("darts", seeds=(2, 5), epochs=1)
  records = seeds.train_and_evaluate(config, str(tmp_path))
  assert records[0]["epoch"] == 1 and records[1] == {}
  assert "seed 5: non-finite metrics at step 1" in capsys.readouterr().err
  assert epoch_records(seeds.seed_dir(str(tmp_path), 2))
  assert not metrics.read_records(seeds.seed_dir(str(tmp_path), 5))


def test_every_seed_diverged_stops_the_run(tmp_path, monkeypatch):
  init = seeds.init_states
  monkeypatch.setattr(seeds, "init_states", lambda *a: dict(
      init(*a), seeds=dict(init(*a)["seeds"], alpha=jax.tree.map(
          lambda x: x * jnp.nan, init(*a)["seeds"]["alpha"]))))
  with pytest.raises(lifecycle.RunError, match="every seed's metrics are non-finite"):
    seeds.train_and_evaluate(tiny_config("darts", seeds=(2, 5), epochs=1), str(tmp_path))


@pytest.mark.parametrize("value, error", [
    (0, "count >= 1"), ((3,), "at least two different seeds"), ((1, 1), "two different"),
    ((1, -2), "integers >= 0"), ("x", "a count or a list")])
def test_bad_seeds_are_refused(value, error):
  with pytest.raises(ValueError, match=error):
    seeds.seed_list(tiny_config("darts", seeds=value))


def test_seed_list():
  assert seeds.seed_list(tiny_config("darts", seed=7, seeds=3)) == [7, 8, 9]
  assert seeds.seed_list(tiny_config("darts", seeds=(0, 5, 9))) == [0, 5, 9]
  assert not seeds.is_multi_seed(tiny_config("darts"))
  with pytest.raises(ValueError, match="early_stop"):
    seeds.check_config(tiny_config("darts", seeds=2, **{"hessian.early_stop": True}))
  with pytest.raises(ValueError, match="several seeds run as one program"):
    run_search.train_and_evaluate(tiny_config("darts", seeds=2), "unused")


@pytest.mark.parametrize("config_file, arg, axis, overrides", [
    ("nb201_search", "method=adv", "map", {"model.cells_per_stage": 1, "perturb.steps": 2}),
    ("1shot1_search", "method=rs,space=ss1", "vmap", {"model.layers": 1}),
])
def test_the_other_spaces_step_each_seed_as_its_own_step(config_file, arg, axis, overrides):
  """NAS-Bench-201 (ADV, mapped) and 1Shot1 (RS, vmapped): each seed of one step of two
  seeds is that seed's one-seed step. (ADV is not vmapped here: batched convolutions round
  differently, and PGD's sign steps can turn a rounding into a whole step; the vmapped
  steps are compared on RS, whose perturbation is continuous.)"""
  from conftest import override
  from sdarts_jax import defaults
  from sdarts_jax.data import pipeline
  config = override(defaults.from_file(config_file, arg), {
      "model.channels": 4, "data.name": "synthetic", "data.image_size": 8,
      "data.synthetic_examples": 32, "data.batch_size": 8, **overrides})
  source = pipeline.load(config.data, "train")
  model = run_search.build_model(config, source.num_classes)
  one = run_search.make_train_step(model, config, 2, source)
  shape = source.images.shape[1:]
  state = jax.jit(lambda: seeds.init_states(model, config, shape, 2, [2, 5]))()
  batch = seeds.Batches(source, config, [2, 5]).batch(0, 0)
  both, m = jax.jit(seeds.make_step(one, axis))(state, batch)
  assert both["alive"].tolist() == [True, True]
  one = jax.jit(one)
  for i in range(2):
    mine = jax.tree.map(lambda x: x[i], state["seeds"])
    want, want_m = one(mine, {k: v[i] for k, v in batch.items()})
    # The same step on the same numbers, looped or batched: float32 roundings only, within
    # VMAP_TOL of each array's scale (mapped: observed bit-equal).
    got = jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda x: x[i], both["seeds"]))[0]
    for (path, g), w in zip(got, jax.tree.leaves(want), strict=True):
      g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
      assert np.max(np.abs(g - w), initial=0.0) <= VMAP_TOL * max(np.max(np.abs(w)), 1e-30), (
          jax.tree_util.keystr(path))
    assert m["train_loss"][i] == pytest.approx(float(want_m["train_loss"]), rel=1e-5)


def test_the_aggregation_gives_mean_and_std_over_seeds(tmp_path):
  """`analysis.seeds.report` on a two-seed workdir and a one-seed workdir of the same method
  (pooled): the per-epoch mean and sample std of hand-written values, every seed's final
  cell, a figure."""
  from sdarts_jax.analysis import seeds as aggregate
  values = {2: (0.5, 0.1), 3: (0.7, 0.4), 9: (0.9, 0.7)}  # seed: (eval_accuracy, lambda_max)
  cell = {"normal": [["skip_connect", 0]], "reduce": [["sep_conv_3x3", 1]]}
  folders = {}
  for workdir, config_seeds in (("two", 2), ("one", 1)):
    base = {"method": "rs", "space": "s3", "seed": 2 if config_seeds == 2 else 9,
            "seeds": config_seeds}
    os.makedirs(tmp_path / workdir)
    metrics.write_json(str(tmp_path / workdir / "config.json"), base)
    folders.update(aggregate.seed_folders(str(tmp_path / workdir)))
  assert sorted(folders) == [2, 3, 9] and folders[9] == str(tmp_path / "one")
  for seed, (accuracy, lam) in values.items():
    os.makedirs(folders[seed], exist_ok=True)
    with open(os.path.join(folders[seed], "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"kind": "epoch", "step": 4, "epoch": 1, "genotype": cell,
                          "eval_accuracy": accuracy}) + "\n")
      f.write(json.dumps({"kind": "hessian", "step": 4, "epoch": 1,
                          "hessian_lambda_max": lam}) + "\n")
  out = str(tmp_path / "fig.png")
  text = aggregate.report([str(tmp_path / "two"), str(tmp_path / "one")], out)
  summary = metrics.read_json(str(tmp_path / "fig.json"))["methods"]["SDARTS-RS (s3)"]["summary"]
  epoch, mean, std, n = summary["lambda_max"][0]
  assert (epoch, n) == (1, 3)
  assert mean == pytest.approx(0.4) and std == pytest.approx(0.3)  # sample std of .1 .4 .7
  assert summary["eval_accuracy"][0][1:3] == pytest.approx([0.7, 0.2])
  assert "| SDARTS-RS (s3) | 9 | 1 | `normal: skip_connect; reduce: sep_conv_3x3` |" in text
  assert os.path.getsize(out) > 0
