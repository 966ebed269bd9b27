"""NAS-Bench-201 search trajectories: the benchmark accuracy of the cell that DARTS, SDARTS-RS
and SDARTS-ADV derive after every epoch, and lambda_max beside it.

  python -m sdarts_jax.analysis.trajectory --data=../shared/data/cifar10-jpeg \
      --table=../shared/data/nb201/nats_bench.csv --workdir=runs/nb201_trajectory \
      --out=docs/nb201_trajectory_cpu.png

Runs one NAS-Bench-201 search per method on a small supernet (`figure.run_searches`: each a
normal search workdir, --workdir/<method>, started, resumed or, when finished, reused), with
the derived cell queried in the table every epoch and lambda_max tracked every
--hessian_every epochs (0: not tracked). Then reads every run's metrics.jsonl and plots the
cell's 200-epoch test accuracy on --dataset against epoch, one line per method, beside
lambda_max when tracked; the best cell of the table and the all-skip_connect cell (where DARTS
collapses) are drawn as references. Writes the PNG, a JSON of the per-epoch values beside it
(the same name with .json) and prints the numbers as Markdown tables. --norun reads the
workdirs as they are (a search still going, or one run by hand with `python -m
sdarts_jax.main --config=configs/nb201_search.py:method=...`).
"""
from __future__ import annotations

import os

from absl import app, flags
import numpy as np

from sdarts_jax.analysis import figure, plots
from sdarts_jax.model import spaces
from sdarts_jax.run import metrics
from sdarts_jax.tables import nb201

DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet16": "ImageNet16-120"}
# One character per op for the compact cell code of the tables ("ssssss": all skip_connect).
OP_CODES = {"none": "n", "skip_connect": "s", "nor_conv_1x1": "1", "nor_conv_3x3": "3",
            "avg_pool_3x3": "p"}
# Ops whose mixing weight (the mean over the cell's edges) each epoch reports: DARTS's drift
# toward the parameter-free ops.
WATCHED_OPS = ("skip_connect", "none")
ALL_SKIP = nb201.to_string(("skip_connect",) * spaces.NB201_CELL.num_edges)


def read_run(workdir: str, table: nb201.Table | None = None) -> list[dict]:
  """A NAS-Bench-201 search's epochs, oldest first, from workdir/metrics.jsonl.

  Each epoch is a dict: epoch; cell (the NAS-Bench-201 string); nb201_<d> (the cell's
  200-epoch test accuracy, %) and nb201_<d>_rank for d in nb201.DATASETS; eval_accuracy (the
  supernet on the alpha half, None when not evaluated); A_<op> for op in WATCHED_OPS (that
  op's mixing weight, the mean over the 6 edges); seconds (the epoch's training); lambda_max
  and hessian_seconds when the Hessian was measured after that epoch. An epoch logged twice
  (a run killed after its record and before its checkpoint redoes it) counts once, with the
  later record. Accuracies the run did not query (no table in its config) come from `table`;
  ValueError when there is none, or when the run is not a NAS-Bench-201 search.
  """
  epochs = {}
  for record in metrics.read_records(workdir, "epoch"):
    cell = record.get("genotype", {}).get("nb201")
    if cell is None:
      raise ValueError(f"{workdir}: epoch {record['epoch']} has no NAS-Bench-201 cell: not a "
                       f"search with config.space=nb201")
    if any(f"nb201_{d}" not in record for d in nb201.DATASETS):
      if table is None:
        raise ValueError(f"{workdir}: epoch {record['epoch']} was not queried (the run had no "
                         f"config.nb201.table); give the table")
      record = {**record, **table.query(cell)}
    A = np.asarray(record["A"]["normal"])
    row = {"epoch": record["epoch"], "cell": cell,
           **{k: record[k] for d in nb201.DATASETS for k in (f"nb201_{d}", f"nb201_{d}_rank")},
           "eval_accuracy": record.get("eval_accuracy"),
           **{f"A_{op}": float(A[:, spaces.NB201_OPS.index(op)].mean()) for op in WATCHED_OPS},
           "seconds": record["seconds"]}
    epochs[row["epoch"]] = row
  for record in metrics.read_records(workdir, "hessian"):
    if record["epoch"] in epochs:
      epochs[record["epoch"]].update(lambda_max=record["hessian_lambda_max"],
                                     hessian_seconds=record["hessian_seconds"])
  return [epochs[e] for e in sorted(epochs)]


def collect(workdirs: dict[str, str], table: nb201.Table | None = None) -> dict[str, dict]:
  """method -> {"label": the run's name in plots, "workdir", "epochs": `read_run`}."""
  return {method: {"label": plots.run_label(w), "workdir": w, "epochs": read_run(w, table)}
          for method, w in workdirs.items()}


def references(table: nb201.Table, dataset: str) -> dict[str, float]:
  """The table's best accuracy on `dataset` and the all-skip_connect cell's (%)."""
  return {"best": float(table.accuracy[dataset].max()),
          "all_skip_connect": table.query(ALL_SKIP)[f"nb201_{dataset}"]}


def series(runs: dict[str, dict], key: str) -> dict[str, list[tuple[int, float]]]:
  """label -> [(epoch, value of `key`), ...] over the epochs that have `key`."""
  return {r["label"]: [(e["epoch"], e[key]) for e in r["epochs"] if key in e]
          for r in runs.values()}


def plot(runs: dict[str, dict], dataset: str, refs: dict[str, float], out: str,
         title: str = "") -> None:
  """The accuracy panel (with the references), and lambda_max beside it when tracked."""
  name = DATASET_NAMES[dataset]
  content = [(series(runs, f"nb201_{dataset}"),
              f"{name} test accuracy of the derived cell (%)",
              {f"best cell ({refs['best']:.2f})": refs["best"],
               f"all skip_connect ({refs['all_skip_connect']:.2f})": refs["all_skip_connect"]})]
  lambda_max = series(runs, "lambda_max")
  if any(lambda_max.values()):
    content.append((lambda_max, "lambda_max of the Hessian of L_val (alpha)", {}))
  plots.panels(content, out, title)


def cell_code(cell: str) -> str:
  """The cell's ops, one character each (OP_CODES), in the string's edge order."""
  return "".join(OP_CODES[op] for op in nb201.parse(cell))


def markdown_cell(cell: str) -> str:
  """The cell string with its bars escaped for a Markdown table."""
  return cell.replace("|", "\\|")


def tables(runs: dict[str, dict], dataset: str) -> str:
  """The per-epoch numbers and the final cells as Markdown tables (an epoch without any
  value of a table is left out of it)."""
  labels = [r["label"] for r in runs.values()]
  all_epochs = sorted({e["epoch"] for r in runs.values() for e in r["epochs"]})
  by_epoch = [{e["epoch"]: e for e in r["epochs"]} for r in runs.values()]

  def table(title: str, cell) -> str:
    lines = [title, "", "| epoch | " + " | ".join(labels) + " |",
             "|---" * (len(labels) + 1) + "|"]
    for epoch in all_epochs:
      values = [cell(rows[epoch]) if epoch in rows else "" for rows in by_epoch]
      if any(values):
        lines.append(f"| {epoch} | " + " | ".join(values) + " |")
    return "\n".join(lines)

  key = f"nb201_{dataset}"
  codes = ", ".join(f"{c} {op}" for op, c in OP_CODES.items())
  parts = [table(f"{DATASET_NAMES[dataset]} test accuracy (%) of the derived cell, and the cell "
                 f"(edges 0->1, 0->2, 1->2, 0->3, 1->3, 2->3; {codes}):",
                 lambda e: f"{e[key]:.2f} `{cell_code(e['cell'])}`")]
  if any(series(runs, "lambda_max").values()):
    parts.append(table("lambda_max:", lambda e: f"{e['lambda_max']:.4f}" if "lambda_max" in e
                       else ""))
  parts.append(table("Mean mixing weight over the 6 edges, skip_connect / none:",
                     lambda e: " / ".join(f"{e[f'A_{op}']:.4f}" for op in WATCHED_OPS)))
  final = ["Final cells:", "", "| method | cell | CIFAR-10 | CIFAR-100 | ImageNet16-120 | "
           f"rank on {DATASET_NAMES[dataset]} | search minutes (training + Hessian) |",
           "|---|---|---|---|---|---|---|"]
  for r in runs.values():
    if not r["epochs"]:
      continue
    e = r["epochs"][-1]
    minutes = sum(x["seconds"] + x.get("hessian_seconds", 0.0) for x in r["epochs"]) / 60
    final.append(f"| {r['label']} | `{markdown_cell(e['cell'])}` | "
                 + " | ".join(f"{e[f'nb201_{d}']:.2f}" for d in nb201.DATASETS)
                 + f" | {e[f'{key}_rank']:,} | {minutes:.1f} |")
  return "\n\n".join(parts + ["\n".join(final)])


def config_for(method: str, f):
  """The NB201 search config of `method` at the flags' size."""
  from sdarts_jax import defaults
  c = figure.sized(defaults.from_file("nb201_search", f"method={method}"), f)
  c.model.cells_per_stage = f.cells_per_stage
  c.nb201.table = f.table
  c.hessian.every_epochs = f.hessian_every
  if f.dataset != "imagenet16":
    c.data.name = defaults.dataset_name(f.dataset)
  elif not f.data:
    raise ValueError("--dataset=imagenet16 needs --data: an image folder of ImageNet16-120")
  return c


def main(argv):
  del argv
  from sdarts_jax.run import lifecycle
  lifecycle.quiet_libraries()
  lifecycle.as_command(_main, flags.FLAGS)


def _main(f) -> None:
  if not f.table:
    raise ValueError("--table is required: the NAS-Bench-201 accuracy CSV, e.g. "
                     "../shared/data/nb201/nats_bench.csv")
  if f.dataset not in DATASET_NAMES:
    raise ValueError(f"--dataset={f.dataset}; use one of {', '.join(DATASET_NAMES)}")
  table = nb201.Table.load(os.path.expanduser(f.table))
  workdirs = figure.searches(f, config_for, "sdarts_jax.analysis.trajectory")
  size = figure.describe(next(iter(workdirs.values())), "{cells_per_stage} cell(s) per stage")
  title = f"NAS-Bench-201 search on {DATASET_NAMES[f.dataset]}: {size}"
  if getattr(f, "seeds", 1) > 1:
    from sdarts_jax.analysis import seeds  # it reads runs with this module's read_run
    print(seeds.report(list(workdirs.values()), f.out, f.table, f.dataset, title))
    print(f"\nwrote {f.out} and {os.path.splitext(f.out)[0]}.json")
    return
  runs = collect(workdirs, table)
  refs = references(table, f.dataset)
  os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
  plot(runs, f.dataset, refs, f.out, title)
  json_path = figure.write_json_beside(f.out, {"dataset": f.dataset, "title": title,
                                              "references": refs, "runs": runs})
  print(tables(runs, f.dataset))
  print(f"\nwrote {f.out} and {json_path}")


def define_flags() -> None:
  figure.define_size_flags("runs/nb201_trajectory", "docs/nb201_trajectory_cpu.png", epochs=12,
                           channels=8, batch=32, examples=2048, hessian_batches=1)
  flags.DEFINE_integer("cells_per_stage", 1, "Search cells per stage (N; the paper: 5).")
  flags.DEFINE_string("table", "", "NAS-Bench-201 accuracy CSV "
                      "(e.g. ../shared/data/nb201/nats_bench.csv).")
  flags.DEFINE_string("dataset", "cifar10", "Dataset searched and plotted: "
                      + ", ".join(DATASET_NAMES) + " (imagenet16 needs --data).")
  figure.define_trajectory_flags()


if __name__ == "__main__":
  define_flags()
  app.run(main)
