"""Golden fixtures from the official PyTorch SmoothDARTS code, for tests/test_golden.py.

  /path/to/torch-python tools/golden.py --ref=/path/to/SmoothDARTS --out=tests/golden

The fixtures in tests/golden/ were made from the official commit d3dbfed (2021-04-11) with
PyTorch 2.13.0 (CPU) and jax 0.10.2; see README.md, "Golden tests".

Runs under a Python with PyTorch (CPU is enough), numpy and jax (the JAX step's random
draws are computed here with `sdarts_jax.search.perturb`, imported from this checkout, and fed to
the official code). --ref is the root of the official checkout (the folder holding sota/,
optimizers/ and attacker/); its code is imported from there, never copied.

For each space (s5: the SDARTS default, one op list for every edge; s1: RobustDARTS's
per-edge op lists) it builds the official search supernet (`sota.cnn.model_search.Network`,
3 cells: normal, reduction, reduction whose s0 goes through FactorizedReduce; C=4, 10
classes), gives it raw alpha ~ N(0, 1) (broader than the official 1e-3 * N(0, 1), so that
the mixing weights are far from uniform and a mix-up of the op order shows), moves its
BatchNorm running statistics away from their initial values with one train-mode forward
pass, and writes `<space>.npz` (forward/ in s5, the methods' steps in s1; see FORWARD and
METHODS):

  meta/*              sizes, the JAX config's seed, epochs, steps per epoch, the epoch of
                      the steps, the seed of the data, the official commit
  layout/{params,buffers}     JSON [[name, shape], ...]: the official weights
                      (named_parameters order) and BatchNorm running statistics; every
                      entry below that holds weights or statistics is one flat float32
                      vector in this order (one zip entry instead of hundreds)
  alpha/{normal,reduce}       raw alpha [14, K]
  state/{params,buffers}      the official state_dict
  batch/{train,val}_{x,y}     STEPS batches: images [STEPS, N, 3, H, W] (float, already
                      normalised: no augmentation), labels [STEPS, N]
  forward/*           on the first train batch at A = softmax(alpha): logits with train-mode
                      BatchNorm, the loss, the running statistics after that forward pass
                      (forward/buffers), the gradients of the loss w.r.t. the weights
                      (forward/grad) and w.r.t. A (forward/grad_A/*), then logits with
                      eval-mode BatchNorm on those statistics
  <method>/*          STEPS steps of the official `train()` loop (sota/cnn/train_search.py)
                      from state/ and alpha/, one batch pair per step: per step the alpha
                      after it, the mixing weights the weight step used, the losses, the
                      weight gradient's norm before clipping, the noise fed to the
                      perturbation; eps and lr; after the last step the
                      state_dict ({params,buffers}), SGD's momentum buffers and Adam's
                      moments (s1 only: DARTS, SDARTS-RS, SDARTS-ADV)

How the official code is run: `sota/cnn/train_search.py` is imported (with its default
arguments, inside a temporary directory, since importing it creates an experiment folder
and a log file) and its `train()` is called once per step with a one-batch train queue and a
one-batch validation queue, with the official `Architect` and an SGD set up as its `main()`
does. Shims, all for the environment and none changing the computation: `.cuda()` is an
identity; torchvision, PIL and tensorboard are stubbed when not installed (only imported,
never used here); `utils.accuracy` (bookkeeping, which fails on current PyTorch: `.view` of
a non-contiguous tensor) is replaced by an equivalent; `torch.Tensor.uniform_` is replaced,
during the steps, by a function that hands out the JAX step's uniform noise (the call
`torch.zeros_like(p).uniform_(-eps, eps)` in attacker/perturb.py's `Random_alpha` and
`Linf_PGD_alpha`). Recording (read-only): `model._loss` and `clip_grad_norm_` are
wrapped to record every loss and gradient norm they return, a forward pre-hook records the
mixing weights of the train-mode weight step, and `KinkMonitor` watches max pooling and
PGD's gradients.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
import warnings

import numpy as np

SEED = 2                 # the official --seed default and the JAX search config's seed
LAYERS, CHANNELS, CLASSES = 3, 4, 10
BATCH, IMAGE = 8, 16     # images [BATCH, 3, IMAGE, IMAGE]
STEPS = 2                # search steps per method (momentum and Adam state get exercised)
STEPS_PER_EPOCH = 10     # > STEPS: every step is in epoch EPOCH
EPOCH = 40               # of 50: eps 0.246, large enough that the projection clamps
ALPHA_SCALE = 1.0
# What each space's fixture holds. Every compiled function costs the test 20 s (s1) to
# 60 s (s5) on 2 cores, so: one forward and backward pass in s5, which has every op (and
# every op with stride 2); the search steps in s1, whose losses, momentum and Adam
# moments check its forward and backward passes as well.
FORWARD = ("s5",)
METHODS = {"s5": (), "s1": ("darts", "rs", "adv")}
# Data are redrawn (up to MAX_TRIES times) until the official computation stays this far
# from its non-smooth points, so that float32 rounding differences between PyTorch and
# XLA cannot flip a discrete choice there (see KinkMonitor).
MIN_POOL_GAP = 1e-6      # max pooling: top value minus the next distinct value in a window
MIN_PGD_GRAD = 1e-4      # PGD's sign(grad A): smallest |entry| over the largest
MIN_ACCEPT_GAP = 1e-4    # PGD's acceptance test: |clean - attacked| / clean
MAX_TRIES = 50
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- environment shims

def _stub(name: str, **attrs) -> None:
  module = types.ModuleType(name)
  module.__dict__.update(attrs)
  sys.modules[name] = module
  parent, _, child = name.rpartition(".")
  if parent in sys.modules:
    setattr(sys.modules[parent], child, module)


def _stub_missing() -> None:
  """Stand-ins for packages the official code imports but this script never uses."""
  try:
    import torchvision  # noqa: F401
  except ImportError:
    _stub("torchvision")
    _stub("torchvision.transforms")
    _stub("torchvision.datasets", VisionDataset=object)
    _stub("torchvision.datasets.utils")
  try:
    import PIL.Image  # noqa: F401
  except ImportError:
    _stub("PIL")
    _stub("PIL.Image")
  try:
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401
  except ImportError:
    class SummaryWriter:
      def __init__(self, *args, **kwargs):
        pass

      def add_scalar(self, *args, **kwargs):
        pass

      def close(self):
        pass

    _stub("torch.utils.tensorboard", SummaryWriter=SummaryWriter)


def _accuracy(output, target, topk=(1,)):
  """Top-k accuracy in percent, one tensor per k (what the official utils.accuracy returns)."""
  pred = output.topk(max(topk), 1, True, True)[1]
  hit = pred == target[:, None]
  return [hit[:, :k].any(1).float().mean() * 100.0 for k in topk]


def import_official(ref: str):
  """The official train_search module (and so its Network, Architect, perturbations)."""
  import torch

  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  torch.nn.Module.cuda = lambda self, *args, **kwargs: self
  _stub_missing()
  sys.path.insert(0, ref)
  cwd, argv = os.getcwd(), sys.argv
  tmp = tempfile.mkdtemp(prefix="sdarts_golden_")
  os.makedirs(os.path.join(tmp, "a", "b"))
  try:
    # Importing train_search parses sys.argv and makes an experiment folder at ../../.
    os.chdir(os.path.join(tmp, "a", "b"))
    sys.argv = ["train_search.py"]
    with contextlib.redirect_stdout(io.StringIO()):  # "Experiment dir : ..."
      import sota.cnn.train_search as train_search
  finally:
    os.chdir(cwd)
    sys.argv = argv
  train_search.utils.accuracy = _accuracy
  root = logging.getLogger()
  root.setLevel(logging.WARNING)  # train() logs every call's first step
  for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
    root.removeHandler(handler)  # the log file in the experiment folder
    handler.close()
  shutil.rmtree(tmp)
  return train_search


# ---------------------------------------------------------------- the JAX step's draws

def jax_uniform_noise(step: int, num_ops: int, eps: float) -> list[np.ndarray]:
  """The U(-eps, eps) noise the JAX step draws at `step` (RS noise, PGD random start):
  key = fold_in(PRNGKey(seed), step), split in 4, the third for the perturbation, as
  `sdarts_jax.search.scan_step.make_step` does; then `perturb.uniform_noise`. [normal, reduce]."""
  import jax
  import jax.numpy as jnp
  from sdarts_jax.search import perturb

  key = jax.random.fold_in(jax.random.PRNGKey(SEED), step)
  k_perturb = jax.random.split(key, 4)[2]
  shape = (14, num_ops)
  noise = perturb.uniform_noise(k_perturb, {"normal": jnp.zeros(shape), "reduce": jnp.zeros(shape)},
                                eps)
  return [np.asarray(noise["normal"]), np.asarray(noise["reduce"])]


@contextlib.contextmanager
def feeding_uniform(draws: list[np.ndarray], eps: float):
  """torch.Tensor.uniform_(-eps, eps) hands out `draws` in order (and nothing else)."""
  import torch

  original = torch.Tensor.uniform_
  queue = list(draws)

  def uniform_(self, a=0.0, b=1.0, *, generator=None):
    assert queue, "the official code drew more uniform noise than the JAX step"
    want = queue.pop(0)
    assert np.isclose(a, -eps) and np.isclose(b, eps), (a, b, eps)
    assert tuple(self.shape) == want.shape, (self.shape, want.shape)
    with torch.no_grad():
      return self.copy_(torch.tensor(want))

  torch.Tensor.uniform_ = uniform_
  try:
    yield
  finally:
    torch.Tensor.uniform_ = original
  assert not queue, f"{len(queue)} noise arrays were not used"


# ---------------------------------------------------------------- distance to kinks

class KinkMonitor:
  """How close the official computation comes to its non-smooth points while watching.

  A gradient through max pooling goes to the window's largest entry; when two entries are
  within float32 rounding of each other, PyTorch and XLA may pick different ones (found
  here: a gap of 1.3e-7 moved a gradient by 3e-3 of its scale, and which entry XLA picked
  changed with its optimisation level and device count). PGD's sign(grad A) and its
  acceptance test (clean > attacked) are discrete in the same way. The monitor records
  the smallest max-pooling gap (top entry minus the next distinct one: equal entries are
  dead pixels, ReLU(x) = 0 in every channel, whose gradient never reaches a weight), the
  smallest |grad A| of a PGD step relative to its largest entry, and is read by the caller.
  """

  def __init__(self, model):
    import torch

    self.watching = False
    self.pool_gap = self.pgd_grad = float("inf")
    for module in model.modules():
      if isinstance(module, torch.nn.MaxPool2d):
        module.register_forward_hook(self._pool)
    for p in model.arch_parameters():
      p.register_hook(lambda g: self._arch_grad(model, g))

  def _pool(self, module, inputs, output):
    import torch
    import torch.nn.functional as F

    if not (self.watching and torch.is_grad_enabled()):
      return
    x = inputs[0].detach()
    n, c = x.shape[:2]
    windows = F.unfold(F.pad(x, (1, 1, 1, 1), value=-float("inf")), 3, stride=module.stride)
    windows = windows.view(n, c, 9, -1)
    top = windows.max(2, keepdim=True).values
    second = torch.where(windows < top, windows, -float("inf")).max(2).values
    self.pool_gap = min(self.pool_gap, float((top[:, :, 0] - second).min()))

  def _arch_grad(self, model, g):
    if self.watching and not model.training:  # PGD runs the model in eval mode
      g = g.abs()
      self.pgd_grad = min(self.pgd_grad, float(g.min() / g.max()))

  def too_close(self) -> str:
    if self.pool_gap < MIN_POOL_GAP:
      return f"a max-pooling window's top two entries are {self.pool_gap:.1e} apart"
    if self.pgd_grad < MIN_PGD_GRAD:
      return f"an entry of a PGD gradient is {self.pgd_grad:.1e} of the largest"
    return ""


# ---------------------------------------------------------------- fixtures

def numpy_state(module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()
          if not k.endswith("num_batches_tracked")}


def layouts(model) -> dict[str, list]:
  """[[name, shape], ...] of the weights and of the BatchNorm running statistics."""
  return {"params": [[k, list(p.shape)] for k, p in model.named_parameters()],
          "buffers": [[k, list(v.shape)] for k, v in numpy_state(model).items()
                      if "running" in k]}


def pack(tensors: dict[str, np.ndarray], layout: list) -> np.ndarray:
  """The tensors named in `layout`, flattened and concatenated in its order."""
  return np.concatenate([np.asarray(tensors[name], np.float32).ravel() for name, _ in layout])


def unpack(fx: dict, flat: np.ndarray, kind: str) -> dict[str, np.ndarray]:
  """A flat vector of the fixture's `kind` ("params" or "buffers") layout -> {name: array}:
  `pack`'s inverse (tests/test_golden.py reads the fixtures with its own copy, so that the
  tests need nothing from tools/)."""
  out, offset = {}, 0
  for name, shape in json.loads(str(fx[f"layout/{kind}"])):
    size = int(np.prod(shape))
    out[name] = flat[offset:offset + size].reshape(shape)
    offset += size
  assert offset == flat.size
  return out


def official_checkout(ref_arg: str, marker: str, ref_commit: str) -> tuple[str, str]:
  """(the official checkout's absolute root, its commit): ref_commit, or --ref's git HEAD.
  Exits with one error line when `marker` (a path inside the checkout) is not there."""
  ref = os.path.abspath(ref_arg)
  if not os.path.isfile(os.path.join(ref, marker)):
    sys.exit(f"error: --ref={ref_arg}: no {marker} there; give the root of the official "
             "SmoothDARTS checkout")
  return ref, ref_commit or subprocess.run(
      ["git", "-C", ref, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def build(ts, space: str, start: dict | None, alpha: list[np.ndarray]):
  """The official supernet with `alpha` and (if given) the state_dict `start`."""
  import torch

  torch.manual_seed(SEED)
  model = ts.Network(CHANNELS, CLASSES, LAYERS, torch.nn.CrossEntropyLoss(),
                     ts.spaces_dict[space])
  if start is not None:
    model.load_state_dict({k: torch.from_numpy(v) for k, v in start.items()}, strict=False)
  with torch.no_grad():
    for p, a in zip(model.arch_parameters(), alpha):
      p.copy_(torch.from_numpy(a))
  return model


def forward_fixture(model, monitor: KinkMonitor, x, y) -> dict[str, np.ndarray]:
  """Train-mode logits, loss, statistics and gradients at A = softmax(alpha); eval logits."""
  import torch

  out = {}
  model.train()
  model.zero_grad()
  model.softmax_arch_parameters()
  monitor.watching = True
  logits = model(x, updateType="weight")
  monitor.watching = False
  loss = model._criterion(logits, y)
  loss.backward()
  out["forward/logits_train"] = logits.detach().numpy()
  out["forward/loss"] = np.float32(loss.item())
  out["forward/A/normal"], out["forward/A/reduce"] = (
      p.detach().numpy().copy() for p in model.arch_parameters())
  out["forward/grad_A/normal"], out["forward/grad_A/reduce"] = (
      p.grad.numpy().copy() for p in model.arch_parameters())
  layout = layouts(model)
  out["forward/grad"] = pack({k: p.grad.numpy() for k, p in model.named_parameters()},
                             layout["params"])
  out["forward/buffers"] = pack(numpy_state(model), layout["buffers"])
  model.eval()
  with torch.no_grad():
    out["forward/logits_eval"] = model(x, updateType="weight").numpy()
  model.restore_arch_parameters()
  for p in model.arch_parameters():
    p.grad = None
  return out


def run_method(ts, space: str, method: str, start, alpha, batches) -> tuple[dict, str]:
  """STEPS steps of the official train() loop: (the fixture entries of `method`, "" or why
  the data came too close to a non-smooth point)."""
  import torch

  args = ts.args
  model = build(ts, space, start, alpha)
  monitor = KinkMonitor(model)
  # As the official main() sets them up.
  optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                              weight_decay=args.weight_decay)
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(args.epochs),
                                                         eta_min=args.learning_rate_min)
  architect = ts.Architect(model, args)
  for _ in range(EPOCH + 1):  # main() steps the scheduler at the start of every epoch
    scheduler.step()
  lr = optimizer.param_groups[0]["lr"]
  eps = 0.03 + (args.epsilon_alpha - 0.03) * EPOCH / args.epochs  # main()'s epsilon_alpha
  perturb_alpha = {"darts": None, "rs": ts.Random_alpha, "adv": ts.Linf_PGD_alpha}[method]

  losses, weight_step_A = [], []

  def recording_loss(input, target, updateType="alpha"):
    loss = type(model)._loss(model, input, target, updateType)
    losses.append(loss.item())
    return loss

  def record_weight_step(module, hook_args, kwargs):
    if module.training and kwargs.get("updateType") == "weight":
      weight_step_A.append([p.detach().numpy().copy() for p in module.arch_parameters()])

  model._loss = recording_loss
  model.register_forward_pre_hook(record_weight_step, with_kwargs=True)
  grad_norms = []
  clip_grad_norm = torch.nn.utils.clip_grad_norm_

  def recording_clip(*args, **kwargs):
    norm = clip_grad_norm(*args, **kwargs)
    grad_norms.append(float(norm))
    return norm

  rows = {k: [] for k in ("val_loss", "train_loss", "grad_norm", "alpha/normal", "alpha/reduce",
                          "A_weights/normal", "A_weights/reduce", "noise/normal",
                          "noise/reduce", "clean_loss", "attacked_loss", "pgd_loss",
                          "attack_kept")}
  num_ops = alpha[0].shape[1]
  why = ""
  for t in range(STEPS):
    x, y, xv, yv = (torch.from_numpy(batches[k][t]) for k in ("train_x", "train_y", "val_x",
                                                               "val_y"))
    losses.clear()
    weight_step_A.clear()
    draws = jax_uniform_noise(EPOCH * STEPS_PER_EPOCH + t, num_ops, eps)
    feed = feeding_uniform(draws, eps) if perturb_alpha else contextlib.nullcontext()
    monitor.watching = True
    torch.nn.utils.clip_grad_norm_ = recording_clip
    try:
      with feed:
        _, train_loss = ts.train([(x, y)], [(xv, yv)], model, architect, model._criterion,
                                 optimizer, lr, perturb_alpha, eps)
    finally:
      torch.nn.utils.clip_grad_norm_ = clip_grad_norm
    monitor.watching = False
    assert len(weight_step_A) == 1
    rows["val_loss"].append(losses[0])
    rows["train_loss"].append(float(train_loss))
    rows["grad_norm"].append(grad_norms[-1])
    rows["alpha/normal"].append(model.alphas_normal.detach().numpy().copy())
    rows["alpha/reduce"].append(model.alphas_reduce.detach().numpy().copy())
    rows["A_weights/normal"].append(weight_step_A[0][0])
    rows["A_weights/reduce"].append(weight_step_A[0][1])
    if perturb_alpha:
      rows["noise/normal"].append(draws[0])
      rows["noise/reduce"].append(draws[1])
    if method == "adv":
      # model._loss calls: the alpha step's, the clean loss, 7 PGD steps, the attacked loss.
      assert len(losses) == 10, len(losses)
      clean, attacked = losses[1], losses[-1]
      rows["clean_loss"].append(clean)
      rows["pgd_loss"].append(losses[2:-1])
      rows["attacked_loss"].append(attacked)
      rows["attack_kept"].append(not clean > attacked)
      if abs(clean - attacked) < MIN_ACCEPT_GAP * clean:
        why = why or f"PGD's clean and attacked losses are {abs(clean - attacked):.1e} apart"
  why = why or monitor.too_close()
  out = {f"{method}/{k}": np.asarray(v, bool if k == "attack_kept" else np.float32)
         for k, v in rows.items() if v}
  out[f"{method}/eps"] = np.float32(eps)
  out[f"{method}/lr"] = np.float32(lr)
  layout = layouts(model)
  state = numpy_state(model)
  out[f"{method}/params"] = pack(state, layout["params"])
  out[f"{method}/buffers"] = pack(state, layout["buffers"])
  out[f"{method}/momentum"] = pack(
      {k: optimizer.state[p]["momentum_buffer"].numpy() for k, p in model.named_parameters()},
      layout["params"])
  for cell_type, p in zip(("normal", "reduce"), model.arch_parameters()):
    adam = architect.optimizer.state[p]
    out[f"{method}/adam/exp_avg/{cell_type}"] = adam["exp_avg"].numpy().copy()
    out[f"{method}/adam/exp_avg_sq/{cell_type}"] = adam["exp_avg_sq"].numpy().copy()
    out[f"{method}/adam/step"] = np.int32(float(adam["step"]))
  return out, why


def space_fixture(ts, space: str, data_seed: int) -> tuple[dict[str, np.ndarray], str]:
  """The fixture of `space` from data drawn with `data_seed`: (entries, "" or why the data
  came too close to a non-smooth point)."""
  import torch

  num_ops = len(ts.spaces_dict[space]["primitives_normal"][0])
  rng = np.random.default_rng(data_seed)
  alpha = [ALPHA_SCALE * rng.standard_normal((14, num_ops)).astype(np.float32)
           for _ in range(2)]
  images = lambda: rng.standard_normal((STEPS, BATCH, 3, IMAGE, IMAGE)).astype(np.float32)
  labels = lambda: rng.integers(0, CLASSES, (STEPS, BATCH)).astype(np.int64)
  batches = {"train_x": images(), "train_y": labels(), "val_x": images(), "val_y": labels()}
  warm_up = torch.from_numpy(rng.standard_normal((BATCH, 3, IMAGE, IMAGE)).astype(np.float32))

  model = build(ts, space, None, alpha)
  monitor = KinkMonitor(model)
  model.train()
  with torch.no_grad():  # running statistics away from (0, 1), so eval mode is non-trivial
    model(warm_up)
  start = numpy_state(model)
  layout = layouts(model)

  out = {"meta/layers": np.int32(LAYERS), "meta/channels": np.int32(CHANNELS),
         "meta/classes": np.int32(CLASSES), "meta/seed": np.int32(SEED),
         "meta/epochs": np.int32(ts.args.epochs), "meta/steps_per_epoch": np.int32(STEPS_PER_EPOCH),
         "meta/epoch": np.int32(EPOCH), "meta/data_seed": np.int32(data_seed),
         "layout/params": np.str_(json.dumps(layout["params"])),
         "layout/buffers": np.str_(json.dumps(layout["buffers"])),
         "alpha/normal": alpha[0], "alpha/reduce": alpha[1],
         "state/params": pack(start, layout["params"]),
         "state/buffers": pack(start, layout["buffers"])}
  out.update({f"batch/{k}": v for k, v in batches.items()})
  if space in FORWARD:
    out.update(forward_fixture(model, monitor, torch.from_numpy(batches["train_x"][0]),
                               torch.from_numpy(batches["train_y"][0])))
  why = monitor.too_close()
  for method in METHODS[space]:
    if why:
      break
    entries, why = run_method(ts, space, method, start, alpha, batches)
    out.update(entries)
  return out, why


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ref", required=True, help="root of the official SmoothDARTS checkout")
  p.add_argument("--out", default=os.path.join(ROOT, "tests", "golden"))
  p.add_argument("--ref-commit", default="",
                 help="the official commit, recorded in the fixtures (default: --ref's git HEAD)")
  args = p.parse_args()
  ref, commit = official_checkout(args.ref, "sota/cnn/train_search.py", args.ref_commit)
  sys.path.insert(0, ROOT)  # sdarts_jax, for the JAX step's random draws
  import torch

  # Warnings of the official code's own making (its scheduler order, a deprecated add_).
  for message in ("Detected call of `lr_scheduler.step()`", "This overload of add_ is deprecated"):
    warnings.filterwarnings("ignore", message=re.escape(message))
  torch.set_num_threads(1)  # one thread: the same summation order on every machine
  ts = import_official(ref)
  os.makedirs(args.out, exist_ok=True)
  for index, space in enumerate(METHODS):
    for attempt in range(MAX_TRIES):
      data_seed = 1000 * index + attempt
      fixture, why = space_fixture(ts, space, data_seed)
      if not why:
        break
      print(f"{space}: data seed {data_seed}: {why}; drawing again", flush=True)
    else:
      sys.exit(f"error: {space}: no data far enough from the non-smooth points in "
               f"{MAX_TRIES} draws")
    fixture["meta/ref_commit"] = np.str_(commit)
    path = os.path.join(args.out, f"{space}.npz")
    np.savez_compressed(path, **fixture)
    print(f"{path}: {os.path.getsize(path) / 1e3:.0f} kB (data seed {data_seed})", flush=True)


if __name__ == "__main__":
  main()
