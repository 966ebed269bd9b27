"""The paper's NAS-Bench-1Shot1 figure at CPU size: the dominant Hessian eigenvalue and the
one-shot validation error per epoch of DARTS, SDARTS-RS and SDARTS-ADV (and the derived cell's
NAS-Bench-101 test regret when the table is given).

  python -m sdarts_jax.analysis.oneshot1_trajectory --data=../shared/data/cifar10-jpeg \
      --space=ss3 --workdir=runs/1shot1_trajectory --out=docs/1shot1_ss3_trajectory_cpu.png

Runs one 1Shot1 search per method on a small one-shot model (`figure.run_searches`: each a
normal search workdir, --workdir/<method>, started, resumed or, when finished, reused), with
lambda_max tracked every --hessian_every epochs (the paper: every epoch) and, with
--nasbench101=PATH/nasbench_only108.tfrecord, the derived cell scored every epoch. Then reads
every run's metrics.jsonl and plots the one-shot validation error (the supernet on the alpha
half) and lambda_max against epoch, one line per method, plus the test regret when scored.
Writes the PNG, a JSON of the per-epoch values beside it (same name, .json) and prints the
numbers as Markdown tables. --norun reads the workdirs as they are.
"""
from __future__ import annotations

import os

from absl import app, flags

from sdarts_jax.analysis import figure, plots, trajectory
from sdarts_jax.run import metrics

SPACES = ("ss1", "ss2", "ss3")


def read_run(workdir: str) -> list[dict]:
  """A 1Shot1 search's epochs, oldest first, from workdir/metrics.jsonl.

  Each epoch is a dict: epoch; cell ({"matrix", "ops", "hash"}, the derived NAS-Bench-101
  cell); validation_error (%, the one-shot model on the alpha half; None when not evaluated);
  nb101_test_regret and nb101_test_accuracy (%) when the run scored its cells; seconds (the
  epoch's training); lambda_max and hessian_seconds when the Hessian was measured after that
  epoch. An epoch logged twice counts once, with the later record. ValueError when the run is
  not a 1Shot1 search.
  """
  epochs = {}
  for record in metrics.read_records(workdir, "epoch"):
    cell = record.get("genotype", {}).get("nb101")
    if cell is None:
      raise ValueError(f"{workdir}: epoch {record['epoch']} has no NAS-Bench-101 cell: not a "
                       f"search in a 1shot1 space")
    accuracy = record.get("eval_accuracy")
    row = {"epoch": record["epoch"], "cell": cell, "seconds": record["seconds"],
           "validation_error": None if accuracy is None else 100 * (1 - accuracy)}
    for key in ("nb101_test_regret", "nb101_test_accuracy"):
      if key in record:
        row[key] = 100 * record[key]
    epochs[row["epoch"]] = row
  for record in metrics.read_records(workdir, "hessian"):
    if record["epoch"] in epochs:
      epochs[record["epoch"]].update(lambda_max=record["hessian_lambda_max"],
                                     hessian_seconds=record["hessian_seconds"])
  return [epochs[e] for e in sorted(epochs)]


def collect(workdirs: dict[str, str]) -> dict[str, dict]:
  """method -> {"label": the run's name in plots, "workdir", "epochs": `read_run`}."""
  return {method: {"label": plots.run_label(w), "workdir": w, "epochs": read_run(w)}
          for method, w in workdirs.items()}


def plot(runs: dict[str, dict], out: str, title: str = "", eval_bn: str = "running") -> None:
  """lambda_max and the one-shot validation error (eval_bn: the runs' config.eval_bn, named
  in its label); the test regret when scored."""
  content = [(trajectory.series(runs, "lambda_max"),
              "dominant eigenvalue of the Hessian of L_val (alpha)", {}),
             ({label: [(e, v) for e, v in points if v is not None] for label, points
               in trajectory.series(runs, "validation_error").items()},
              f"one-shot validation error (%), BN: {eval_bn}", {})]
  regret = trajectory.series(runs, "nb101_test_regret")
  if any(regret.values()):
    content.append((regret, "NAS-Bench-101 test regret of the derived cell (%)", {}))
  plots.panels(content, out, title)


def cell_code(cell: dict) -> str:
  """The derived cell in one short string: its intermediate ops (c3 conv3x3-bn-relu, c1
  conv1x1-bn-relu, mp maxpool3x3) and its edge count."""
  short = {"conv3x3-bn-relu": "c3", "conv1x1-bn-relu": "c1", "maxpool3x3": "mp"}
  edges = sum(map(sum, cell["matrix"]))
  return "-".join(short[op] for op in cell["ops"][1:-1]) + f", {edges} edges"


def tables(runs: dict[str, dict]) -> str:
  """The per-epoch numbers and the final cells as Markdown tables."""
  labels = [r["label"] for r in runs.values()]
  all_epochs = sorted({e["epoch"] for r in runs.values() for e in r["epochs"]})
  by_epoch = [{e["epoch"]: e for e in r["epochs"]} for r in runs.values()]

  def table(title: str, key: str, fmt: str) -> str:
    lines = [title, "", "| epoch | " + " | ".join(labels) + " |",
             "|---" * (len(labels) + 1) + "|"]
    for epoch in all_epochs:
      values = [format(rows[epoch][key], fmt) if rows.get(epoch, {}).get(key) is not None
                else "" for rows in by_epoch]
      if any(values):
        lines.append(f"| {epoch} | " + " | ".join(values) + " |")
    return "\n".join(lines)

  parts = [table("lambda_max:", "lambda_max", ".4f"),
           table("One-shot validation error (%):", "validation_error", ".2f")]
  if any(trajectory.series(runs, "nb101_test_regret").values()):
    parts.append(table("NAS-Bench-101 test regret (%):", "nb101_test_regret", ".2f"))
  final = ["Final cells:", "", "| method | cell | hash | search minutes (training + Hessian) |",
           "|---|---|---|---|"]
  for r in runs.values():
    if r["epochs"]:
      e = r["epochs"][-1]
      minutes = sum(x["seconds"] + x.get("hessian_seconds", 0.0) for x in r["epochs"]) / 60
      final.append(f"| {r['label']} | {cell_code(e['cell'])} | `{e['cell']['hash'][:12]}` | "
                   f"{minutes:.1f} |")
  return "\n\n".join(parts + ["\n".join(final)])


def config_for(method: str, f):
  """The 1Shot1 search config of `method` at the flags' size."""
  from sdarts_jax import defaults
  c = figure.sized(defaults.from_file("1shot1_search", f"method={method},space={f.space}"),
                   f)
  c.model.layers = f.layers
  c.hessian.every_epochs = f.hessian_every
  c.nasbench101.file = f.nasbench101
  c.eval_bn = f.eval_bn or c.eval_bn
  return c


def main(argv):
  del argv
  from sdarts_jax.run import lifecycle
  lifecycle.quiet_libraries()
  lifecycle.as_command(_main, flags.FLAGS)


def _main(f) -> None:
  if f.space not in SPACES:
    raise ValueError(f"--space={f.space}; use one of {', '.join(SPACES)}")
  workdirs = figure.searches(f, config_for, "sdarts_jax.analysis.oneshot1_trajectory")
  first = next(iter(workdirs.values()))
  saved = metrics.read_json(os.path.join(first, "config.json"))
  title = (f"NAS-Bench-1Shot1 search, {saved['space']}: {figure.describe(first, '{layers} cells')}"
           f", BN of the evaluation: {saved.get('eval_bn', 'running')}")
  if getattr(f, "seeds", 1) > 1:
    from sdarts_jax.analysis import seeds  # it reads runs with this module's read_run
    print(seeds.report(list(workdirs.values()), f.out, title=title))
    print(f"\nwrote {f.out} and {os.path.splitext(f.out)[0]}.json")
    return
  runs = collect(workdirs)
  os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
  # Runs made before config.eval_bn existed evaluated with the running statistics.
  plot(runs, f.out, title, saved.get("eval_bn", "running"))
  json_path = figure.write_json_beside(f.out, {"title": title, "runs": runs})
  print(tables(runs))
  print(f"\nwrote {f.out} and {json_path}")


def define_flags() -> None:
  figure.define_size_flags("runs/1shot1_trajectory", "docs/1shot1_ss3_trajectory_cpu.png",
                           epochs=24, channels=8, batch=32, examples=1024, hessian_batches=1)
  flags.DEFINE_string("space", "ss3", "NAS-Bench-1Shot1 search space: " + ", ".join(SPACES))
  flags.DEFINE_integer("layers", 3, "Cells (3 stacks; the reference: 9).")
  flags.DEFINE_string("nasbench101", "", "nasbench_only108.tfrecord: score the derived cell "
                      "(test regret) every epoch.")
  flags.DEFINE_string("eval_bn", "", "BatchNorm statistics of the one-shot validation "
                      "error (config.eval_bn): running or clean_batch (default: the "
                      "config's, clean_batch).")
  figure.define_trajectory_flags()


if __name__ == "__main__":
  define_flags()
  app.run(main)
