"""Default configurations: every number of the method (docs/method.md) lives here, once.

Config files in `configs/` call these and override; `get_config(arg)` there takes a
comma-separated argument string such as "smoke", "space=s3" or "dataset=cifar100,smoke"
(`--config=configs/cifar10_adv.py:space=s3,smoke`).
"""
from __future__ import annotations

import ml_collections

DATASETS = ("cifar10", "cifar100", "svhn_cropped")


def parse_arg(arg: str | None, allowed: tuple[str, ...]) -> dict[str, str]:
  """"smoke,space=s3" -> {"smoke": "", "space": "s3"}; ValueError for unknown keys."""
  out = {}
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in allowed:
      raise ValueError(f"unknown config argument {key!r}; known: {', '.join(allowed)}")
    out[key] = value
  return out


def data_config() -> ml_collections.ConfigDict:
  """Where the images come from and how they are batched (see `sdarts_jax.data`)."""
  return ml_collections.ConfigDict(dict(
      name="cifar10",         # TFDS name: cifar10, cifar100, svhn_cropped (or "synthetic")
      folder="",              # image folder {train,test}/<class>/*.jpg; wins when set
      tfds_data_dir="",       # TFDS data_dir ("" = TFDS's default)
      max_examples=0,         # keep only the first N training examples (0 = all)
      synthetic_examples=512, # size of the synthetic train split (name="synthetic")
      image_size=32,          # synthetic images only
      train_portion=0.5,      # first half of train trains the weights, second half alpha
      batch_size=64,          # global batch, for the weight step and the alpha step each
      augment=True,           # pad-and-crop + horizontal flip on both halves
      crop_padding=4,
      cutout=0,               # cutout square side in pixels (0 = off; the reference: 16)
  ))


def hessian_config() -> ml_collections.ConfigDict:
  """lambda_max (and trace) of the validation-loss Hessian tracked during search."""
  return ml_collections.ConfigDict(dict(
      every_epochs=0,        # 0 = off
      batches=1,             # validation batches averaged (the reference: one)
      wrt="alpha",           # alpha (raw, as the reference) or A
      train_bn=True,         # BatchNorm with batch statistics, as the reference
      weight_decay=1e-3,     # alpha's L2 on the diagonal, as the reference
      top_k=1,
      lanczos_iters=20,
      trace_samples=0,       # Hutchinson probes (0 = no trace)
      early_stop=False,      # RobustDARTS rule: mean of the last `window` values over the
      window=5,              # mean `lag` measurements earlier > factor, after start_epoch;
      lag=4,                 # the genotype of `lag` measurements earlier is kept
      factor=1.3,
      start_epoch=10,
  ))


def method_and_order(name: str) -> tuple[str, int | None]:
  """A method name of the configs' arguments -> (config.method, config.alpha.order or None
  to keep it): "darts2" is DARTS with the second-order alpha step, others name a method."""
  return ("darts", 2) if name == "darts2" else (name, None)


def search_config(method: str) -> ml_collections.ConfigDict:
  """SDARTS search on CIFAR-10 in the DARTS space without `none` (docs/method.md, sections 1-4).
  method: darts, rs, adv, or darts2 (darts with config.alpha.order = 2)."""
  method, order = method_and_order(method)
  c = ml_collections.ConfigDict()
  c.mode = "search"
  c.method = method          # darts | rs | adv
  c.space = "s5"             # s5 (DARTS w/o none), darts, s1, s2, s3, s4
  c.seed = 2
  c.epochs = 50
  c.model = ml_collections.ConfigDict(dict(
      channels=16,           # initial channels C
      layers=8,              # cells
      stem_multiplier=3,
      bn_momentum=0.9,       # Flax convention; PyTorch's momentum 0.1
      impl="auto",           # depthwise-separable convs: auto | fused | grouped
      partial_k=1,           # PC-DARTS: 1/K of each state's channels through the mixed ops
                             # (K = 4, configs/cifar10_pcdarts.py); 1 = DARTS
      edge_norm=False,       # PC-DARTS's edge normalisation (betas), which the official
                             # SDARTS code does not have
  ))
  c.data = data_config()
  # Cutout during search (the reference's --cutout, --cutout_length, --cutout_prob), off
  # with data.cutout = 0: on the weights' and alpha's batches, each image cut with
  # probability cutout_prob in every epoch ("constant", what the official scripts run:
  # their ramp sets an attribute that their Cutout never reads; docs/deviations.md), or
  # cutout_prob * epoch / (epochs - 1), epoch from 0 ("linear_ramp", what their comment
  # and log line describe).
  c.data.cutout_prob = 1.0
  c.data.cutout_schedule = "constant"  # constant | linear_ramp
  c.weights = ml_collections.ConfigDict(dict(
      lr=0.025, lr_min=0.001,  # cosine over the epochs
      lr_epoch_offset=1,       # the reference steps its scheduler first: epoch e uses e + 1
      momentum=0.9, weight_decay=3e-4, grad_clip=5.0,
  ))
  c.alpha = ml_collections.ConfigDict(dict(
      lr=3e-4, b1=0.5, b2=0.999, adam_eps=1e-8,
      weight_decay=1e-3,       # coupled L2, as PyTorch Adam(weight_decay=...)
      init_scale=1e-3,         # alpha = init_scale * N(0, 1)
      order=order or 1,        # 1: first order (every SDARTS run); 2: DARTS's second order,
                               # L_val at the weights after one virtual SGD step (lr = the
                               # weight lr), the reference's --unrolled
      hvp="exact",             # second order's mixed product H v: exact (autodiff) or
                               # finite_difference (the reference's central difference)
      hvp_r=0.01,              # finite_difference: step R = hvp_r / ||v||, as the reference
  ))
  c.perturb = ml_collections.ConfigDict(dict(
      eps_start=0.03, eps_max=0.3,  # eps = start + (max - start) * epoch / epochs
      steps=7,                      # PGD steps (step size 2 eps / steps)
      random_start=True,
  ))
  c.hessian = hessian_config()
  c.eval_every_epochs = 1    # accuracy on the whole alpha half, BN in inference mode
  c.eval_bn = "running"      # its BN statistics: running | clean_batch (re-estimated by one
                             # train-mode pass with clean alpha on the first alpha batch)
  c.log_every_steps = 20
  c.checkpoint_every_epochs = 1
  c.checkpoints_to_keep = 2  # 0 keeps every epoch's (for analyses over checkpoints)
  c.compilation_cache = "~/.cache/sdarts_jax/xla"  # "" disables JAX's persistent cache
  c.step = "auto"            # the compiled step: auto (scan on CPU, static on TPU/GPU), scan
                             # or static (sdarts_jax.accel_step; first order only)
  return c


def pcdarts_search_config(method: str = "darts") -> ml_collections.ConfigDict:
  """PC-DARTS (Xu et al. 2020) as the official SDARTS code searches it
  (sota/cnn/train_search_pcdarts.py, model_search_pcdarts.py): partial channel
  connections with K = 4 and channel shuffle, no edge normalisation, in space s1 (that
  script's default; the published PC-DARTS cells are s1-s4); that script's
  hyper-parameters (batch 64, weight lr 0.025 cosine to 0.001, momentum 0.9, weight decay
  3e-4, alpha lr 3e-4 with decay 1e-3, 50 epochs, no warm-up, half the train split for
  alpha, C=16, 8 cells) are `search_config`'s. method: darts (that script's only method:
  it has no perturbation), or, beyond it, rs, adv (the perturbation and eps ramp of
  sota/cnn/train_search.py on top) or darts2."""
  c = search_config(method)
  c.space = "s1"
  c.model.partial_k = 4
  return c


def dataset_name(arg: str) -> str:
  """The TFDS name of a dataset argument (c10, cifar10, c100, cifar100, svhn)."""
  name = {"c10": "cifar10", "c100": "cifar100", "svhn": "svhn_cropped"}.get(arg, arg)
  if name not in DATASETS:
    raise ValueError(f"unknown dataset argument {arg!r}; known: cifar10, cifar100, svhn")
  return name


def apply_search_args(c: ml_collections.ConfigDict, arg: str | None,
                      allowed: tuple[str, ...] = ("space", "dataset", "order", "smoke")
                      ) -> ml_collections.ConfigDict:
  """Apply the arguments in `allowed` of "space=..", "method=darts|darts2|rs|adv",
  "dataset=..", "order=1|2" (config.alpha.order: 2 is the second-order alpha step), "smoke"
  (a run that finishes in a few minutes on CPU)."""
  args = parse_arg(arg, allowed)
  if "space" in args:
    c.space = args["space"]
  if "method" in args:
    c.method, order = method_and_order(args["method"])
    c.alpha.order = order or c.alpha.order
  if "order" in args:
    if args["order"] not in ("1", "2"):
      raise ValueError(f"config argument order={args['order']!r}; use order=1 or order=2")
    c.alpha.order = int(args["order"])
  if "dataset" in args:
    c.data.name = dataset_name(args["dataset"])
  if "smoke" in args:
    c.epochs = 2
    c.model.channels = 4
    if "layers" in c.model:
      c.model.layers = 3
    else:
      c.model.cells_per_stage = 1
    c.data.batch_size = 16
    c.data.max_examples = 256
    c.log_every_steps = 4
  return c


def demo_config() -> ml_collections.ConfigDict:
  """The `make demo` search: SDARTS-ADV on a small supernet and 1,280 CIFAR-10 images (640
  train the weights, 640 alpha: 20 steps per epoch), 3 epochs; the data source is set by
  `python -m sdarts_jax.demo`."""
  c = search_config("adv")
  c.epochs = 3
  c.model.layers = 5
  c.model.channels = 4
  c.data.batch_size = 32
  c.data.max_examples = 1280
  c.log_every_steps = 5
  return c


def nb201_search_config(method: str) -> ml_collections.ConfigDict:
  """SDARTS search in the NAS-Bench-201 space with the official settings (SmoothDARTS
  nasbench201/train_search.py): 100 epochs, batch 64, C=16, N=5 cells per stage, and the
  optimisers, eps ramp and data split of `search_config`, which the script shares."""
  c = search_config(method)
  c.space = "nb201"
  c.epochs = 100
  c.model = ml_collections.ConfigDict(dict(
      channels=16,           # C of the first stage (2C, 4C after the ResNet reductions)
      cells_per_stage=5,     # N
      bn_momentum=0.9,
      impl="auto",           # convolutions: auto | fused | grouped (see sdarts_jax.ops)
  ))
  c.nb201 = ml_collections.ConfigDict(dict(
      table="",              # NAS-Bench-201 accuracy CSV: query the cell every epoch
      # its sha256, checked on loading: the published table's (nb201.TABLE_SHA256; a
      # table of your own: its digest, or "" for no check; docs/data.md)
      table_sha256="cb5d777ec3368be83c8f9b3aa4d520696051cb0eb8d94b8f85b519f9ea4afa3e",
  ))
  return c



def oneshot1_search_config(method: str, space: str = "1shot1_ss1") -> ml_collections.ConfigDict:
  """SDARTS search in a NAS-Bench-1Shot1 space with the official settings (SmoothDARTS
  optimizers/darts/train_search.py, run as its README runs it, i.e. with the script's
  defaults): search space 1, 100 epochs, batch 96, C=16, 9 cells, lambda_max every epoch
  (Lanczos over all of alpha's dimensions), the one-shot model evaluated with a clean
  batch's BN statistics, and the optimisers, eps ramp, data split and seed of
  `search_config`, which that script shares."""
  c = search_config(method)
  c.space = space            # 1shot1_ss1 | 1shot1_ss2 | 1shot1_ss3
  c.epochs = 100
  c.data.batch_size = 96
  c.model = ml_collections.ConfigDict(dict(
      channels=16,           # C of the first stack (2C, 4C after the max-pool downsamplings)
      layers=9,              # cells, 3 per stack
      bn_momentum=0.003,     # conv-bn-relu BatchNorms: the reference's PyTorch momentum 0.997
      head_bn_momentum=0.9,  # the BatchNorm before the classifier: PyTorch's default 0.1
      impl="auto",           # convolutions: auto | fused | grouped (see sdarts_jax.ops)
  ))
  c.hessian.every_epochs = 1  # the reference computes the Hessian's eigenvalues every epoch
  # The reference's infer follows its Hessian pass, which runs the model in train mode with
  # clean alpha on a validation batch: with BN momentum 0.997 the one-shot model is then
  # evaluated with that batch's statistics, not with those of the last (for SDARTS,
  # perturbed) training step.
  c.eval_bn = "clean_batch"
  c.hessian.lanczos_iters = 35  # >= alpha's size (24, 26, 35): exact, as its dense Hessian
  c.nasbench101 = ml_collections.ConfigDict(dict(
      file="",               # nasbench_only108.tfrecord: score the derived cell every epoch
  ))
  return c
