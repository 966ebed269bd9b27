"""Golden fixture of the NAS-Bench-201 search network from the official PyTorch SmoothDARTS
code, for tests/test_nb201.py.

  /path/to/torch-python tools/golden_nb201.py --ref=/path/to/SmoothDARTS --out=tests/golden

Runs under a Python with PyTorch (CPU is enough) and numpy. --ref is the root of the
official checkout (the folder holding nasbench201/); its code is imported from there, never
copied. tests/golden/nb201.npz was made from the official commit d3dbfed (2021-04-11) with
PyTorch 2.13.0 (CPU).

It builds `nasbench201.model.Network` (C=4, N=2 cells per stage, 10 classes), draws the
affine BatchNorm scales and biases from U(0.5, 1.5) (so that a mix-up of them shows) and
raw alpha ~ N(0, 1), and writes:

  weights/<name>      the official parameters, by their PyTorch names
  x, y                a batch: images [8, 3, 16, 16], labels [8]
  alpha               raw alpha [6, 5]
  logits              train-mode BatchNorm, A = softmax(alpha)
  grad_alpha          gradient of the mean cross-entropy w.r.t. raw alpha
  buffers/<name>      the BatchNorm running statistics after that forward pass
  eval_logits         eval-mode BatchNorm on those statistics
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn as nn

C, N, CLASSES, BATCH, SIZE = 4, 2, 10, 8, 16


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--ref", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  sys.path.insert(0, args.ref)
  from nasbench201.model import Network  # the official code

  torch.manual_seed(0)
  model = Network(C=C, N=N, max_nodes=4, num_classes=CLASSES, criterion=nn.CrossEntropyLoss())
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.dim() == 1 and "classifier" not in name:
        p.uniform_(0.5, 1.5)
    model._arch_parameters.copy_(torch.randn(6, 5))
  x = torch.randn(BATCH, 3, SIZE, SIZE)
  y = torch.randint(0, CLASSES, (BATCH,))
  model.train()
  logits = model(x)
  nn.CrossEntropyLoss()(logits, y).backward()
  model.eval()
  with torch.no_grad():
    eval_logits = model(x)
  out = {f"weights/{k}": v.detach().numpy() for k, v in model.named_parameters()
         if k != "_arch_parameters"}
  out.update({f"buffers/{k}": v.numpy() for k, v in model.named_buffers()
              if "num_batches" not in k})
  out.update(x=x.numpy(), y=y.numpy(), alpha=model._arch_parameters.detach().numpy(),
             logits=logits.detach().numpy(), grad_alpha=model._arch_parameters.grad.numpy(),
             eval_logits=eval_logits.numpy())
  np.savez_compressed(os.path.join(args.out, "nb201.npz"), **out)


if __name__ == "__main__":
  main()
