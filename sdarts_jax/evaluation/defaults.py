"""The shared base of the configurations for training a found cell from scratch
(docs/method.md, section 7).

Config files `configs/{cifar10,cifar100,svhn}_eval.py` call `cifar_config` (the protocol of
the CIFAR-size datasets, which they share) and `apply_args`; `configs/imagenet_eval.py`
sets its numbers on `common_config` and `data_config`. Their argument string takes
`arch=NAME_OR_PATH` (a published genotype or a search's genotype.json) and `smoke`
(`--config=configs/cifar10_eval.py:arch=c10_s5_pgd,smoke`).
"""
from __future__ import annotations

import ml_collections

from sdarts_jax import defaults as search_defaults

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def data_config(name: str, batch_size: int) -> ml_collections.ConfigDict:
  """The search's data fields (`sdarts_jax.data.pipeline`, cutout among them) without its split."""
  d = search_defaults.data_config()
  del d["train_portion"]
  d.name = name
  d.batch_size = batch_size
  return d


def common_config() -> ml_collections.ConfigDict:
  """What every evaluation training shares: the architecture, seed, logging, checkpoints."""
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
  c = common_config()
  c.epochs = 600
  c.drop_path = 0.2          # drop probability = drop_path * epoch / epochs
  c.model = ml_collections.ConfigDict(dict(
      channels=36, layers=20, stem="cifar", stem_multiplier=3,
      auxiliary=True,        # head after cell 2*layers//3
      bn_momentum=0.9,       # Flax convention; PyTorch's momentum 0.1
      impl="auto",           # depthwise-separable convs: auto | fused | grouped
  ))
  c.data = data_config(dataset, 96)
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


def apply_args(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Apply "arch=NAME_OR_PATH" and "smoke" (a run of a few minutes on CPU: the sizes of
  `SIZES["eval_smoke"]` in `sdarts_jax.defaults`, and at ImageNet's size "imagenet_smoke")."""
  args = search_defaults.parse_arg(arg, ("arch", "smoke"))
  if args.get("arch"):
    c.arch = args["arch"]
  if "smoke" in args:
    search_defaults.resize(c, "eval_smoke")
    if c.model.stem == "imagenet":
      search_defaults.resize(c, "imagenet_smoke")
  return c
