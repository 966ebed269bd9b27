"""Inputs for training a found cell: batches on the mesh, and the augmentation that runs
inside the compiled step.

Two sources share one interface (`train_epoch`, `eval_batches`, `preprocess`):
  * `InMemoryInput`: CIFAR-10/100, SVHN, image folders and synthetic images, whole splits
    in host memory (`sdarts_jax.data.pipeline`); every process holds the global batch and places
    its shards. Augmentation (pad-4 crop, flip, cutout) runs on the device.
  * `StreamedInput`: TFDS `imagenet2012` (array_record, prepared by hand), far too big for
    memory, read with grain: each process decodes only its own part of every global batch
    (JPEG decode, random-resized crop and flip on the host, in grain worker processes);
    colour jitter and normalisation run on the device.
Both draw the epoch order as a pure function of (seed, epoch) and start an epoch at any
step, so a run resumes exactly; batches have fixed shapes (a partial last train batch is
dropped; the last test batch is padded and masked by "valid").
"""
from __future__ import annotations

import functools
from typing import Iterator

import grain
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from sdarts_jax.data import pipeline
from sdarts_jax.evaluation import defaults
from sdarts_jax.run import parallel

Batch = dict[str, jax.Array]  # {"image": [B, H, W, 3] uint8, "label": [B] int32, ...}


def make_input(cfg, seed: int, mesh) -> "InMemoryInput | StreamedInput":
  """The input for config.data (`cfg`): streamed for imagenet2012, in memory otherwise."""
  if cfg.name == "imagenet2012" and not cfg.folder:
    return StreamedInput(cfg, seed, mesh)
  return InMemoryInput(cfg, seed, mesh)


# ---------------------------------------------------------------- in memory

class InMemoryInput:
  """Train and test splits of `sdarts_jax.data.pipeline.load` in host memory.

  Attributes:
    steps_per_epoch, num_classes, image_shape (H, W, 3).
  """

  def __init__(self, cfg, seed: int, mesh):
    self.cfg = cfg
    self.train = pipeline.load(cfg, "train")
    self.test = pipeline.load(cfg, "test")
    self.batches = pipeline.TrainBatches(self.train, cfg.batch_size, seed)
    self.sharding = parallel.batch_sharded(mesh)
    self.steps_per_epoch = self.batches.steps_per_epoch
    self.num_classes = self.train.num_classes
    self.image_shape = self.train.images.shape[1:]

  def train_epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
    """Batches start, start + 1, ... of `epoch`, on the mesh."""
    for index in range(start, self.steps_per_epoch):
      yield pipeline.to_global(self.batches.batch(epoch, index), self.sharding)

  def eval_batches(self) -> Iterator[Batch]:
    """The test split once, with "valid" [B] bool marking the real rows."""
    for batch in pipeline.eval_batches(self.test, self.cfg.batch_size):
      yield pipeline.to_global(batch, self.sharding)

  def preprocess(self, key, images: jax.Array, train: bool) -> jax.Array:
    """uint8 [N, H, W, 3] -> normalised float32; crop, flip and cutout in training."""
    return pipeline.preprocess(key, images, self.train.mean, self.train.std,
                               train and self.cfg.augment, self.cfg.crop_padding, self.cfg.cutout)


# ---------------------------------------------------------------- streamed (ImageNet)

def imagenet_prepare_help(data_dir: str) -> str:
  """How to prepare imagenet2012 for `StreamedInput` (TFDS cannot download ImageNet)."""
  where = f" --data_dir={data_dir}" if data_dir else ""
  return ("ImageNet must be downloaded by hand: put ILSVRC2012_img_train.tar and "
          "ILSVRC2012_img_val.tar (from image-net.org) in a folder DIR, then run `pip install "
          "'sdarts_jax[prepare]' && tfds build imagenet2012 --file_format=array_record "
          f"--manual_dir=DIR{where}` once (about 150 GB), and set config.data.tfds_data_dir "
          "to that data dir unless it is TFDS's default.")


def _records(cfg, split: str):
  """The TFDS array_record data source of imagenet2012 `split` (`pipeline.open_tfds`)."""
  return pipeline.open_tfds(cfg.name, split, cfg.tfds_data_dir,
                            imagenet_prepare_help(cfg.tfds_data_dir))


class StreamedInput:
  """imagenet2012 from TFDS array_record files, decoded per process by grain.

  Global batch b of epoch e holds the examples order(e)[b * B:(b + 1) * B]; process p
  reads rows [p * B / P, (p + 1) * B / P) of it. Each example's crop and flip come from
  default_rng([seed, epoch, example index]), so batches do not depend on the number of
  processes or workers.
  """

  def __init__(self, cfg, seed: int, mesh):
    self.cfg, self.seed = cfg, seed
    self.train_records = _records(cfg, "train")
    self.test_records = _records(cfg, "validation")
    self.sharding = parallel.batch_sharded(mesh)
    self.local_batch = cfg.batch_size // jax.process_count()  # the mesh checked divisibility
    self.num_train = _limit(len(self.train_records), cfg.max_examples)
    self.num_test = _limit(len(self.test_records), cfg.max_examples)
    self.steps_per_epoch = self.num_train // cfg.batch_size
    if self.steps_per_epoch == 0:
      raise pipeline.DataError(f"config.data.batch_size = {cfg.batch_size} exceeds the "
                               f"{self.num_train} training examples; lower it.")
    self.num_classes = self.train_records.dataset_info.features["label"].num_classes
    self.image_shape = (cfg.image_size, cfg.image_size, 3)

  def _stream(self, indices: np.ndarray, load) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows: indices [steps, local batch] of records, loaded by grain."""
    dataset = grain.MapDataset.source(indices.reshape(-1)).map(load).batch(
        self.local_batch, drop_remainder=True)
    stream = dataset.to_iter_dataset(grain.ReadOptions(num_threads=max(1, self.cfg.threads)))
    if self.cfg.workers:
      stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.cfg.workers))
    return iter(stream)

  def _local(self, global_rows: np.ndarray) -> np.ndarray:
    """[steps, B] -> this process's columns [steps, B / P]."""
    p = jax.process_index()
    return global_rows[:, p * self.local_batch:(p + 1) * self.local_batch]

  def _place(self, batch: dict[str, np.ndarray]) -> Batch:
    return {k: jax.make_array_from_process_local_data(self.sharding, v)
            for k, v in batch.items()}

  def train_epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
    rows = pipeline.epoch_rows(np.arange(self.num_train), self.cfg.batch_size,
                               [self.seed, epoch])[start:]
    load = functools.partial(_train_example, self.train_records, self.cfg.image_size,
                             self.cfg.min_area, self.seed, epoch)
    for batch in self._stream(self._local(rows), load):
      yield self._place(batch)

  def eval_batches(self) -> Iterator[Batch]:
    b = self.cfg.batch_size
    steps = -(-self.num_test // b)
    rows = np.arange(steps * b).reshape(steps, b)
    load = functools.partial(_test_example, self.test_records, self.num_test,
                             self.cfg.image_size, self.cfg.resize_ratio)
    for batch in self._stream(self._local(rows), load):
      yield self._place(batch)

  def preprocess(self, key, images: jax.Array, train: bool) -> jax.Array:
    """uint8 [N, H, W, 3] -> normalised float32; colour jitter in training."""
    x = images.astype(jnp.float32) / 255.0
    if train and self.cfg.augment:
      x = color_jitter(key, x, *self.cfg.color_jitter)
    mean, std = defaults.IMAGENET_MEAN_STD
    return (x - jnp.asarray(mean)) / jnp.asarray(std)


def _limit(n: int, max_examples: int) -> int:
  return min(n, max_examples) if max_examples else n


def _train_example(records, size: int, min_area: float, seed: int, epoch: int,
                   index) -> dict[str, np.ndarray]:
  """Record `index`: random-resized crop to size x size and a random flip."""
  example = records[int(index)]
  rng = np.random.default_rng([seed, epoch, int(index)])
  image = random_resized_crop(rng, np.asarray(example["image"]), size, min_area)
  if rng.random() < 0.5:
    image = image[:, ::-1]
  return {"image": np.ascontiguousarray(image), "label": np.int32(example["label"])}


def _test_example(records, num_test: int, size: int, resize_ratio: float,
                  position) -> dict[str, np.ndarray]:
  """Test position `position` (padding repeats the last record, valid=False)."""
  example = records[int(min(position, num_test - 1))]
  image = resize_center_crop(np.asarray(example["image"]), size, round(size / resize_ratio))
  return {"image": image, "label": np.int32(example["label"]),
          "valid": np.bool_(position < num_test)}


def random_resized_crop(rng: np.random.Generator, image: np.ndarray, size: int,
                        min_area: float, ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """torchvision's RandomResizedCrop(size, scale=(min_area, 1), ratio): up to 10 tries of
  a random area fraction and log-uniform aspect ratio, else the centre crop of the
  clamped ratio; bilinear resize. image: [H, W, 3] uint8 -> [size, size, 3] uint8."""
  h, w = image.shape[:2]
  for _ in range(10):
    area = h * w * rng.uniform(min_area, 1.0)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw, ch = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
    if 0 < cw <= w and 0 < ch <= h:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      break
  else:
    aspect = w / h
    if aspect < ratio[0]:
      cw, ch = w, round(w / ratio[0])
    elif aspect > ratio[1]:
      cw, ch = round(h * ratio[1]), h
    else:
      cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
  crop = PIL.Image.fromarray(image[top:top + ch, left:left + cw])
  return np.asarray(crop.resize((size, size), PIL.Image.BILINEAR))


def resize_center_crop(image: np.ndarray, size: int, resize: int) -> np.ndarray:
  """Resize the short side to `resize` (bilinear), then the central size x size crop.
  image: [H, W, 3] uint8 -> [size, size, 3] uint8."""
  h, w = image.shape[:2]
  scale = resize / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  resized = np.asarray(PIL.Image.fromarray(image).resize((nw, nh), PIL.Image.BILINEAR))
  top, left = (nh - size) // 2, (nw - size) // 2
  return resized[top:top + size, left:left + size]


# ---------------------------------------------------------------- colour jitter (device)

def grayscale(x: jax.Array) -> jax.Array:
  """ITU-R 601 luma, as torchvision. x: [..., 3] -> [..., 1]."""
  return x @ jnp.array([0.299, 0.587, 0.114])[:, None]


def color_jitter(key: jax.Array, x: jax.Array, brightness: float, contrast: float,
                 saturation: float, hue: float) -> jax.Array:
  """torchvision's ColorJitter per image, in a fixed order (brightness, contrast,
  saturation, hue; torchvision shuffles the order per image). Factors are uniform in
  [1 - s, 1 + s] (hue: a shift uniform in [-hue, hue] of the colour circle); each step
  clips to [0, 1]. x: [N, H, W, 3] float in [0, 1] -> same."""
  n = x.shape[0]
  kb, kc, ks, kh = jax.random.split(key, 4)
  factor = lambda k, s: jax.random.uniform(k, (n, 1, 1, 1), minval=1 - s, maxval=1 + s)
  x = jnp.clip(x * factor(kb, brightness), 0, 1)
  mean = jnp.mean(grayscale(x), axis=(1, 2, 3), keepdims=True)
  x = jnp.clip(mean + factor(kc, contrast) * (x - mean), 0, 1)
  gray = grayscale(x)
  x = jnp.clip(gray + factor(ks, saturation) * (x - gray), 0, 1)
  shift = jax.random.uniform(kh, (n, 1, 1), minval=-hue, maxval=hue)
  h, s, v = rgb_to_hsv(x)
  return hsv_to_rgb(jnp.mod(h + shift, 1.0), s, v)


def rgb_to_hsv(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """x: [..., 3] in [0, 1] -> (h, s, v), each [...], h in [0, 1) (Python's colorsys)."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  maxc, minc = jnp.max(x, -1), jnp.min(x, -1)
  delta = maxc - minc
  s = jnp.where(maxc > 0, delta / jnp.where(maxc > 0, maxc, 1), 0.0)
  safe = jnp.where(delta > 0, delta, 1.0)
  rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
  h = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  return jnp.where(delta > 0, jnp.mod(h / 6.0, 1.0), 0.0), s, maxc


def hsv_to_rgb(h: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
  """Inverse of `rgb_to_hsv`: (h, s, v), each [...] -> [..., 3]."""
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  i = i.astype(jnp.int32) % 6
  pick = lambda *c: jnp.select([i == k for k in range(6)], c)
  return jnp.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)],
                   axis=-1)
