"""Figures from run directories: lambda_max against epoch, and A as heat maps."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sdarts_jax import metrics, spaces  # noqa: E402


def run_label(workdir: str) -> str:
  config = metrics.read_json(os.path.join(workdir, "config.json"))
  names = {"darts": "DARTS", "rs": "SDARTS-RS", "adv": "SDARTS-ADV"}
  return f"{names.get(config['method'], config['method'])} ({config['space']})"


def trajectories(series: dict[str, list[tuple[int, float]]], out: str,
                 ylabel: str = "lambda_max of the validation-loss Hessian (alpha)") -> None:
  """One line per run: label -> [(epoch, value), ...], saved as a PNG."""
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for label, points in series.items():
    epochs, values = zip(*points)
    ax.plot(epochs, values, marker="o", markersize=3, label=label)
  ax.set_xlabel("epoch")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(out)
  plt.close(fig)


def alpha_heatmaps(A: dict[str, np.ndarray], space: spaces.SearchSpace, title: str,
                   out: str) -> None:
  """softmax(alpha) of both cell types as heat maps (edges x ops), saved as a PNG."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), dpi=120)
  for ax, cell_type in zip(axes, spaces.CELL_TYPES):
    a = np.asarray(A[cell_type])
    im = ax.imshow(a, cmap="viridis", vmin=0, vmax=max(a.max(), 1e-6), aspect="auto")
    ops = space.ops(cell_type)[0] if len(set(space.ops(cell_type))) == 1 else None
    ax.set_xticks(range(a.shape[1]))
    ax.set_xticklabels(ops if ops else [f"op {k}" for k in range(a.shape[1])], rotation=60,
                       ha="right", fontsize=7)
    ax.set_yticks(range(a.shape[0]))
    ax.set_yticklabels([f"{s}->{t + 2}" for s, t in spaces.edge_endpoints()], fontsize=7)
    ax.set_title(cell_type)
    fig.colorbar(im, ax=ax, fraction=0.046)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out)
  plt.close(fig)
