"""Images for the search: TFDS datasets, image folders and synthetic data.

A split is held whole in host memory as uint8 (CIFAR-size data: 50,000 images are 150 MB).
Sources, selected by `config.data` (see `sdarts_jax.defaults.data_config`):
  * TFDS (`name`: cifar10, cifar100, svhn_cropped), read WITHOUT TensorFlow through
    `tfds.data_source` from a copy prepared once in the array_record format (the
    `tfds build` command in `prepare_command`; preparing needs TensorFlow, reading does not).
    Nothing is downloaded here: a missing dataset is a `DataError` saying how to prepare it.
  * An image folder (`folder`, wins over `name`): `{train,test}/<class name>/*.jpg` (or
    .jpeg, .png); labels index the class names of `train/` in sorted order.
  * CIFAR-10's python batches (`folder` holding data_batch_1..5 and test_batch, as the
    canonical archive's cifar-10-batches-py/ that `sdarts_jax.data.download` fetches): each file
    a pickled dict with b"data" [10000, 3072] uint8 (channels first, flattened) and
    b"labels"; read with an unpickler that builds only dicts, lists, bytes and numpy arrays.
  * Synthetic images (`name="synthetic"`), learnable and deterministic, for demos and tests.

Host side, everything is numpy: `SearchBatches` draws the SDARTS batches (the first part of
the train split trains the weights, the rest trains alpha) as a pure function of
(seed, epoch, step), `TrainBatches` does the same over the whole train split for training
a found cell from scratch, and `eval_batches` walks a split in fixed-shape batches.
`preprocess` (augmentation and normalisation) is pure JAX and runs inside the jitted step;
`to_global` places a global numpy batch on the device mesh.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import pickle
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
from jax import lax

# Per-channel mean and std of the train split, in [0, 1] pixel units.
TFDS_STATS = {
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SYNTHETIC_CLASSES = 10
SYNTHETIC_SEEDS = {"train": 0, "test": 1}
FOLDER_LAYOUT = ("{train,test}/<class name>/*.jpg (or .jpeg, .png), or CIFAR-10's python "
                 "batches (data_batch_1..5, test_batch)")
CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR_SHAPE = (3, 32, 32)  # one row of b"data": channels, height, width
CIFAR_CLASSES = 10  # when batches.meta, which names them, is missing


class DataError(ValueError):
  """A problem with the configured data, explained for the person running the search."""


@dataclasses.dataclass(frozen=True)
class Source:
  """One split in memory.

  images: [N, H, W, 3] uint8; labels: [N] int32 in [0, num_classes).
  mean, std: per-channel normalisation in [0, 1] pixel units (from the train split).
  """
  name: str
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]


# ---------------------------------------------------------------- loading

def load(cfg, split: str) -> Source:
  """Load `split` ("train" or "test") of the source `cfg` (= config.data) selects."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if cfg.max_examples < 0:
    raise DataError(f"config.data.max_examples is {cfg.max_examples}; it must be 0 (all "
                    "examples) or the number of examples to keep from the start of a split.")
  if cfg.folder:
    read = _read_cifar_batches if is_cifar_batches(cfg.folder) else _read_folder
    return _with_train_stats(f"folder:{cfg.folder}", lambda s: read(cfg.folder, s), split,
                             cfg.max_examples)
  if cfg.name == "synthetic":
    return _with_train_stats("synthetic", lambda s: _read_synthetic(cfg, s), split,
                             cfg.max_examples)
  if cfg.name in TFDS_STATS:
    images, labels, num_classes = _read_tfds(cfg.name, split, cfg.tfds_data_dir,
                                             cfg.max_examples)
    mean, std = TFDS_STATS[cfg.name]
    return Source(cfg.name, images, labels, num_classes, mean, std)
  raise DataError(
      f"config.data.name is {cfg.name!r}, which sdarts_jax does not know. Use one of "
      f"{', '.join(list(TFDS_STATS) + ['synthetic'])}, or set config.data.folder to an "
      f"image folder laid out as {FOLDER_LAYOUT}.")


def _with_train_stats(name: str, read, split: str, max_examples: int) -> Source:
  """A Source for `split`, normalised with the statistics of the (truncated) train split.

  read(split) -> (images [N, H, W, 3] uint8, labels [N] int32, num_classes).
  """
  images, labels, num_classes = _truncate(read(split), max_examples)
  train_images = images if split == "train" else _truncate(read("train"), max_examples)[0]
  mean, std = channel_stats(train_images)
  return Source(name, images, labels, num_classes, mean, std)


def _truncate(arrays, max_examples: int):
  """(images, labels, num_classes) keeping the first max_examples examples (0 = all)."""
  images, labels, num_classes = arrays
  if max_examples:
    images, labels = images[:max_examples], labels[:max_examples]
  return images, labels, num_classes


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and (population) std over all pixels, in [0, 1] units.

  images: [N, H, W, 3] uint8. Exact, from per-channel histograms (no float copy).
  """
  values = np.arange(256) / 255.0
  mean, std = [], []
  for c in range(images.shape[-1]):
    p = np.bincount(images[..., c].ravel(), minlength=256) / (images.size // images.shape[-1])
    m = float(p @ values)
    mean.append(m)
    std.append(math.sqrt(float(p @ (values - m) ** 2)))
  return tuple(mean), tuple(std)


# ---------------------------------------------------------------- TFDS

def prepare_command(name: str, data_dir: str = "") -> str:
  """The shell command that prepares TFDS dataset `name` for `load` (needs internet)."""
  command = (f"pip install 'sdarts_jax[prepare]' && "
             f"tfds build {name} --file_format=array_record")
  return command + (f" --data_dir={data_dir}" if data_dir else "")


def open_tfds(name: str, split: str, data_dir: str, prepare_help: str = ""):
  """The TFDS data source of a prepared split in the array_record format (read without
  TensorFlow, never downloaded), or one DataError naming the dataset, split, data dir and
  TFDS's reason, followed by `prepare_help` (default: `prepare_command` and the image-folder
  alternative)."""
  import tensorflow_datasets as tfds  # here: a second to import, needed by TFDS sources only
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False,
                            builder_kwargs={"file_format": "array_record"})
  except (KeyError, NotImplementedError, ValueError, OSError) as e:
    where = data_dir or f"TFDS's default data dir {tfds.core.constants.get_default_data_dir()}"
    reason = str(e.args[0] if e.args else type(e).__name__).strip().splitlines()[0]
    prepare_help = prepare_help or (
        f"Prepare it once, on a machine with internet access: "
        f"`{prepare_command(name, data_dir)}`, and set config.data.tfds_data_dir to that data "
        "dir unless it is TFDS's default. Or use an image folder instead: "
        f"--config.data.folder=PATH, laid out as {FOLDER_LAYOUT}.")
    raise DataError(
        f"The TFDS dataset {name!r} (config.data.name) has no prepared {split!r} split in "
        f"{where} (config.data.tfds_data_dir) in the array_record format, which sdarts_jax "
        f"reads without TensorFlow (TFDS says: \"{reason.rstrip('.')}\"). {prepare_help}"
    ) from None


def _read_tfds(name: str, split: str, data_dir: str, max_examples: int):
  """Read a prepared TFDS split into memory (`open_tfds`).

  Returns images [N, H, W, 3] uint8, labels [N] int32, num_classes.
  """
  records = open_tfds(name, split, data_dir)
  n = len(records) if not max_examples else min(len(records), max_examples)
  examples = [records[i] for i in range(n)]
  images = np.stack([np.asarray(e["image"], np.uint8) for e in examples])
  labels = np.array([e["label"] for e in examples], np.int32)
  return images, labels, records.dataset_info.features["label"].num_classes


# ---------------------------------------------------------------- image folders

def _read_folder(folder: str, split: str):
  """Decode `folder/split/<class>/*` into memory.

  Classes are the subdirectories of `folder/train`, sorted by name: label i is the i-th.
  Examples are interleaved over classes (the first image of every class, then the second,
  ...), so that any prefix (`max_examples`) and both parts of the search split hold every
  class. Returns images [N, H, W, 3] uint8, labels [N] int32, num_classes.
  """
  root = pathlib.Path(folder).expanduser()
  if not root.is_dir():
    raise DataError(f"config.data.folder is {folder!r}, which is not a directory. Point it "
                    f"at an image folder laid out as {FOLDER_LAYOUT}.")
  classes = _subdirs(root / "train")
  if not classes:
    raise DataError(f"config.data.folder {folder!r} has no class directories in "
                    f"{root / 'train'}; expected the layout {FOLDER_LAYOUT}.")
  split_dir = root / split
  names = [d.name for d in _subdirs(split_dir)]
  unknown = sorted(set(names) - {d.name for d in classes})
  if unknown:
    raise DataError(f"config.data.folder {folder!r}: {split_dir} has classes that train/ "
                    f"lacks: {', '.join(unknown)}. Both splits must use train's class names.")
  label_of = {d.name: i for i, d in enumerate(classes)}
  per_class = [(label_of[name], _image_files(split_dir / name)) for name in names]
  if split == "train":
    empty = [name for name, (_, files) in zip(names, per_class) if not files]
    if empty:
      raise DataError(f"config.data.folder {folder!r}: class directories without "
                      f"{'/'.join(IMAGE_SUFFIXES)} images in {split_dir}: {', '.join(empty)}.")
  order = sorted((rank, label, path) for label, files in per_class
                 for rank, path in enumerate(files))
  if not order:
    raise DataError(f"config.data.folder {folder!r} has no images in {split_dir}; expected "
                    f"the layout {FOLDER_LAYOUT}.")
  images = [_read_image(path, folder) for _, _, path in order]
  shapes = {image.shape for image in images}
  if len(shapes) > 1:
    raise DataError(f"config.data.folder {folder!r}: the images in {split_dir} have "
                    f"different sizes {sorted(shapes)[:4]}; resize them all to one size.")
  labels = np.array([label for _, label, _ in order], np.int32)
  return np.stack(images), labels, len(classes)


def _subdirs(path: pathlib.Path) -> list[pathlib.Path]:
  """Non-hidden subdirectories of `path`, sorted by name ([] if `path` is missing)."""
  if not path.is_dir():
    return []
  return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(path: pathlib.Path) -> list[pathlib.Path]:
  """The .jpg/.jpeg/.png files in `path`, sorted by name."""
  return sorted(p for p in path.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _read_image(path: pathlib.Path, folder: str) -> np.ndarray:
  """One image file as [H, W, 3] uint8 (grey and RGBA images are converted to RGB)."""
  try:
    with PIL.Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError) as e:
    raise DataError(f"config.data.folder {folder!r}: cannot read the image {path} ({e}). "
                    "Remove or replace the file.") from None


# ---------------------------------------------------------------- CIFAR-10 python batches

def is_cifar_batches(folder: str) -> bool:
  """Whether `folder` holds CIFAR-10's python batches (its data_batch_1)."""
  return (pathlib.Path(folder).expanduser() / CIFAR_BATCHES["train"][0]).is_file()


def _read_cifar_batches(folder: str, split: str):
  """Read CIFAR-10's python batch files of `split` from `folder`, in file order.

  Returns images [N, 32, 32, 3] uint8, labels [N] int32, num_classes (the length of
  batches.meta's label_names, CIFAR_CLASSES without that file).
  """
  root = pathlib.Path(folder).expanduser()
  missing = [name for name in CIFAR_BATCHES[split] if not (root / name).is_file()]
  if missing:
    raise DataError(f"config.data.folder {folder!r} holds CIFAR-10 python batches but not "
                    f"{', '.join(missing)}; unpack the whole archive there again.")
  batches = [_cifar_batch(root / name, folder) for name in CIFAR_BATCHES[split]]
  images = np.concatenate([b[0] for b in batches])
  labels = np.concatenate([b[1] for b in batches])
  meta = root / "batches.meta"
  num_classes = (len(_unpickle(meta, folder)[b"label_names"]) if meta.is_file()
                 else CIFAR_CLASSES)
  return images, labels, num_classes


def _cifar_batch(path: pathlib.Path, folder: str) -> tuple[np.ndarray, np.ndarray]:
  """One batch file: images [n, 32, 32, 3] uint8 (from b"data" [n, 3072]), labels [n] int32."""
  batch = _unpickle(path, folder)
  rows, labels = np.asarray(batch.get(b"data")), np.asarray(batch.get(b"labels"), np.int32)
  if rows.dtype != np.uint8 or rows.shape != (len(labels), math.prod(CIFAR_SHAPE)):
    raise DataError(f"config.data.folder {folder!r}: {path} is not a CIFAR-10 batch (b'data' "
                    f"is {rows.dtype} {rows.shape}, expected uint8 [{len(labels)}, "
                    f"{math.prod(CIFAR_SHAPE)}] for its {len(labels)} labels).")
  return rows.reshape(-1, *CIFAR_SHAPE).transpose(0, 2, 3, 1), labels


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles dicts, lists, bytes, numbers and numpy arrays, nothing that runs code."""
  _RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's array constructor, both module names
  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
              ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
              ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")
    return self._ALLOWED[module, name]


def _unpickle(path: pathlib.Path, folder: str) -> dict:
  """A CIFAR python batch file as its dict (keys are bytes: the files come from Python 2)."""
  try:
    with open(path, "rb") as f:
      out = _ArrayUnpickler(f, encoding="bytes").load()
  except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
    raise DataError(f"config.data.folder {folder!r}: cannot read {path} ({e}). Unpack the "
                    "CIFAR-10 archive there again.") from None
  if not isinstance(out, dict):
    raise DataError(f"config.data.folder {folder!r}: {path} is not a CIFAR-10 batch file.")
  return out


# ---------------------------------------------------------------- synthetic data

def synthetic(num_examples: int, num_classes: int, image_size: int, seed: int) -> Source:
  """Learnable synthetic images: a class template plus Gaussian noise (std 32 levels).

  The template of class c is a colour of its own plus a stripe pattern at an angle of its
  own; templates depend only on (num_classes, image_size), so splits drawn with different
  seeds share them. `seed` draws the labels (balanced, shuffled) and the noise.
  Returns a Source of images [num_examples, image_size, image_size, 3] uint8 whose mean and
  std are its own.
  """
  templates = _templates(num_classes, image_size)
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(num_examples) % num_classes).astype(np.int32)
  noise = rng.standard_normal((num_examples, image_size, image_size, 3), np.float32)
  images = np.clip(np.rint(templates[labels] + 32 * noise), 0, 255).astype(np.uint8)
  mean, std = channel_stats(images)
  return Source("synthetic", images, labels, num_classes, mean, std)


def _templates(num_classes: int, image_size: int) -> np.ndarray:
  """Class templates [num_classes, S, S, 3] float32 in [0, 255]: colour + stripes."""
  colours = np.random.default_rng([num_classes, image_size]).uniform(48, 208, (num_classes, 3))
  angles = np.pi * np.arange(num_classes) / num_classes
  y, x = np.mgrid[:image_size, :image_size]
  phase = (np.cos(angles)[:, None, None] * x + np.sin(angles)[:, None, None] * y)
  stripes = 40 * np.sin(2 * np.pi * phase / 8)
  return (colours[:, None, None, :] + stripes[..., None]).astype(np.float32)


def _read_synthetic(cfg, split: str):
  """The synthetic split of `cfg`: images, labels, num_classes (test is a quarter of train)."""
  if cfg.synthetic_examples < 4 or cfg.image_size < 1:
    raise DataError(
        f"config.data.synthetic_examples is {cfg.synthetic_examples} and "
        f"config.data.image_size is {cfg.image_size}; synthetic data needs at least 4 "
        "train examples (the test split is a quarter of them) and a positive image size.")
  n = cfg.synthetic_examples if split == "train" else cfg.synthetic_examples // 4
  source = synthetic(n, SYNTHETIC_CLASSES, cfg.image_size, SYNTHETIC_SEEDS[split])
  return source.images, source.labels, source.num_classes


# ---------------------------------------------------------------- batches

def search_split(num_examples: int, portion: float) -> tuple[np.ndarray, np.ndarray]:
  """SDARTS's split of the train set by index: ([floor(portion * n)], [the rest]) int64.

  The first part trains the weights, the second trains alpha.
  """
  n_weights = int(np.floor(portion * num_examples))
  if not 0 < n_weights < num_examples:
    raise DataError(
        f"config.data.train_portion = {portion} splits the {num_examples} training examples "
        f"into {n_weights} for the weights and {num_examples - n_weights} for alpha; both "
        "parts need examples. Use a portion strictly between 0 and 1, or more examples "
        "(config.data.max_examples).")
  return np.arange(n_weights), np.arange(n_weights, num_examples)


def epoch_rows(indices: np.ndarray, batch_size: int, key: list[int]) -> np.ndarray:
  """The one epoch sampler of every run: the examples of each step of an epoch, a
  permutation of `indices` drawn from default_rng(key) cut into [steps, batch_size] rows
  (the tail that does not fill a batch dropped). key holds the seed and the epoch, so the
  order is a pure function of them and a run resumes exactly."""
  order = np.random.default_rng(key).permutation(indices)
  steps = len(order) // batch_size
  return order[:steps * batch_size].reshape(steps, batch_size)


class SearchBatches:
  """Global batches for a search: each step takes one batch from the weight half and one
  from the alpha half, both without replacement within an epoch; the order is a pure
  function of (seed, epoch), so a run resumes exactly.

  Attributes:
    steps_per_epoch: min(len(weight half), len(alpha half)) // batch_size; the last
      partial batch is dropped, as is the tail of the longer half.
  """

  def __init__(self, source: Source, portion: float, batch_size: int, seed: int):
    if batch_size < 1:
      raise DataError(f"config.data.batch_size is {batch_size}; it must be positive.")
    self.source = source
    self.batch_size = batch_size
    self.seed = seed
    self.train_indices, self.val_indices = search_split(len(source.labels), portion)
    smaller = min(len(self.train_indices), len(self.val_indices))
    self.steps_per_epoch = smaller // batch_size
    if self.steps_per_epoch == 0:
      raise DataError(
          f"config.data.batch_size = {batch_size} does not fit the search split of "
          f"{source.name}: its smaller part has {smaller} examples ({len(source.labels)} "
          f"examples, config.data.train_portion = {portion}), so not one full batch. Lower "
          "the batch size, or use more examples (config.data.max_examples = 0 keeps all).")

  def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
    """Step `index` of `epoch`: {"train_image": [B, H, W, 3] uint8, "train_label": [B]
    int32, "val_image", "val_label"} (train_* from the weight half, val_* from alpha's)."""
    if not 0 <= index < self.steps_per_epoch:
      raise IndexError(f"batch index {index} outside [0, {self.steps_per_epoch})")
    train = epoch_rows(self.train_indices, self.batch_size, [self.seed, epoch, 0])[index]
    val = epoch_rows(self.val_indices, self.batch_size, [self.seed, epoch, 1])[index]
    return {"train_image": self.source.images[train], "train_label": self.source.labels[train],
            "val_image": self.source.images[val], "val_label": self.source.labels[val]}


class TrainBatches:
  """Global batches over a whole split, for training a network from scratch: without
  replacement within an epoch, in an order that is a pure function of (seed, epoch), so a
  run resumes exactly. The last partial batch of an epoch is dropped (fixed shapes).

  Attributes:
    steps_per_epoch: len(source) // batch_size.
  """

  def __init__(self, source: Source, batch_size: int, seed: int):
    if batch_size < 1:
      raise DataError(f"config.data.batch_size is {batch_size}; it must be positive.")
    self.source, self.batch_size, self.seed = source, batch_size, seed
    self.steps_per_epoch = len(source.labels) // batch_size
    if self.steps_per_epoch == 0:
      raise DataError(
          f"config.data.batch_size = {batch_size} exceeds the {len(source.labels)} training "
          f"examples of {source.name}, so not one full batch. Lower the batch size, or use "
          "more examples (config.data.max_examples = 0 keeps all).")

  def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
    """Step `index` of `epoch`: {"image": [B, H, W, 3] uint8, "label": [B] int32}."""
    if not 0 <= index < self.steps_per_epoch:
      raise IndexError(f"batch index {index} outside [0, {self.steps_per_epoch})")
    chosen = epoch_rows(np.arange(len(self.source.labels)), self.batch_size,
                        [self.seed, epoch])[index]
    return {"image": self.source.images[chosen], "label": self.source.labels[chosen]}


def eval_batches(source: Source, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """The whole split once, in order, in batches of a fixed shape.

  Yields {"image": [B, H, W, 3] uint8, "label": [B] int32, "valid": [B] bool}: the last
  batch is padded to B by repeating the last example, with valid False on the padding (the
  convention of every evaluation batch, the streamed ImageNet input's included).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  n = len(source.labels)
  for start in range(0, n, batch_size):
    positions = np.arange(start, start + batch_size)
    index = np.minimum(positions, n - 1)
    yield {"image": source.images[index], "label": source.labels[index], "valid": positions < n}


# ---------------------------------------------------------------- device side

def preprocess(key: jax.Array, images: jax.Array, mean, std, augment: bool,
               padding: int = 4, cutout: int = 0, cutout_prob=1.0) -> jax.Array:
  """Augment and normalise a global batch, inside jit.

  images: [N, H, W, 3] uint8 -> [N, H, W, 3] float32. With `augment`, as torchvision's
  RandomCrop(H, padding) (zero padding of the raw pixels, so padded pixels are black) then
  RandomHorizontalFlip(0.5); always (x / 255 - mean) / std; then, with `augment` and
  cutout > 0, a cutout square on each image with probability cutout_prob (a float, possibly
  traced; `cutout_square`). The random offsets and flips are drawn from `key` for the whole
  batch, so the result does not depend on how the batch is sharded.
  """
  if augment:
    images = random_crop_flip(key, images, padding)
  x = images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  if augment and cutout:
    x = cutout_square(jax.random.fold_in(key, 1), x, cutout, cutout_prob)
  return x


def cutout_square(key: jax.Array, x: jax.Array, length: int, prob=1.0) -> jax.Array:
  """Cutout (DeVries & Taylor 2017) as the reference's `Cutout(length, prob)`: each image,
  with probability `prob` (a float, possibly traced), gets a centre (y, x) uniform over the
  pixels, and the rows [y - L//2, y + L//2) and columns [x - L//2, x + L//2), clipped at
  the border, set to 0 (the mean, after normalisation). The centres do not depend on
  `prob`; whether each image is cut is a Bernoulli(prob) draw of its own.

  x: [N, H, W, C] -> same shape.
  """
  n, h, w, _ = x.shape
  k_y, k_x = jax.random.split(key)
  cy = jax.random.randint(k_y, (n, 1), 0, h)
  cx = jax.random.randint(k_x, (n, 1), 0, w)
  cut = jax.random.bernoulli(jax.random.fold_in(key, 2), prob, (n, 1, 1))
  half = length // 2
  rows = (jnp.arange(h) >= cy - half) & (jnp.arange(h) < cy + half)  # [N, H]
  cols = (jnp.arange(w) >= cx - half) & (jnp.arange(w) < cx + half)  # [N, W]
  hole = rows[:, :, None] & cols[:, None, :] & cut
  return jnp.where(hole[..., None], 0.0, x)


CUTOUT_SCHEDULES = ("constant", "linear_ramp")


def cutout_prob_at(prob, epoch, epochs: int, schedule: str = "constant"):
  """The cutout probability of `epoch` (from 0) in a search of `epochs` epochs.

  "constant": prob in every epoch, what the official search scripts run (their per-epoch
  "ramp" sets `transforms[-1].cutout_prob`, but their `Cutout.__call__` reads `self.prob`).
  "linear_ramp": prob * epoch / (epochs - 1), what those scripts' comment and log line
  describe: 0 in the first epoch and prob in the last (a one-epoch search, where that
  formula divides by zero, gets 0). epoch may be traced."""
  if schedule == "constant":
    return prob
  if schedule == "linear_ramp":
    return prob * epoch / max(epochs - 1, 1)
  raise ValueError(f"cutout schedule {schedule!r}; use one of {', '.join(CUTOUT_SCHEDULES)}")


def random_crop_flip(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """Random HxW crops of the zero-padded images, each flipped left-right with p = 0.5.

  images: [N, H, W, C] -> same shape and dtype.
  """
  n, h, w, c = images.shape
  k_offset, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_offset, (n, 2), 0, 2 * padding + 1)
  flips = jax.random.bernoulli(k_flip, 0.5, (n,))
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  crop = jax.vmap(lambda image, o: lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c)))
  crops = crop(padded, offsets)
  return jnp.where(flips[:, None, None, None], crops[:, :, ::-1], crops)


def to_global(batch: dict[str, np.ndarray],
              sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Place a global numpy batch (the same on every process) on the mesh as `sharding`
  lays it out; each process contributes only its addressable shards."""
  return {name: _global_array(value, sharding) for name, value in batch.items()}


def _global_array(value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """value [N, ...] -> a global jax.Array [N, ...] with `sharding`."""
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
