"""Golden fixture of DARTS's second-order (unrolled) alpha step, from the official PyTorch
SmoothDARTS code, for tests/test_golden.py::test_official_unrolled_alpha_step.

  /path/to/torch-python tools/golden_unrolled.py --ref=/path/to/SmoothDARTS [--golden=tests/golden]

Needs PyTorch (CPU) and numpy only. It reads the s1 fixture that tools/golden.py made
(tests/golden/s1.npz: the official s1 supernet's weights, BatchNorm statistics, alpha and
batches) and writes tests/golden/s1_unrolled.npz, made from the official commit d3dbfed
with PyTorch 2.13.0 (CPU):

  unrolled/lr                 eta, the unrolled step's learning rate: the SGD learning rate
                              in use at the fixture's epoch (what the JAX step uses as xi;
                              the official scripts pass `scheduler.get_lr()[0]`, a different
                              value on PyTorch >= 1.4, see docs/deviations.md)
  unrolled/val_loss           L_val(w') at the unrolled weights w'
  unrolled/grad/{normal,reduce}       the official alpha gradient (raw alpha, before Adam):
                              grad_alpha L_val(w') - eta * (the central difference of
                              grad_alpha L_train at w +- R v, R = 0.01 / ||v||)
  unrolled/alpha/{normal,reduce}      alpha after the official Adam step on it
  unrolled/adam/exp_avg{,_sq}/{normal,reduce}   Adam's moments after that step
  unrolled/pool_gap           the smallest max-pooling gap the step's passes met
                              (tools/golden.py, KinkMonitor)
  meta/ref_commit

How: the official supernet (`sota.cnn.model_search.Network`) from s1.npz's state/ and
alpha/, train mode; an SGD set up as the official main() does, whose momentum buffers are
s1.npz's darts/momentum (the buffers after two official DARTS steps), so that the unrolled
weights w' = w - eta (momentum * buffer + grad_w L_train + wd w) use them; then one
official `Architect.step(x, y, x_val, y_val, eta, optimizer, unrolled=True)` on the first
batch pair. Its code is imported from --ref (with tools/golden.py's shims), never copied.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden  # noqa: E402  (tools/golden.py: the official import, its shims, build, pack)

R = 1e-2  # the official _hessian_vector_product's r


def unrolled_fixture(ts, fx: dict) -> dict[str, np.ndarray]:
  import torch

  args = ts.args
  start = {**golden.unpack(fx, fx["state/params"], "params"),
           **golden.unpack(fx, fx["state/buffers"], "buffers")}
  alpha = [fx["alpha/normal"], fx["alpha/reduce"]]
  model = golden.build(ts, "s1", start, alpha)
  monitor = golden.KinkMonitor(model)
  optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                              weight_decay=args.weight_decay)
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(args.epochs),
                                                         eta_min=args.learning_rate_min)
  for _ in range(int(fx["meta/epoch"]) + 1):  # as tools/golden.py: main()'s order
    scheduler.step()
  eta = optimizer.param_groups[0]["lr"]
  momentum = golden.unpack(fx, fx["darts/momentum"], "params")
  for name, p in model.named_parameters():
    optimizer.state[p]["momentum_buffer"] = torch.from_numpy(momentum[name].copy())
  architect = ts.Architect(model, args)
  val_losses = []
  val_loss = architect._val_loss

  def recording_val_loss(model, input, target):
    loss = val_loss(model, input, target)
    val_losses.append(loss.item())
    return loss

  architect._val_loss = recording_val_loss
  x, y, xv, yv = (torch.from_numpy(fx[f"batch/{k}"][0]) for k in ("train_x", "train_y",
                                                                   "val_x", "val_y"))
  model.train()
  monitor.watching = True
  architect.step(x, y, xv, yv, eta, optimizer, unrolled=True)
  monitor.watching = False
  assert len(val_losses) == 1, val_losses
  out = {"unrolled/lr": np.float32(eta), "unrolled/val_loss": np.float32(val_losses[0]),
         "unrolled/pool_gap": np.float32(monitor.pool_gap)}
  for cell_type, p in zip(("normal", "reduce"), model.arch_parameters()):
    out[f"unrolled/grad/{cell_type}"] = p.grad.detach().numpy().copy()
    out[f"unrolled/alpha/{cell_type}"] = p.detach().numpy().copy()
    adam = architect.optimizer.state[p]
    out[f"unrolled/adam/exp_avg/{cell_type}"] = adam["exp_avg"].numpy().copy()
    out[f"unrolled/adam/exp_avg_sq/{cell_type}"] = adam["exp_avg_sq"].numpy().copy()
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ref", required=True, help="root of the official SmoothDARTS checkout")
  p.add_argument("--golden", default=os.path.join(golden.ROOT, "tests", "golden"),
                 help="the folder holding s1.npz; s1_unrolled.npz is written there")
  p.add_argument("--ref-commit", default="",
                 help="the official commit, recorded in the fixture (default: --ref's git HEAD)")
  args = p.parse_args()
  ref, commit = golden.official_checkout(args.ref, "optimizers/darts/architect.py",
                                         args.ref_commit)
  import torch

  # Warnings of the official code's own making (its scheduler order, deprecated overloads).
  for message in ("Detected call of `lr_scheduler.step()`", "This overload of"):
    warnings.filterwarnings("ignore", message=re.escape(message))
  torch.set_num_threads(1)  # one thread: the same summation order on every machine
  ts = golden.import_official(ref)
  with np.load(os.path.join(args.golden, "s1.npz")) as f:
    fx = {k: f[k] for k in f.files}
  out = unrolled_fixture(ts, fx)
  if out["unrolled/pool_gap"] < golden.MIN_POOL_GAP:
    sys.exit(f"error: a max-pooling window's top two entries are {out['unrolled/pool_gap']:.1e} "
             "apart: too close to a kink for a float32 comparison")
  out["meta/ref_commit"] = np.str_(commit)
  path = os.path.join(args.golden, "s1_unrolled.npz")
  np.savez_compressed(path, **out)
  print(f"{path}: {os.path.getsize(path) / 1e3:.1f} kB (eta {out['unrolled/lr']:.6g}, pool gap "
        f"{out['unrolled/pool_gap']:.1e})", flush=True)


if __name__ == "__main__":
  main()
