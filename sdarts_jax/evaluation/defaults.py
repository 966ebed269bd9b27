"""Default configurations for training a found cell from scratch (docs/method.md, section 7): every
number of the evaluation protocol lives here, once.

Config files `configs/{cifar10,cifar100,svhn,imagenet}_eval.py` call `cifar_config` or
`imagenet_config` and `apply_args`; their argument string takes `arch=NAME_OR_PATH`
(a published genotype or a search's genotype.json) and `smoke`
(`--config=configs/cifar10_eval.py:arch=c10_s5_pgd,smoke`).
"""
from __future__ import annotations

import ml_collections

from sdarts_jax import defaults as search_defaults

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _data(name: str, batch_size: int) -> ml_collections.ConfigDict:
  """The search's data fields (`sdarts_jax.data`, cutout among them) without its split."""
  d = search_defaults.data_config()
  del d["train_portion"]
  d.name = name
  d.batch_size = batch_size
  return d


def _common() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "train"
  c.arch = "c10_s5_pgd"      # published genotype name or genotype JSON path
  c.seed = 0
  c.eval_every_epochs = 1    # top-1 / top-5 on the test (validation) split
  c.log_every_steps = 50
  c.checkpoint_every_epochs = 1
  c.checkpoints_to_keep = 2
  c.compilation_cache = "~/.cache/sdarts_jax/xla"  # "" disables JAX's persistent cache
  return c


def cifar_config(dataset: str = "cifar10") -> ml_collections.ConfigDict:
  """CIFAR-10/100 and SVHN (`svhn_cropped`): 20 cells, 36 channels, 600 epochs."""
  c = _common()
  c.epochs = 600
  c.drop_path = 0.2          # drop probability = drop_path * epoch / epochs
  c.model = ml_collections.ConfigDict(dict(
      channels=36, layers=20, stem="cifar", stem_multiplier=3,
      auxiliary=True,        # head after cell 2*layers//3
      bn_momentum=0.9,       # Flax convention; PyTorch's momentum 0.1
      impl="auto",           # depthwise-separable convs: auto | fused | grouped
  ))
  c.data = _data(dataset, 96)
  c.data.cutout = 16
  c.optim = ml_collections.ConfigDict(dict(
      lr=0.025, lr_min=0.0,
      schedule="cosine",     # cosine (lr -> lr_min) | linear (PC-DARTS's ImageNet decay)
      lr_epoch_offset=1,     # the reference steps its scheduler first: epoch e uses e + 1
      warmup_epochs=0,       # epoch e < warmup_epochs uses lr (e + 1) / warmup instead
      linear_tail_epochs=5,  # linear schedule only: a gentler slope for the last epochs
      momentum=0.9, weight_decay=3e-4, grad_clip=5.0,
  ))
  c.loss = ml_collections.ConfigDict(dict(aux_weight=0.4, label_smoothing=0.0))
  return c


def imagenet_config() -> ml_collections.ConfigDict:
  """ImageNet mobile setting of the official `sota/cnn/train_imagenet.py`: 14 cells, 48
  channels, 224 px, batch 1024, 250 epochs, linear lr decay (PC-DARTS's `adjust_lr`) with
  5 warm-up epochs (that script warms up only for batches above 256), label smoothing 0.1."""
  c = _common()
  c.epochs = 250
  c.drop_path = 0.0
  c.model = ml_collections.ConfigDict(dict(
      channels=48, layers=14, stem="imagenet", stem_multiplier=3, auxiliary=True,
      bn_momentum=0.9, impl="auto"))
  c.data = _data("imagenet2012", 1024)
  c.data.image_size = 224    # train crop and test centre crop
  c.data.resize_ratio = 0.875  # test: resize the short side to image_size / ratio (256)
  c.data.min_area = 0.08     # random-resized crop: area fraction in [min_area, 1]
  c.data.color_jitter = (0.4, 0.4, 0.4, 0.2)  # brightness, contrast, saturation, hue
  c.data.workers = 16        # grain decoding processes per host (0 = threads only)
  c.data.threads = 16        # grain read threads per process
  c.optim = ml_collections.ConfigDict(dict(
      lr=0.5, lr_min=0.0, schedule="linear", lr_epoch_offset=0, warmup_epochs=5,
      linear_tail_epochs=5, momentum=0.9, weight_decay=3e-5, grad_clip=5.0))
  c.loss = ml_collections.ConfigDict(dict(aux_weight=0.4, label_smoothing=0.1))
  c.log_every_steps = 100
  return c


def apply_args(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Apply "arch=NAME_OR_PATH" and "smoke" (a run of a few minutes on CPU: 3 cells,
  C=8, a few hundred images, 2 epochs)."""
  args = search_defaults.parse_arg(arg, ("arch", "smoke"))
  if args.get("arch"):
    c.arch = args["arch"]
  if "smoke" in args:
    c.epochs = 2
    c.model.layers = 3
    c.model.channels = 8
    c.data.batch_size = 32
    c.data.max_examples = 256
    c.log_every_steps = 2
    if c.model.stem == "imagenet":
      c.data.batch_size = 16  # 224 px: the auxiliary head needs 7x7 after the network's /32
      c.optim.warmup_epochs = 1
      c.optim.linear_tail_epochs = 1
      c.data.max_examples = 64
      c.data.workers = 0
      c.data.threads = 2
  return c
