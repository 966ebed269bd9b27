"""The shared base of the configurations: every number of the method (docs/method.md) that
the variants share, once, and the sizes of small runs.

Each config file in `configs/` starts from `search_config` and sets its variant's numbers
where a reader sees them (the NAS-Bench-201 and 1Shot1 settings, PC-DARTS, the demo);
`get_config(arg)` there takes a comma-separated argument string such as "smoke", "space=s3"
or "dataset=cifar100,smoke" (`--config=configs/cifar10_adv.py:space=s3,smoke`), applied by
`apply_search_args`. `SIZES` holds the small runs side by side: the `smoke` argument's
sizes and the `make demo` search's.
"""
from __future__ import annotations

import importlib.util
import pathlib

import ml_collections
from ml_collections import config_dict

DATASETS = ("cifar10", "cifar100", "svhn_cropped")
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"  # beside the package

# The small runs, side by side: dotted config fields and their values, each set where the
# config has that field (a DARTS-family model has layers, NAS-Bench-201's cells_per_stage).
SIZES = {
    # The config argument `smoke` of a search: a few minutes on CPU.
    "search_smoke": {"epochs": 2, "model.channels": 4, "model.layers": 3,
                     "model.cells_per_stage": 1, "data.batch_size": 16,
                     "data.max_examples": 256, "log_every_steps": 4},
    # The `make demo` search (configs/demo.py): SDARTS-ADV on 1,280 CIFAR-10 images (640
    # train the weights, 640 alpha: 20 steps per epoch), about 10 minutes on 2 CPU cores.
    "demo": {"epochs": 3, "model.layers": 5, "model.channels": 4, "data.batch_size": 32,
             "data.max_examples": 1280, "log_every_steps": 5},
    # The config argument `smoke` of evaluation training (`sdarts_jax.evaluation.defaults`),
    "eval_smoke": {"epochs": 2, "model.layers": 3, "model.channels": 8,
                   "data.batch_size": 32, "data.max_examples": 256, "log_every_steps": 2},
    # and on top of it at ImageNet's 224 px (the auxiliary head needs 7x7 after /32).
    "imagenet_smoke": {"data.batch_size": 16, "optim.warmup_epochs": 1,
                       "optim.linear_tail_epochs": 1, "data.max_examples": 64,
                       "data.workers": 0, "data.threads": 2},
}


def resize(c: ml_collections.ConfigDict, sizes: str) -> ml_collections.ConfigDict:
  """c with the fields of SIZES[sizes] that it has set to their values."""
  for dotted, value in SIZES[sizes].items():
    *parents, field = dotted.split(".")
    node = c
    for name in parents:
      node = node[name]
    if field in node:
      node[field] = value
  return c


def from_file(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of configs/<name>.py, as `--config=configs/<name>.py:<arg>` gives it (the
  checkout's configs/, beside the package as `pip install -e` leaves it)."""
  path = CONFIGS / f"{name}.py"
  if not path.exists():
    raise FileNotFoundError(f"no config file {path} (configs/ of the checkout)")
  spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


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
  """Where the images come from and how they are batched (see `sdarts_jax.data.pipeline`)."""
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


def supernet_config() -> ml_collections.ConfigDict:
  """The DARTS-family supernet at the paper's size (`sdarts_jax.model.supernet.Supernet`)."""
  return ml_collections.ConfigDict(dict(
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
  # Several searches as one program (sdarts_jax.search.seeds): a count N (seeds seed .. seed + N - 1)
  # or a list (--config.seeds=0,5,9); 1 is the one-seed run.
  c.seeds = config_dict.FieldReference(1, field_type=object)
  c.seed_axis = "auto"       # how the seeds share the program: auto (map on CPU, vmap on
                             # TPU/GPU), map (one after the other) or vmap (batched)
  c.epochs = 50
  # What the supernet computes in: float32, or bfloat16 activations and convolutions with
  # float32 parameters, alpha, optimizer states, BatchNorm statistics and logits (for
  # TPUs, docs/tpu.md); the Hessian is measured in float32 either way.
  c.dtype = "float32"
  c.model = supernet_config()
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
                             # or static (sdarts_jax.search.accel_step; first order only)
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
    resize(c, "search_smoke")
  return c
