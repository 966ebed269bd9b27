"""Evaluation networks, model report, training loop and inputs (docs/method.md, section 7)."""
import colorsys
import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import check_exact_resume, final_state, override, shared_data
from test_losses import smoothed_ce
from sdarts_jax.data import pipeline
from sdarts_jax.defaults import from_file
from sdarts_jax.evaluation import defaults, input_pipeline, network, report, train
from sdarts_jax.model import ops
from sdarts_jax.run import metrics, parallel
from sdarts_jax.search import genotype

ROOT = pathlib.Path(__file__).resolve().parents[1]
JPEG = shared_data("cifar10-jpeg")
ALL_SKIP = {"normal": [["skip_connect", 0], ["skip_connect", 1]] * 4,
            "normal_concat": [2, 3, 4, 5], "reduce": [["skip_connect", 0]] * 8,
            "reduce_concat": [2, 3, 4, 5]}


def tiny_config(**overrides):
  """darts_v2 at 3 cells (the second and third reduce), C=4, synthetic 32x32 images,
  batch 16 (4 steps per epoch), 2 epochs."""
  c = defaults.cifar_config("cifar10")
  c.arch = "darts_v2"
  c.epochs = 2
  c.model.layers = 3
  c.model.channels = 4
  c.data.name = "synthetic"
  c.data.synthetic_examples = 64
  c.data.batch_size = 16
  c.drop_path = 0.5
  c.log_every_steps = 1
  c.compilation_cache = ""
  return override(c, overrides)


@functools.lru_cache(maxsize=None)
def tiny_model(stem="cifar", size=32):
  """(model, variables) of darts_v2 at 3 cells, C=8 for the ImageNet stem else 4."""
  g = genotype.resolve("darts_v2")
  model = network.build(g, 10, 8 if stem == "imagenet" else 4, 3, stem, True, "fused")
  variables = jax.jit(lambda: network.init(model, jax.random.PRNGKey(0), (size, size, 3)))()
  return model, variables


@functools.lru_cache(maxsize=None)
def forward(stem="cifar", size=32):
  model, _ = tiny_model(stem, size)
  return jax.jit(lambda v, x, train, drop, key: model.apply(
      v, x, train, drop, mutable=["batch_stats"], rngs=network.rngs(key)),
      static_argnums=2)


# ---------------------------------------------------------------- the network

@pytest.mark.parametrize("stem,size", [("cifar", 32), ("imagenet", 224)])
def test_output_shapes_and_aux_head_only_in_training(stem, size):
  model, variables = tiny_model(stem, size)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, size, size, 3))
  (logits, aux), _ = forward(stem, size)(variables, x, True, 0.0, jax.random.PRNGKey(2))
  assert logits.shape == aux.shape == (2, 10)
  (logits, aux), _ = forward(stem, size)(variables, x, False, 0.0, jax.random.PRNGKey(2))
  assert logits.shape == (2, 10) and aux is None
  assert np.all(np.isfinite(logits))
  assert "aux_head" in variables["params"]
  cells = sorted(k for k in variables["params"] if k.startswith("cell_"))
  assert cells == ["cell_0", "cell_1", "cell_2"]


def test_aux_head_too_small_input_is_a_clear_error():
  model, _ = tiny_model()
  with pytest.raises(ValueError, match="auxiliary head needs a 2x2 map"):
    jax.eval_shape(lambda: network.init(model, jax.random.PRNGKey(0), (16, 16, 3)))


def test_drop_path_statistics():
  x = jnp.ones((20000, 2, 2, 3))
  y = np.asarray(network.drop_path(jax.random.PRNGKey(0), x, 0.3))
  per_example = y.reshape(len(y), -1)
  assert np.all(per_example == per_example[:, :1])  # one draw per example
  dropped = per_example[:, 0] == 0
  assert abs(dropped.mean() - 0.3) < 0.015
  np.testing.assert_allclose(per_example[~dropped, 0], 1 / 0.7, rtol=1e-6)  # 1-2 roundings
  assert abs(y.mean() - 1.0) < 0.03  # unbiased
  np.testing.assert_array_equal(network.drop_path(jax.random.PRNGKey(0), x, 0.0), x)


@pytest.mark.parametrize("stride", [1, 2])
def test_noise_op_is_standard_normal_and_ignores_its_input(stride):
  """The reference's NoiseOp(stride, 0, 1): fresh N(0, 1) noise of the (strided) input's
  shape, in training and inference alike."""
  op = ops.EdgeOp("noise", 2, stride, "fused", affine=True, pool_bn=False)
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 16, 16, 8))
  run_op = lambda x, train, key: op.apply({}, x, train, rngs={"noise": key})
  y = np.asarray(run_op(x, True, jax.random.PRNGKey(1)))
  assert y.shape == (64, 16 // stride, 16 // stride, 2, 8)
  assert abs(y.mean()) < 4 / np.sqrt(y.size) and abs(y.std() - 1) < 0.01
  assert abs(np.corrcoef(y[..., 0, :].ravel(), y[..., 1, :].ravel())[0, 1]) < 0.02
  np.testing.assert_array_equal(run_op(5 * x + 1, False, jax.random.PRNGKey(1)), y)
  assert not np.allclose(run_op(x, True, jax.random.PRNGKey(2)), y)


@functools.lru_cache(maxsize=None)
def cell_outputs(edges_op, reduction):
  """A cell whose 8 edges all carry `edges_op` (node inputs as in ALL_SKIP), applied in
  training at drop probability 0 and 0.9: (out_0, out_09)."""
  g = dict(ALL_SKIP, normal=[[edges_op, src] for _, src in ALL_SKIP["normal"]])
  spec = network.cell_specs(g)["normal"]
  cell = network.Cell(spec, 4, reduction, False, "fused")
  s = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 4))
  v = cell.init({"params": jax.random.PRNGKey(1), "drop_path": jax.random.PRNGKey(2)},
                s, s, True, 0.0)
  run_cell = jax.jit(lambda p, key: cell.apply(v, s, s, True, p, mutable=["batch_stats"],
                                                rngs={"drop_path": key})[0])
  return run_cell(0.0, jax.random.PRNGKey(3)), run_cell(0.9, jax.random.PRNGKey(4))


def test_drop_path_exempts_identity_edges_only():
  clean, dropped = cell_outputs("skip_connect", False)  # identities: never dropped
  np.testing.assert_array_equal(clean, dropped)
  clean, dropped = cell_outputs("max_pool_3x3", False)  # pooling: dropped
  assert not np.allclose(clean, dropped)
  clean, dropped = cell_outputs("skip_connect", True)  # FactorizedReduce edges: dropped
  assert not np.allclose(clean, dropped)


@pytest.mark.parametrize("arch,params", [("darts_v2", 3_349_342), ("c10_s5_pgd", 3_344_806),
                                         ("c10_s5_random", 3_606_166)])
def test_parameter_counts_of_published_genotypes(arch, params):
  # darts_v2 = the DARTS code's "param size = 3.349342MB" (20 cells, C=36, no aux head).
  r = report.model_report(genotype.resolve(arch), "cifar")
  assert r["params"] == params
  assert r["params_with_aux"] > params


def test_multiply_adds():
  r = report.model_report(genotype.resolve("darts_v2"), "cifar")
  assert r["macs"] == 528_359_040
  r = report.model_report(genotype.resolve("darts_v2"), "imagenet")
  assert r["params"] == 4_718_752 and r["macs"] == 529_911_552 < report.MOBILE_MACS


def test_count_macs_against_hand_counts():
  x = jnp.zeros((1, 8, 8, 2))
  dense = jnp.zeros((3, 3, 2, 4))
  assert report.count_macs(lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), x, dense) == (
          8 * 8 * 4 * 9 * 2)
  depthwise = jnp.zeros((3, 3, 1, 2))
  assert report.count_macs(lambda x, k: jax.lax.conv_general_dilated(
      x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=2), x, depthwise) == 4 * 4 * 2 * 9
  w = jnp.zeros((5, 5))
  scanned = lambda v, w: jax.lax.scan(lambda c, _: (c @ w, None), v, None, length=3)[0]
  assert report.count_macs(scanned, jnp.zeros((2, 5)), w) == 3 * 2 * 5 * 5


def test_report_cli(tmp_path):
  path = tmp_path / "geno.json"
  genotype.save(genotype.resolve("c10_s5_pgd"), str(path))
  out = subprocess.run([sys.executable, "-m", "sdarts_jax.evaluation.report", f"--arch={path}",
                        "--setting=cifar"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert "3,344,806" in out.stdout
  out = subprocess.run([sys.executable, "-m", "sdarts_jax.evaluation.report", "--arch=nope"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and "error: unknown genotype 'nope'" in out.stderr


# ---------------------------------------------------------------- schedules and augmentation

def test_training_loss_is_smoothed_main_plus_weighted_aux_at_the_epochs_drop_prob():
  """The step's loss at a step of epoch 1 of 2 equals, recomputed from model.apply with
  the drop probability drop_path * 1 / 2: CE_s(logits) + 0.4 CE_s(aux), label smoothing
  0.1 on both (the reference's train_imagenet.py)."""
  config = tiny_config(**{"loss.label_smoothing": 0.1, "drop_path": 0.5})
  assert config.loss.aux_weight == 0.4
  spe = 4
  source = pipeline.load(config.data, "train")
  model = train.build_model(config, source.num_classes)
  preprocess = lambda key, images, training: pipeline.preprocess(
      key, images, source.mean, source.std, False)
  state = jax.jit(lambda: train.init_state(model, config, source.images.shape[1:], spe))()
  state["step"] = jnp.asarray(spe, jnp.int32)  # the first step of epoch 1
  batch = {"image": source.images[:16], "label": source.labels[:16]}
  _, m = jax.jit(train.make_train_step(model, config, spe, preprocess))(state, batch)
  assert float(m["drop_prob"]) == pytest.approx(0.25)
  k_aug, k_drop = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config.seed), spe))
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  forward = jax.jit(lambda drop: model.apply(variables, preprocess(k_aug, batch["image"], True),
                                             True, drop, mutable=["batch_stats"],
                                             rngs=network.rngs(k_drop))[0])
  y = batch["label"]
  losses = {}
  for drop in (0.0, 0.25):
    logits, aux = forward(drop)
    losses[drop] = smoothed_ce(logits, y, 0.1) + 0.4 * smoothed_ce(aux, y, 0.1)
  # Means of positive cross-entropies (4.7 here), each moved by at most 2 max |d logit|:
  # well conditioned, so rtol bounds the two programs' logits differing by roundings
  # (observed 6.7e-8; 1e-5 allows the logits to differ by 2e-5).
  np.testing.assert_allclose(m["train_loss"], losses[0.25], rtol=1e-5)
  assert abs(losses[0.25] - losses[0.0]) > 1e-3


def test_cutout_zeroes_one_clipped_square():
  x = jnp.ones((64, 32, 32, 3))
  y = np.asarray(pipeline.cutout_square(jax.random.PRNGKey(0), x, 16))
  for image in y[..., 0]:
    rows, cols = np.nonzero(image == 0)
    assert 0 < len(rows) <= 256
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert len(rows) == h * w and h <= 16 and w <= 16  # a (clipped) rectangle
  assert (y == 0).mean() < 256 / 1024
  plain = pipeline.preprocess(jax.random.PRNGKey(0), jnp.full((2, 32, 32, 3), 9, jnp.uint8),
                              (0.5,) * 3, (0.25,) * 3, True)
  assert not np.any(np.asarray(plain) == 0)  # cutout off by default


def test_hsv_round_trip_and_colorsys():
  # Compiled once each (op by op, the many small ops took ~10 s to dispatch and compile).
  to_hsv, to_rgb = jax.jit(input_pipeline.rgb_to_hsv), jax.jit(input_pipeline.hsv_to_rgb)
  jitter = jax.jit(input_pipeline.color_jitter)
  x = jax.random.uniform(jax.random.PRNGKey(0), (200, 3))
  h, s, v = to_hsv(x)
  expected = np.array([colorsys.rgb_to_hsv(*p) for p in np.asarray(x)])
  # From exact float32 inputs, differences such as g - b and max - min carry one rounding
  # of their own size, so h, s, v (in [0, 1]) carry a few roundings, and the way back to
  # RGB multiplies h's by at most 6: at most about 1e-6 (observed 6e-8 for HSV, 6e-7 for
  # the round trips); atol 1e-5. (Here no hue is within 9e-3 of its wrap at 0 = 1.)
  np.testing.assert_allclose(np.stack([h, s, v], -1), expected, atol=1e-5)
  np.testing.assert_allclose(to_rgb(h, s, v), x, atol=1e-5)
  images = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 3))
  same = jitter(jax.random.PRNGKey(2), images, 0.0, 0.0, 0.0, 0.0)
  np.testing.assert_allclose(same, images, atol=1e-5)
  jittered = jitter(jax.random.PRNGKey(2), images, 0.4, 0.4, 0.4, 0.2)
  assert jittered.shape == images.shape and 0 <= float(jittered.min()) <= float(
      jittered.max()) <= 1 and not np.allclose(jittered, images)


# ---------------------------------------------------------------- training

@pytest.mark.slow  # CI budget: the training step's exact checks (resume, loss) stay in make test
@pytest.mark.skipif(JPEG is None, reason="the shared CIFAR-10 JPEG folder is not here")
def test_real_training_steps_lower_the_loss():
  config = tiny_config(**{"data.folder": str(JPEG), "data.max_examples": 64,
                          "data.batch_size": 64, "data.augment": False, "drop_path": 0.0,
                          "optim.lr": 0.1, "epochs": 100})
  source = pipeline.load(config.data, "train")
  model = train.build_model(config, source.num_classes)
  preprocess = lambda key, images, training: pipeline.preprocess(
      key, images, source.mean, source.std, False)
  state = jax.jit(lambda: train.init_state(model, config, source.images.shape[1:], 10))()
  step = jax.jit(train.make_train_step(model, config, 10, preprocess))
  batch = {"image": source.images, "label": source.labels}
  losses = []
  for _ in range(8):
    state, m = step(state, batch)
    losses.append(float(m["train_loss"]))
  assert losses[-1] < 0.8 * losses[0], losses


def test_training_writes_outputs_and_resumes_exactly(tmp_path, monkeypatch):
  # c10_s4_pcdarts has a `noise` edge: its draws are functions of (seed, step) too.
  config = tiny_config(arch="c10_s4_pcdarts")
  full = str(tmp_path / "full")
  record = train.train_and_evaluate(config, full)
  assert record["epoch"] == 2 and 0 <= record["test_accuracy"] <= 1
  assert record["params"] == network.count_params(final_state(full)[1]["params"])
  lines = [json.loads(l) for l in open(os.path.join(full, "metrics.jsonl"))]
  epochs = [l for l in lines if l["kind"] == "epoch"]
  assert [e["epoch"] for e in epochs] == [1, 2]
  assert epochs[0]["drop_prob"] == 0 and epochs[1]["drop_prob"] == pytest.approx(0.25)
  assert {"test_loss", "test_top5_accuracy", "lr"} <= set(epochs[1])

  # SIGTERM after step 3 (mid-epoch), then resumed: the same final state, bit for bit, and
  # the same epoch means (the resumed epoch's cover all of its steps).
  resumed = str(tmp_path / "resumed")
  check_exact_resume(train.train_and_evaluate, config, full, resumed, monkeypatch, steps=8)
  means = lambda workdir: {r["epoch"]: {k: v for k, v in r.items() if k != "seconds"}
                           for r in metrics.read_records(workdir, "epoch")}
  assert means(resumed) == means(full)
  with pytest.raises(ValueError, match="different configuration"):
    train.train_and_evaluate(tiny_config(arch="c10_s4_pcdarts", seed=3), resumed)


@pytest.mark.parametrize("overrides,message", [
    ({"arch": "nope"}, "unknown genotype 'nope'"),
    ({"model.stem": "vit"}, "config.model.stem"),
    ({"optim.schedule": "step"}, "config.optim.schedule"),
    ({"drop_path": 1.0}, "config.drop_path"),
    ({"data.batch_size": 6}, "not divisible by the 4 devices"),
    ({"data.synthetic_examples": 8}, "config.data.batch_size"),
])
def test_bad_input_is_one_clear_error(tmp_path, overrides, message):
  if "batch_size" in str(overrides) and jax.device_count() != 4:
    pytest.skip("needs the 4 CPU devices of conftest")
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "w"))


def test_cli_train_mode_reports_errors_in_one_line(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "sdarts_jax.main", "--config=configs/cifar10_eval.py:arch=nope,smoke",
       f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("error: unknown genotype 'nope'")
  assert "Traceback" not in out.stderr


def test_configs_and_arguments():
  for name, stem in (("cifar10", "cifar"), ("cifar100", "cifar"), ("svhn", "cifar"),
                     ("imagenet", "imagenet")):
    c = from_file(f"{name}_eval", "arch=darts_v2,smoke")
    assert c.mode == "train" and c.arch == "darts_v2" and c.model.stem == stem
    assert c.model.layers == 3 and c.epochs == 2
    full = from_file(f"{name}_eval")
    assert full.loss.aux_weight == 0.4
  assert full.model.layers == 14 and full.loss.label_smoothing == 0.1
  with pytest.raises(ValueError, match="unknown config argument"):
    from_file("imagenet_eval", "space=s3")


# ---------------------------------------------------------------- ImageNet streaming

def test_imagenet_streaming_on_mock_data():
  cfg = from_file("imagenet_eval").data
  cfg.image_size, cfg.batch_size, cfg.workers, cfg.threads = 32, 8, 0, 2
  mesh = parallel.make_mesh()
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    inputs = input_pipeline.make_input(cfg, 0, mesh)
    assert isinstance(inputs, input_pipeline.StreamedInput)
    assert inputs.steps_per_epoch == 2 and inputs.num_classes == 1000
    epoch = [jax.device_get(b) for b in inputs.train_epoch(0)]
    assert len(epoch) == 2 and epoch[0]["image"].shape == (8, 32, 32, 3)
    assert epoch[0]["image"].dtype == np.uint8 and epoch[0]["label"].shape == (8,)
    again = [jax.device_get(b) for b in inputs.train_epoch(0, start=1)]
    np.testing.assert_array_equal(again[0]["image"], epoch[1]["image"])  # resume mid-epoch
    other = jax.device_get(next(inputs.train_epoch(1)))
    assert not np.array_equal(other["image"], epoch[0]["image"])  # a new order per epoch
    test = [jax.device_get(b) for b in inputs.eval_batches()]
    assert len(test) == 3 and sum(int(b["valid"].sum()) for b in test) == 20
    x = inputs.preprocess(jax.random.PRNGKey(0), epoch[0]["image"], True)
    assert x.shape == (8, 32, 32, 3) and x.dtype == jnp.float32


def test_imagenet_training_end_to_end_on_mock_data(tmp_path):
  config = from_file("imagenet_eval", "arch=darts_v2,smoke")
  config.model.channels, config.model.auxiliary = 4, False  # the head needs 224 px
  config.data.image_size, config.data.batch_size, config.data.max_examples = 64, 8, 16
  config.compilation_cache = ""
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    record = train.train_and_evaluate(config, str(tmp_path))
  assert record["epoch"] == 2 and np.isfinite(record["train_loss"])
  assert 0 <= record["test_accuracy"] <= record["test_top5_accuracy"] <= 1


def test_missing_imagenet_says_how_to_prepare(tmp_path):
  cfg = from_file("imagenet_eval").data
  cfg.tfds_data_dir = str(tmp_path)
  with pytest.raises(pipeline.DataError, match="downloaded by hand"):
    input_pipeline.make_input(cfg, 0, parallel.make_mesh())


def test_random_resized_crop_and_center_crop_shapes():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 90, 3), np.uint8)
  for _ in range(20):
    assert input_pipeline.random_resized_crop(rng, image, 24, 0.08).shape == (24, 24, 3)
  crop = input_pipeline.resize_center_crop(image, 24, 28)
  assert crop.shape == (24, 24, 3) and crop.dtype == np.uint8
