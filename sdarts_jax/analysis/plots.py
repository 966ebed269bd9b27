"""Figures from run directories: values against epoch (lambda_max, benchmark accuracy), and A
as heat maps."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sdarts_jax.model import nb101_cell, spaces  # noqa: E402
from sdarts_jax.run import metrics  # noqa: E402


def run_label(workdir: str) -> str:
  config = metrics.read_json(os.path.join(workdir, "config.json"))
  names = {"darts": "DARTS", "rs": "SDARTS-RS", "adv": "SDARTS-ADV"}
  return f"{names.get(config['method'], config['method'])} ({config['space']})"


LAMBDA_MAX = "lambda_max of the validation-loss Hessian (alpha)"

# One panel of `panels`: (series: run label -> [(epoch, value), ...], y-axis label,
# references: label -> value, drawn as dashed horizontal lines).
Panel = tuple[dict[str, list[tuple[int, float]]], str, dict[str, float]]


def trajectories(series: dict[str, list[tuple[int, float]]], out: str,
                 ylabel: str = LAMBDA_MAX) -> None:
  """One line per run: label -> [(epoch, value), ...], saved as a PNG."""
  panels([(series, ylabel, {})], out)


def panels(content: list[Panel], out: str, title: str = "") -> None:
  """Panels side by side, saved as a PNG: in each, one line per run (a run keeps its colour
  in every panel; a run without points is left out) and one grey horizontal line per
  reference."""
  labels = list(dict.fromkeys(label for series, _, _ in content for label in series))
  fig, axes = plt.subplots(1, len(content), figsize=(6 * len(content), 5), dpi=120,
                           squeeze=False)
  for ax, (series, ylabel, references) in zip(axes[0], content):
    for label, points in series.items():
      if points:
        epochs, values = zip(*points)
        ax.plot(epochs, values, marker="o", markersize=3, label=label,
                color=f"C{labels.index(label)}")
    for k, (label, value) in enumerate(references.items()):
      ax.axhline(value, color="0.45", linewidth=1, linestyle=("--", ":", "-.")[k % 3],
                 label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3,
              frameon=False)  # below the panel: it never hides a point
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(out)
  plt.close(fig)


def alpha_heatmaps(A: dict[str, np.ndarray], space, title: str, out: str) -> None:
  """Every array of the mixing weights A as a heat map (rows x ops), side by side, saved as
  a PNG: the normal and reduction cells of the DARTS spaces ([14, K] each), NAS-Bench-201's
  cell ([6, 5]), or the arrays of a NAS-Bench-1Shot1 space (mixed_op [N, 3], output and
  each node's input weights [1, n]). space: a `spaces.SearchSpace` or `spaces.OneShot1Space`."""
  fig, axes = plt.subplots(1, len(A), figsize=(5 * len(A), 4.5), dpi=120, squeeze=False)
  for ax, name in zip(axes[0], A):
    a = np.asarray(A[name])
    im = ax.imshow(a, cmap="viridis", vmin=0, vmax=max(a.max(), 1e-6), aspect="auto")
    cols, rows = _heatmap_labels(space, name, a.shape)
    ax.set_xticks(range(a.shape[1]))
    ax.set_xticklabels(cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(a.shape[0]))
    ax.set_yticklabels(rows, fontsize=7)
    ax.set_title(name)
    fig.colorbar(im, ax=ax, fraction=0.046)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out)
  plt.close(fig)


def _heatmap_labels(space, name: str, shape: tuple[int, int]) -> tuple[list[str], list[str]]:
  """(column labels: op names, row labels: edges "source->target" or node numbers) of the
  array `name` of A."""
  if isinstance(space, spaces.OneShot1Space):
    if name == "mixed_op":
      return list(nb101_cell.OPS), [f"node {v + 1}" for v in range(shape[0])]
    return [f"{'input' if k == 0 else f'node {k}'}" for k in range(shape[1])], [name]
  ops = space.ops(name)
  cols = list(ops[0]) if len(set(ops)) == 1 else [f"op {k}" for k in range(shape[1])]
  inputs = space.topology.inputs
  return cols, [f"{s}->{t + inputs}" for s, t in space.topology.edges()]
