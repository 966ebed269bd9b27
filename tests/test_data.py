"""Tests of sdarts_jax.data.pipeline: sources, search batches, augmentation, placement on
devices."""
from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from conftest import assert_close_normwise, shared_data
from sdarts_jax import defaults
from sdarts_jax.data import pipeline


CIFAR_FOLDER = shared_data("cifar10-jpeg")
needs_folder = pytest.mark.skipif(CIFAR_FOLDER is None,
                                  reason="the shared cifar10-jpeg folder is not here")


def config(**overrides):
  cfg = defaults.data_config()
  cfg.update(overrides)
  return cfg


def array_source(n: int, size: int = 4) -> pipeline.Source:
  """n images whose pixels and label both equal the example's index (mod 256)."""
  images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None],
                           (n, size, size, 3)).copy()
  return pipeline.Source("arrays", images, np.arange(n, dtype=np.int32), n, (0.5,) * 3, (0.25,) * 3)


# ---------------------------------------------------------------- image folder

@pytest.fixture(scope="module")
def folder_train():
  return pipeline.load(config(folder=str(CIFAR_FOLDER)), "train")


@needs_folder
def test_folder_train_split(folder_train):
  src = folder_train
  assert src.images.shape == (10000, 32, 32, 3) and src.images.dtype == np.uint8
  assert src.labels.shape == (10000,) and src.labels.dtype == np.int32
  assert src.num_classes == 10
  assert np.bincount(src.labels).tolist() == [1000] * 10
  # Interleaved over classes, so every prefix (max_examples) holds every class.
  np.testing.assert_array_equal(src.labels[:20], np.arange(20) % 10)
  # Label k is the k-th class name in sorted order; example k is that class's first file.
  classes = sorted(p.name for p in (CIFAR_FOLDER / "train").iterdir())
  assert classes[0] == "airplane" and classes[-1] == "truck"
  for k in (0, 3, 9):
    first = sorted((CIFAR_FOLDER / "train" / classes[k]).iterdir())[0]
    np.testing.assert_array_equal(src.images[k], np.asarray(PIL.Image.open(first).convert("RGB")))
  pixels = src.images.reshape(-1, 3) / 255.0
  np.testing.assert_allclose(src.mean, pixels.mean(0), rtol=1e-9)
  np.testing.assert_allclose(src.std, pixels.std(0), rtol=1e-9)
  assert 0.4 < src.mean[0] < 0.6 and 0.2 < src.std[0] < 0.3  # real CIFAR-10 statistics


@needs_folder
def test_folder_max_examples_and_test_split(folder_train):
  small = pipeline.load(config(folder=str(CIFAR_FOLDER), max_examples=25), "train")
  np.testing.assert_array_equal(small.images, folder_train.images[:25])
  np.testing.assert_array_equal(small.labels, np.arange(25) % 10)
  test = pipeline.load(config(folder=str(CIFAR_FOLDER)), "test")
  assert test.images.shape == (2000, 32, 32, 3)
  assert np.bincount(test.labels).tolist() == [200] * 10
  assert (test.mean, test.std) == (folder_train.mean, folder_train.std)  # train's statistics


def _write_image(path: pathlib.Path, size=(8, 8)):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.new("RGB", size, (10, 20, 30)).save(path)


def _no_train(root):
  (root / "test/cat").mkdir(parents=True)


def _no_classes(root):
  (root / "train").mkdir(parents=True)
  _write_image(root / "train/loose.png")


def _empty_class(root):
  _write_image(root / "train/cat/0.png")
  (root / "train/dog").mkdir()


def _unreadable(root):
  _write_image(root / "train/cat/0.png")
  (root / "train/dog").mkdir()
  (root / "train/dog/0.jpg").write_bytes(b"not a jpeg")


def _mixed_sizes(root):
  _write_image(root / "train/cat/0.png")
  _write_image(root / "train/dog/0.png", size=(9, 8))


@pytest.mark.parametrize("make, expected", [
    (None, "not a directory"),
    (_no_train, "no class directories"),
    (_no_classes, "no class directories"),
    (_empty_class, "dog"),
    (_unreadable, "0.jpg"),
    (_mixed_sizes, "different sizes"),
])
def test_bad_folder(tmp_path, make, expected):
  root = tmp_path / "images"
  if make:
    make(root)
  with pytest.raises(pipeline.DataError, match="config.data.folder") as error:
    pipeline.load(config(folder=str(root)), "train")
  assert expected in str(error.value)


def test_folder_test_split_with_unknown_class(tmp_path):
  _write_image(tmp_path / "train/cat/0.png")
  _write_image(tmp_path / "test/cat/0.png")
  _write_image(tmp_path / "test/cow/0.png")
  assert pipeline.load(config(folder=str(tmp_path)), "train").num_classes == 1
  with pytest.raises(pipeline.DataError, match="cow"):
    pipeline.load(config(folder=str(tmp_path)), "test")


def test_unknown_name_and_bad_max_examples():
  with pytest.raises(pipeline.DataError, match="config.data.name") as error:
    pipeline.load(config(name="imagenet"), "train")
  assert "cifar10" in str(error.value) and "config.data.folder" in str(error.value)
  with pytest.raises(pipeline.DataError, match="config.data.max_examples"):
    pipeline.load(config(name="synthetic", max_examples=-1), "train")


# ---------------------------------------------------------------- TFDS

@pytest.mark.parametrize("name, num_classes", [
    ("cifar10", 10), ("cifar100", 100), ("svhn_cropped", 10)])
def test_tfds_mock(name, num_classes):
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    src = pipeline.load(config(name=name), "train")
    small = pipeline.load(config(name=name, max_examples=5), "test")
  assert src.images.shape == (12, 32, 32, 3) and src.images.dtype == np.uint8
  assert src.labels.shape == (12,) and src.labels.dtype == np.int32
  assert src.num_classes == num_classes
  assert src.labels.min() >= 0 and src.labels.max() < num_classes
  assert (src.mean, src.std) == pipeline.TFDS_STATS[name]
  assert small.images.shape == (5, 32, 32, 3)


@pytest.fixture(scope="module")
def prepared_cifar10(tmp_path_factory):
  """A real TFDS data dir with cifar10 in array_record format, written without TensorFlow.

  12 train and 4 test examples; channel c of every pixel of an example with label y is
  20 * y + c.
  """
  data_dir = tmp_path_factory.mktemp("tfds")

  def examples(n):
    for i in range(n):
      label = i % 10
      pixel = np.array([20 * label, 20 * label + 1, 20 * label + 2], np.uint8)
      image = PIL.Image.fromarray(np.broadcast_to(pixel, (32, 32, 3)).copy())
      yield i, {"id": f"{i}", "image": image, "label": label}

  with tfds.core.registered.skip_registration():
    class Cifar10(tfds.builder_cls("cifar10")):

      def _split_generators(self, dl_manager):
        return {"train": examples(12), "test": examples(4)}

    Cifar10(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return data_dir


def test_tfds_prepared_array_record(prepared_cifar10):
  src = pipeline.load(config(name="cifar10", tfds_data_dir=str(prepared_cifar10)), "train")
  assert src.images.shape == (12, 32, 32, 3) and src.images.dtype == np.uint8
  assert sorted(src.labels.tolist()) == sorted(i % 10 for i in range(12))
  expected = 20 * src.labels[:, None, None, None] + np.arange(3)
  np.testing.assert_array_equal(src.images, np.broadcast_to(expected, src.images.shape))
  test = pipeline.load(config(name="cifar10", tfds_data_dir=str(prepared_cifar10), max_examples=3),
                       "test")
  assert test.images.shape == (3, 32, 32, 3) and test.num_classes == 10


def test_tfds_missing_dataset(tmp_path):
  start = time.perf_counter()
  with pytest.raises(pipeline.DataError) as error:
    pipeline.load(config(name="cifar10", tfds_data_dir=str(tmp_path)), "train")
  assert time.perf_counter() - start < 5
  message = str(error.value)
  assert "pip install 'sdarts_jax[prepare]' && tfds build cifar10 --file_format=array_record" \
      in message
  assert f"--data_dir={tmp_path}" in message
  assert "config.data.tfds_data_dir" in message and "--config.data.folder" in message
  assert error.value.__suppress_context__  # no chained TFDS traceback


def test_imagenet_missing_is_the_same_error_with_its_own_help(tmp_path):
  # Evaluation training's streamed ImageNet opens TFDS through the same function.
  from sdarts_jax.evaluation import input_pipeline
  cfg = defaults.from_file("imagenet_eval").data
  cfg.tfds_data_dir = str(tmp_path)
  with pytest.raises(pipeline.DataError) as error:
    input_pipeline.make_input(cfg, 0, None)
  message = str(error.value)
  assert "'imagenet2012' (config.data.name) has no prepared 'train' split" in message
  assert "ILSVRC2012_img_train.tar" in message and f"--data_dir={tmp_path}" in message
  assert "--config.data.folder" not in message and error.value.__suppress_context__


# ---------------------------------------------------------------- synthetic data

def test_synthetic_is_deterministic_and_learnable():
  a, b = pipeline.synthetic(200, 10, 16, seed=3), pipeline.synthetic(200, 10, 16, seed=3)
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.labels, b.labels)
  assert a.images.shape == (200, 16, 16, 3) and a.images.dtype == np.uint8
  assert np.bincount(a.labels).tolist() == [20] * 10
  other = pipeline.synthetic(100, 10, 16, seed=4)
  assert not np.array_equal(other.images, a.images[:100])
  # Nearest class mean, fitted on one seed, classifies another seed's images.
  means = np.stack([a.images[a.labels == c].mean(0) for c in range(10)]).reshape(10, -1)
  distances = ((other.images.reshape(100, 1, -1) - means[None]) ** 2).sum(-1)
  assert (distances.argmin(1) == other.labels).mean() > 0.9


def test_synthetic_splits_through_load():
  cfg = config(name="synthetic", synthetic_examples=40, image_size=8)
  train, test = pipeline.load(cfg, "train"), pipeline.load(cfg, "test")
  assert train.images.shape == (40, 8, 8, 3) and test.images.shape == (10, 8, 8, 3)
  assert train.num_classes == test.num_classes == pipeline.SYNTHETIC_CLASSES
  assert (test.mean, test.std) == (train.mean, train.std)
  assert pipeline.load(config(name="synthetic", max_examples=7), "train").images.shape[0] == 7
  with pytest.raises(pipeline.DataError, match="config.data.synthetic_examples"):
    pipeline.load(config(name="synthetic", synthetic_examples=3), "train")


def test_channel_stats():
  images = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
  mean, std = pipeline.channel_stats(images)
  np.testing.assert_allclose(mean, (images / 255.0).reshape(-1, 3).mean(0), rtol=1e-12)
  np.testing.assert_allclose(std, (images / 255.0).reshape(-1, 3).std(0), rtol=1e-12)


# ---------------------------------------------------------------- search batches

def test_search_split():
  weights, alpha = pipeline.search_split(11, 0.5)
  np.testing.assert_array_equal(weights, np.arange(5))
  np.testing.assert_array_equal(alpha, np.arange(5, 11))
  for n, portion in [(10, 0.0), (10, 1.0), (1, 0.5)]:
    with pytest.raises(pipeline.DataError, match="config.data.train_portion"):
      pipeline.search_split(n, portion)


def test_search_batches():
  src = array_source(103)  # weight half 0..50, alpha half 51..102
  batches = pipeline.SearchBatches(src, 0.5, batch_size=8, seed=1)
  assert batches.steps_per_epoch == 51 // 8
  first = [batches.batch(0, i) for i in range(batches.steps_per_epoch)]
  b = first[1]
  assert b["train_image"].shape == (8, 4, 4, 3) and b["train_image"].dtype == np.uint8
  assert b["train_label"].shape == (8,) and b["train_label"].dtype == np.int32
  train = np.concatenate([b["train_label"] for b in first])
  val = np.concatenate([b["val_label"] for b in first])
  assert len(set(train.tolist())) == len(train) and len(set(val.tolist())) == len(val)
  assert train.max() < 51 and val.min() >= 51
  for b in first:  # images and labels stay paired
    np.testing.assert_array_equal(b["train_image"][:, 0, 0, 0], b["train_label"])
  # A pure function of (seed, epoch, index): a fresh object reproduces it (resumption).
  again = pipeline.SearchBatches(src, 0.5, batch_size=8, seed=1).batch(0, 1)
  for key in b:
    np.testing.assert_array_equal(again[key], first[1][key])
  assert not np.array_equal(batches.batch(1, 0)["train_label"], first[0]["train_label"])
  assert not np.array_equal(batches.batch(1, 0)["val_label"], first[0]["val_label"])
  other_seed = pipeline.SearchBatches(src, 0.5, batch_size=8, seed=2).batch(0, 0)
  assert not np.array_equal(other_seed["train_label"], first[0]["train_label"])
  with pytest.raises(IndexError):
    batches.batch(0, batches.steps_per_epoch)


def test_search_batches_batch_too_large():
  with pytest.raises(pipeline.DataError, match="config.data.batch_size = 64"):
    pipeline.SearchBatches(array_source(100), 0.5, batch_size=64, seed=0)
  with pytest.raises(pipeline.DataError, match="config.data.batch_size is 0"):
    pipeline.SearchBatches(array_source(100), 0.5, batch_size=0, seed=0)


def test_eval_batches_cover_split_once():
  src = array_source(10)
  batches = list(pipeline.eval_batches(src, 4))
  assert [b["valid"].tolist() for b in batches] == [[True] * 4, [True] * 4,
                                                    [True, True, False, False]]
  assert all(b["image"].shape == (4, 4, 4, 3) and b["label"].shape == (4,) for b in batches)
  labels = np.concatenate([b["label"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(labels, np.arange(10))
  np.testing.assert_array_equal(batches[-1]["label"], [8, 9, 9, 9])
  np.testing.assert_array_equal(batches[-1]["image"][:, 0, 0, 0], [8, 9, 9, 9])


# ---------------------------------------------------------------- preprocess, placement

def _images(n=16, size=8, seed=0):
  return np.random.default_rng(seed).integers(1, 256, (n, size, size, 3), dtype=np.uint8)


def test_preprocess_without_augment_normalises():
  images = _images()
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  out = pipeline.preprocess(jax.random.key(0), jnp.asarray(images), mean, std, augment=False)
  assert out.shape == images.shape and out.dtype == jnp.float32
  expected = (images / np.float32(255) - np.float32(mean)) / np.float32(std)
  # x / 255 - mean cancels toward zero, and XLA may round the divisions differently (a
  # reciprocal, a fused multiply-add): errors of a few roundings of the terms (up to 5), so
  # normwise (observed 7e-7 absolute, 2.4e-7 of the scale 3, where rtol=atol=1e-6 left 5x;
  # 1.5e-7 on entries near zero, 7x); bound 1e-5 of the scale.
  assert_close_normwise(out, expected, 1e-5)


def test_preprocess_augment_is_a_padded_crop_and_flip():
  images, padding = _images(64), 4
  out = jax.jit(lambda k, x: pipeline.preprocess(k, x, (0.0,) * 3, (1.0,) * 3, True, padding))(
      jax.random.key(7), jnp.asarray(images))
  assert out.shape == images.shape and out.dtype == jnp.float32
  pixels = np.rint(np.asarray(out) * 255).astype(np.uint8)
  padded = np.pad(images, ((0, 0), (padding,) * 2, (padding,) * 2, (0, 0)))
  seen = set()
  for i in range(len(images)):
    matches = [(dy, dx, flip)
               for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
               for flip in (False, True)
               if np.array_equal(pixels[i], (lambda w: w[:, ::-1] if flip else w)(
                   padded[i, dy:dy + 8, dx:dx + 8]))]
    assert len(matches) == 1, f"image {i}: {len(matches)} windows of the padded input match"
    seen.add(matches[0])
  assert len(seen) > 20  # offsets and flips vary over the batch
  assert {flip for _, _, flip in seen} == {False, True}


@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 devices (tests/conftest.py sets "
                    "XLA_FLAGS=--xla_force_host_platform_device_count=4)")
def test_preprocess_and_to_global_do_not_depend_on_sharding():
  images = _images(16)
  batch = {"image": images, "label": np.arange(16, dtype=np.int32)}
  fn = jax.jit(lambda k, x: pipeline.preprocess(k, x, (0.5,) * 3, (0.25,) * 3, True))
  single = fn(jax.random.key(3), jnp.asarray(images))
  mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  placed = pipeline.to_global(batch, sharding)
  for name in batch:
    assert placed[name].sharding == sharding
    np.testing.assert_array_equal(placed[name], batch[name])
  assert len(placed["image"].addressable_shards) == 4
  sharded = fn(jax.random.key(3), placed["image"])
  np.testing.assert_array_equal(sharded, single)


# ---------------------------------------------------------------- cutout during search

def test_cutout_squares_where_the_reference_puts_them():
  """Hand-computed masks: for the centres (y, x) that the key draws, the reference's
  Cutout zeroes rows clip(y - 8, 0, H) .. clip(y + 8, 0, H) and the same columns; with
  probability 1 every image is cut there, with 0 none, and in between each image is
  either cut there or left alone, both occurring."""
  n, size, length = 64, 20, 16
  x = jnp.ones((n, size, size, 2))
  key = jax.random.key(5)
  k_y, k_x = jax.random.split(key)
  cy = np.asarray(jax.random.randint(k_y, (n, 1), 0, size))[:, 0]
  cx = np.asarray(jax.random.randint(k_x, (n, 1), 0, size))[:, 0]
  want = np.ones((n, size, size, 2), np.float32)
  for i, (y, x_) in enumerate(zip(cy, cx)):
    y1, y2 = np.clip([y - length // 2, y + length // 2], 0, size)
    x1, x2 = np.clip([x_ - length // 2, x_ + length // 2], 0, size)
    want[i, y1:y2, x1:x2] = 0
  np.testing.assert_array_equal(pipeline.cutout_square(key, x, length, 1.0), want)
  np.testing.assert_array_equal(pipeline.cutout_square(key, x, length), want)
  np.testing.assert_array_equal(pipeline.cutout_square(key, x, length, 0.0), x)
  half = np.asarray(jax.jit(pipeline.cutout_square, static_argnums=2)(key, x, length, 0.5))
  cut = [np.array_equal(half[i], want[i]) for i in range(n)]
  untouched = [np.array_equal(half[i], x[i]) for i in range(n)]
  assert all(c or u for c, u in zip(cut, untouched)) and 10 < sum(cut) < 54


def test_cutout_probability_constant_or_ramped():
  """"constant" (the default): cutout_prob in every epoch, as the official scripts run
  (their ramp sets an attribute that Cutout never reads); "linear_ramp": what their comment
  and log line say, cutout_prob * epoch / (epochs - 1), epoch from 0."""
  assert pipeline.cutout_prob_at(0.5, 0, 50) == pipeline.cutout_prob_at(0.5, 49, 50) == 0.5
  ramp = lambda *a: pipeline.cutout_prob_at(*a, schedule="linear_ramp")
  assert ramp(1.0, 0, 50) == 0.0 and ramp(1.0, 49, 50) == 1.0
  assert ramp(0.5, 7, 50) == 0.5 * 7 / 49
  assert ramp(1.0, 0, 1) == 0.0
  assert float(jax.jit(ramp, static_argnums=2)(1.0, jnp.int32(2), 5)) == 0.5
  with pytest.raises(ValueError, match="cutout schedule 'ramp'"):
    pipeline.cutout_prob_at(1.0, 0, 5, "ramp")
  c = defaults.search_config("adv")
  assert (c.data.cutout, c.data.cutout_schedule) == (0, "constant")  # off by default


def test_search_step_cuts_its_images_by_the_schedule(monkeypatch):
  """The images the search step is handed (`run_search.make_train_step`'s preprocessing of the
  weights' and alpha's batches, with the probability it computes from the step count),
  counted: an image is cut when it holds zeros, and then exactly one square of at most
  cutout x cutout pixels (constant images normalise to nonzero values, padding included).
  With cutout_prob 0.5 over 5 epochs, "constant" cuts about half the images in the first
  epoch as in the last; "linear_ramp" none in the first, a quarter in the middle, half in
  the last. 512 images per count: a binomial standard deviation of at most 0.022."""
  from conftest import tiny_config
  from sdarts_jax.search import run_search, scan_step
  n, size, length, steps_per_epoch = 256, 8, 4, 3
  source = pipeline.Source("constant", np.zeros((1, size, size, 3), np.uint8),
                           np.zeros(1, np.int32), 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
  batch = {"train_image": jnp.full((n, size, size, 3), 200, jnp.uint8),
           "val_image": jnp.full((n, size, size, 3), 200, jnp.uint8)}

  def handed_images(model, config, steps, preprocess):  # stands in for scan_step.make_step
    def step(state, batch):
      k_t, k_v = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), state["step"]))
      return jnp.concatenate([preprocess(k_t, batch["train_image"]),
                              preprocess(k_v, batch["val_image"])])
    return step

  monkeypatch.setattr(scan_step, "make_step", handed_images)

  compiled = {}

  def fraction_cut(schedule, epoch):
    if schedule not in compiled:
      config = tiny_config("darts", **{"epochs": 5, "data.cutout": length, "data.cutout_prob":
                                       0.5, "data.cutout_schedule": schedule})
      run_search.check_config(config)
      compiled[schedule] = jax.jit(run_search.make_train_step(None, config, steps_per_epoch,
                                                              source))
    x = np.asarray(compiled[schedule]({"step": jnp.int32(epoch * steps_per_epoch + 1)}, batch))
    zero = np.all(x == 0, axis=-1)  # [2n, H, W]
    cut = zero.any(axis=(1, 2))
    for hole in zero[cut]:  # one axis-aligned square, clipped at the border
      rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
      assert hole.sum() == len(rows) * len(cols) and len(rows) <= length >= len(cols)
      assert hole[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    assert not np.any(x[~cut] == 0)
    return cut.mean()

  for epoch in (0, 4):
    assert abs(fraction_cut("constant", epoch) - 0.5) < 0.11
  assert fraction_cut("linear_ramp", 0) == 0.0
  assert abs(fraction_cut("linear_ramp", 2) - 0.25) < 0.11
  assert abs(fraction_cut("linear_ramp", 4) - 0.5) < 0.11
