"""Searches of several seeds, aggregated: per method the final cells of every seed, and per
epoch the mean ± standard deviation over the seeds of what the runs measured, as Markdown
tables, a JSON and a figure with bands.

  python -m sdarts_jax.analysis.seeds runs/nb201/darts runs/nb201/rs runs/nb201/adv \
      --out=docs/nb201_seeds_cpu.png --table=../shared/data/nb201/nats_bench.csv

Each WORKDIR is a search (`python -m sdarts_jax.main`), usually one of several seeds
(config.seeds: its seeds' outputs in WORKDIR/seed_<seed>/); a one-seed workdir counts as one
seed, and workdirs of the same method and space are pooled. What is aggregated, when the
runs have it: NAS-Bench-201's test accuracy of the derived cell (the runs' own queries, or
--table's) and the mean mixing weight of skip_connect and none (DARTS's collapse);
NAS-Bench-1Shot1's one-shot validation error and test regret; the supernet's accuracy on the
alpha half (other spaces); lambda_max. The standard deviation is the sample one (ddof 1)
over the seeds that reached the epoch; a frozen seed (`sdarts_jax.search.seeds`) counts up to its
last epoch.
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np
from absl import app, flags

from sdarts_jax.model import spaces
from sdarts_jax.run import metrics
from sdarts_jax.search import seeds
from sdarts_jax.tables import nb201
from sdarts_jax.analysis import figure, oneshot1_trajectory, plots, trajectory

# (key of an epoch row, name in tables and figures), in the order shown.
QUANTITIES = {
    **{f"nb201_{d}": f"{trajectory.DATASET_NAMES[d]} test accuracy of the derived cell (%)"
       for d in nb201.DATASETS},
    "A_skip_connect": "mean mixing weight of skip_connect",
    "A_none": "mean mixing weight of none",
    "validation_error": "one-shot validation error (%)",
    "nb101_test_regret": "NAS-Bench-101 test regret (%)",
    "eval_accuracy": "supernet accuracy on the alpha half",
    "lambda_max": "lambda_max of the Hessian of L_val (alpha)",
}


def seed_folders(workdir: str) -> dict[int, str]:
  """seed -> the folder of its outputs, from workdir/config.json."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"{workdir} is not a search workdir (no config.json)")
  config = ml_collections.ConfigDict(metrics.read_json(path))
  if config.get("seeds", 1) == 1:
    return {config.seed: workdir}
  return {s: seeds.seed_dir(workdir, s) for s in seeds.seed_list(config)}


def read_seed(folder: str, space: str, table: nb201.Table | None) -> list[dict]:
  """One seed's epochs, oldest first: the rows of `trajectory.read_run` (NAS-Bench-201),
  `oneshot1_trajectory.read_run` (1Shot1) or, in other spaces, epoch, genotype,
  eval_accuracy and lambda_max."""
  kind = spaces.get_space(space)
  if isinstance(kind, spaces.OneShot1Space):
    return oneshot1_trajectory.read_run(folder)
  if kind.topology == spaces.NB201_CELL:
    return trajectory.read_run(folder, table)
  rows = {r["epoch"]: {"epoch": r["epoch"], "cell": r["genotype"],
                       "eval_accuracy": r.get("eval_accuracy")}
          for r in metrics.read_records(folder, "epoch")}
  for r in metrics.read_records(folder, "hessian"):
    if r["epoch"] in rows:
      rows[r["epoch"]]["lambda_max"] = r["hessian_lambda_max"]
  return [rows[e] for e in sorted(rows)]


def collect(workdirs: list[str], table: nb201.Table | None = None) -> dict[str, dict]:
  """label (method and space) -> {"workdirs", "seeds": {seed: epochs (`read_seed`)}}."""
  groups: dict[str, dict] = {}
  for w in workdirs:
    space = metrics.read_json(os.path.join(w, "config.json"))["space"]
    group = groups.setdefault(plots.run_label(w), {"workdirs": [], "seeds": {}})
    group["workdirs"].append(w)
    for seed, folder in seed_folders(w).items():
      if seed in group["seeds"]:
        raise ValueError(f"seed {seed} of {plots.run_label(w)} is in two workdirs")
      group["seeds"][seed] = read_seed(folder, space, table)
  return groups


def summary(epochs_of_seeds: list[list[dict]], key: str) -> list[tuple[int, float, float, int]]:
  """[(epoch, mean, std, number of seeds), ...] of `key` over the seeds that have it."""
  values: dict[int, list[float]] = {}
  for epochs in epochs_of_seeds:
    for e in epochs:
      if e.get(key) is not None:
        values.setdefault(e["epoch"], []).append(float(e[key]))
  return [(epoch, float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
          for epoch, v in sorted(values.items())]


def present(groups: dict[str, dict]) -> list[str]:
  """The keys of QUANTITIES that some run has."""
  return [k for k in QUANTITIES
          if any(summary(list(g["seeds"].values()), k) for g in groups.values())]


def cell_text(cell) -> str:
  """A derived cell in a table: NAS-Bench-201's op codes, 1Shot1's ops and edges, or the
  DARTS genotype's ops."""
  if isinstance(cell, str):
    return trajectory.cell_code(cell)
  if "matrix" in cell:
    return oneshot1_trajectory.cell_code(cell)
  return "; ".join(f"{t}: {' '.join(op for op, _ in cell[t])}" for t in ("normal", "reduce")
                   if t in cell)


def tables(groups: dict[str, dict]) -> str:
  """Markdown: the final epoch's mean ± std per method, each seed's final cell, and per
  epoch the mean ± std of every quantity."""
  keys = present(groups)
  final = ["| method | seeds | " + " | ".join(QUANTITIES[k] for k in keys) + " |",
           "|---" * (len(keys) + 2) + "|"]
  cells = ["| method | seed | final epoch | final cell |", "|---|---|---|---|"]
  for label, g in groups.items():
    runs = list(g["seeds"].values())
    last = [summary(runs, k)[-1] if summary(runs, k) else None for k in keys]
    final.append(f"| {label} | {len(runs)} | " + " | ".join(
        f"{m:.4g} ± {s:.2g} (n={n}, epoch {e})" if x is not None else ""
        for x in last for (e, m, s, n) in [x or (0, 0, 0, 0)]) + " |")
    for seed, epochs in sorted(g["seeds"].items()):
      if epochs:
        cells.append(f"| {label} | {seed} | {epochs[-1]['epoch']} | "
                     f"`{trajectory.markdown_cell(cell_text(epochs[-1]['cell']))}` |")
  parts = ["Final epoch, mean ± std over seeds:", "\n".join(final), "Final cells:",
           "\n".join(cells)]
  for k in keys:
    rows = {label: {e: (m, s, n) for e, m, s, n in summary(list(g["seeds"].values()), k)}
            for label, g in groups.items()}
    epochs = sorted({e for r in rows.values() for e in r})
    lines = [f"{QUANTITIES[k]}, mean ± std:", "", "| epoch | " + " | ".join(rows) + " |",
             "|---" * (len(rows) + 1) + "|"]
    for e in epochs:
      lines.append(f"| {e} | " + " | ".join(
          f"{r[e][0]:.4g} ± {r[e][1]:.2g}" if e in r else "" for r in rows.values()) + " |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


def plot(groups: dict[str, dict], out: str, references: dict[str, float] | None = None,
         title: str = "", dataset: str = "cifar10") -> None:
  """One panel per quantity the runs have (of NAS-Bench-201's accuracies only `dataset`'s,
  with the references; the mixing weights left out): per method the mean over seeds against
  epoch, with a band of ± one standard deviation."""
  import matplotlib
  import matplotlib.pyplot as plt
  keys = [k for k in present(groups)
          if not k.startswith(("A_", "nb201_")) or k == f"nb201_{dataset}"]
  fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 5), dpi=120, squeeze=False)
  for ax, k in zip(axes[0], keys):
    for i, (label, g) in enumerate(groups.items()):
      points = summary(list(g["seeds"].values()), k)
      if not points:
        continue
      e, m, s, _ = map(np.asarray, zip(*points))
      ax.plot(e, m, marker="o", markersize=3, color=f"C{i}",
              label=f"{label}, {len(g['seeds'])} seeds")
      ax.fill_between(e, m - s, m + s, color=f"C{i}", alpha=0.2, linewidth=0)
    if k.startswith("nb201_") and references:  # the references are `dataset`'s
      for j, (name, value) in enumerate(references.items()):
        ax.axhline(value, color="0.45", linewidth=1, linestyle=("--", ":")[j % 2],
                   label=f"{name} ({value:.2f})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(QUANTITIES[k] + ", mean ± std")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
              frameon=False)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(out)
  plt.close(fig)


def report(workdirs: list[str], out: str, table_path: str = "", dataset: str = "cifar10",
           title: str = "") -> str:
  """Aggregate `workdirs`: the figure at `out`, the JSON beside it; returns the Markdown."""
  table = nb201.Table.load(os.path.expanduser(table_path)) if table_path else None
  groups = collect(workdirs, table)
  refs = trajectory.references(table, dataset) if table is not None else None
  if refs is not None:
    refs = {"best cell": refs["best"], "all skip_connect": refs["all_skip_connect"]}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  plot(groups, out, refs, title, dataset)
  keys = present(groups)
  figure.write_json_beside(out, {
      "title": title, "references": refs,
      "methods": {label: {"workdirs": g["workdirs"], "seeds": g["seeds"],
                          "summary": {k: summary(list(g["seeds"].values()), k) for k in keys}}
                  for label, g in groups.items()}})
  return tables(groups)


def main(argv):
  from sdarts_jax.run import lifecycle
  lifecycle.quiet_libraries()
  f = flags.FLAGS
  if len(argv) < 2:
    raise app.UsageError("give one or more search workdirs")
  text = lifecycle.as_command(report, argv[1:], f.out, f.table, f.dataset, f.title)
  print(text)
  print(f"\nwrote {f.out} and {os.path.splitext(f.out)[0]}.json")


def define_flags() -> None:
  flags.DEFINE_string("out", "seeds.png", "Output PNG (the JSON is written beside it).")
  flags.DEFINE_string("table", "", "NAS-Bench-201 accuracy CSV: queries cells the runs did not "
                      "query, and draws the best and all-skip cells.")
  flags.DEFINE_string("dataset", "cifar10", "NAS-Bench-201 dataset of the references.")
  flags.DEFINE_string("title", "", "The figure's title.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
