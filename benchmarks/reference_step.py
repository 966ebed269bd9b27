"""The official PyTorch SDARTS search step, timed at the sizes of search_step.py.

  .venv-ref/bin/python benchmarks/reference_step.py --ref=path/to/SDARTS --methods=darts,rs,adv

Runs under a PyTorch CPU environment (`make bench-reference` makes one, `.venv-ref`), not
the project's, and imports the official code from --ref, the root of its checkout (the
folder holding sota/, optimizers/ and attacker/); nothing of it is copied here. It builds
`sota.cnn.model_search.Network` on `sota.cnn.spaces.spaces_dict[space]` with the official
optimisers (SGD lr 0.025, momentum 0.9, weight decay 3e-4; `optimizers.darts.architect.
Architect`: Adam lr 3e-4, weight decay 1e-3, first order, or unrolled for darts2) and times
the body of the loop of `train()` in sota/cnn/train_search.py, calling the official
functions: `architect.step` on the validation batch, `model.softmax_arch_parameters`, the
perturbation of attacker/perturb.py (darts, darts2: none, rs: `Random_alpha`, adv:
`Linf_PGD_alpha`, 7 steps) at the first epoch's eps (0.03), the weight step with
`clip_grad_norm_(.., 5)`, `model.restore_arch_parameters`.

Left out of the timing, on purpose: the data loader (the official loop decodes and augments
on the CPU in the training process and builds a new iterator over the validation sampler
every step; here the batches are random normalised tensors, made before the clock starts)
and the accuracy bookkeeping (`utils.accuracy` fails on current PyTorch: `.view` of a
non-contiguous tensor). The official `.cuda()` calls are made identities, and torchvision
and PIL (imported by the official utils for data loading only) are replaced by stand-ins.

Each method runs in its own process; one JSON line per method: s_per_step (median of
--steps steps after one warm-up step), img_per_s, peak_rss_gib (that process's maximum
RSS), the torch version and its thread count.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import types

EPS_FIRST_EPOCH = 0.03  # train_search.py: 0.03 + (epsilon_alpha - 0.03) * epoch / epochs
OFFICIAL_ARGS = dict(  # the defaults of sota/cnn/train_search.py that the step reads
    learning_rate=0.025, momentum=0.9, weight_decay=3e-4, grad_clip=5.0,
    arch_learning_rate=3e-4, arch_weight_decay=1e-3, unrolled=False, seed=2)


def cpu_only(torch) -> None:
  """Make the official code's `.cuda()` calls identities, so that it runs on the CPU."""
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  torch.nn.Module.cuda = lambda self, *args, **kwargs: self


def without_data_libraries() -> None:
  """Stand-ins for torchvision and PIL, which optimizers/darts/utils.py imports for its data
  pipeline (not timed here): the CPU build of torch is then all the official step needs
  (PyPI's torchvision is built against the CUDA build of torch and fails to load beside the
  CPU one)."""
  stand_ins = {name: types.ModuleType(name) for name in
               ("torchvision", "torchvision.transforms", "torchvision.datasets",
                "torchvision.datasets.utils", "PIL", "PIL.Image")}
  stand_ins["torchvision.datasets"].VisionDataset = type("VisionDataset", (), {})
  for name, module in stand_ins.items():
    parent, _, child = name.rpartition(".")
    if parent:
      setattr(stand_ins[parent], child, module)
  sys.modules.update(stand_ins)


def measure(ref: str, method: str, layers: int, channels: int, batch: int, space: str,
            steps: int, threads: int) -> dict:
  import numpy as np
  import torch
  from torch import nn

  torch.set_num_threads(threads)
  cpu_only(torch)
  without_data_libraries()
  sys.path.insert(0, ref)
  from attacker.perturb import Linf_PGD_alpha, Random_alpha
  from optimizers.darts.architect import Architect
  from sota.cnn.model_search import Network
  from sota.cnn.spaces import spaces_dict

  if space not in spaces_dict:
    sys.exit(f"error: --space={space}: the official code has {sorted(spaces_dict)}")
  perturb_alpha = {"darts": None, "darts2": None, "rs": Random_alpha,
                   "adv": Linf_PGD_alpha}[method]
  args = types.SimpleNamespace(**dict(OFFICIAL_ARGS, unrolled=method == "darts2"))
  torch.manual_seed(args.seed)
  criterion = nn.CrossEntropyLoss().cuda()
  model = Network(channels, 10, layers, criterion, spaces_dict[space]).cuda()
  optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                              weight_decay=args.weight_decay)
  architect = Architect(model, args)
  lr = args.learning_rate  # read by architect.step only when unrolled

  def batch_of():
    return torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

  def train_step(input, target, input_search, target_search) -> float:
    """The body of the loop of train() in sota/cnn/train_search.py, less data and meters."""
    model.train()
    architect.step(input, target, input_search, target_search, lr, optimizer,
                   unrolled=args.unrolled)
    optimizer.zero_grad()
    architect.optimizer.zero_grad()
    model.softmax_arch_parameters()
    if perturb_alpha:
      perturb_alpha(model, input, target, EPS_FIRST_EPOCH)
      optimizer.zero_grad()
      architect.optimizer.zero_grad()
    logits = model(input, updateType="weight")
    loss = criterion(logits, target)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()
    model.restore_arch_parameters()
    return float(loss)

  loss = train_step(*batch_of(), *batch_of())  # warm-up
  times = []
  for _ in range(steps):
    b = batch_of() + batch_of()
    t = time.time()
    loss = train_step(*b)
    times.append(time.time() - t)
  s_per_step = float(np.median(times))
  return {"impl": "official", "method": method, "layers": layers, "channels": channels,
          "batch": batch, "space": space, "torch": torch.__version__,
          "threads": torch.get_num_threads(), "s_per_step": round(s_per_step, 3),
          "img_per_s": round(batch / s_per_step, 1),
          "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
          "finite": bool(np.isfinite(loss))}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ref", required=True, help="root of the official SDARTS checkout")
  p.add_argument("--methods", default="darts,rs,adv")
  p.add_argument("--layers", type=int, default=5)
  p.add_argument("--channels", type=int, default=8)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--space", default="s5")
  p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
  p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                 help="torch.set_num_threads (default: the cores this process may use)")
  p.add_argument("--one", default="", help=argparse.SUPPRESS)  # child process mode
  args = p.parse_args()
  ref = os.path.abspath(args.ref)
  if not os.path.isfile(os.path.join(ref, "sota", "cnn", "model_search.py")):
    sys.exit(f"error: --ref={args.ref}: no sota/cnn/model_search.py there; give the root of "
             "the official SDARTS checkout")
  if args.steps < 1:
    sys.exit("error: --steps must be at least 1")
  methods = args.methods.split(",")
  if unknown := set(methods) - {"darts", "darts2", "rs", "adv"}:
    sys.exit(f"error: --methods: unknown {sorted(unknown)}; expected darts, darts2, rs, adv")
  if args.one:
    print(json.dumps(measure(ref, args.one, args.layers, args.channels, args.batch, args.space,
                             args.steps, args.threads)))
    return
  for method in methods:
    cmd = [sys.executable, os.path.abspath(__file__), f"--one={method}", f"--ref={ref}",
           f"--layers={args.layers}", f"--channels={args.channels}", f"--batch={args.batch}",
           f"--space={args.space}", f"--steps={args.steps}", f"--threads={args.threads}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
      sys.exit(f"official {method} failed:\n{out.stderr[-3000:]}")
    print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
  main()
