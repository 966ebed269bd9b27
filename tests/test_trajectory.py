"""The NAS-Bench-201 trajectory figure's reading, plotting and JSON, on hand-made run
directories (no search runs here)."""
import csv
import json
import os
import types

import numpy as np
import pytest

from sdarts_jax.analysis import plots, trajectory
from sdarts_jax.model import spaces
from sdarts_jax.tables import nb201

MIXED = "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|none~1|nor_conv_1x1~2|"
CONV = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
        "|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")
CELLS = {"darts": [MIXED, trajectory.ALL_SKIP, trajectory.ALL_SKIP], "adv": [MIXED, CONV, CONV]}
# A table of the cells above: accuracies per dataset, different in every column.
TABLE = {MIXED: (91.5, 70.25, 44.0), trajectory.ALL_SKIP: (54.3, 15.61, 16.32),
         CONV: (94.37, 73.51, 47.31)}


def write_table(path):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(nb201.COLUMNS)
    for cell, accs in TABLE.items():
      w.writerow([*accs, cell, cell])
  return str(path)


def write_run(workdir, method, queried=True, hessian=True, repeat_epoch=None):
  """A search workdir by hand: config.json and metrics.jsonl with one epoch record per cell
  (A random, lambda_max 0.1 * epoch + method's offset); returns what it wrote per epoch."""
  os.makedirs(workdir)
  config = {"method": method, "space": "nb201", "epochs": 3, "seed": 2,
            "model": {"channels": 8, "cells_per_stage": 1},
            "data": {"batch_size": 32, "max_examples": 1024}}
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  rng = np.random.default_rng(len(method))
  written, lines = [], []
  for epoch, cell in enumerate(CELLS[method], start=1):
    A = rng.dirichlet(np.ones(5), 6)
    record = {"kind": "epoch", "step": 16 * epoch, "epoch": epoch, "seconds": 10.0 * epoch,
              "eval_accuracy": 0.2 + 0.01 * epoch, "genotype": {"nb201": cell},
              "A": {"normal": A.tolist()}}
    if queried:
      record.update(nb201_cifar10=TABLE[cell][0], nb201_cifar100=TABLE[cell][1],
                    nb201_imagenet16=TABLE[cell][2], nb201_cifar10_rank=epoch,
                    nb201_cifar100_rank=epoch, nb201_imagenet16_rank=epoch)
    if epoch == repeat_epoch:  # the same epoch logged before a kill, then redone
      lines.append(dict(record, nb201_cifar10=1.0, eval_accuracy=0.0))
    lines.append(record)
    lam = 0.1 * epoch + len(method) / 100
    if hessian:
      lines.append({"kind": "hessian", "step": 16 * epoch, "epoch": epoch,
                    "hessian_lambda_max": lam, "hessian_seconds": 2.0})
    written.append(dict(cell=cell, acc=TABLE[cell], A=A, lambda_max=lam))
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in lines))
  return written


def check_epochs(read, written, hessian=True):
  assert [e["epoch"] for e in read] == [1, 2, 3]
  for e, w in zip(read, written):
    assert e["cell"] == w["cell"]
    assert (e["nb201_cifar10"], e["nb201_cifar100"], e["nb201_imagenet16"]) == w["acc"]
    skip, none = (spaces.NB201_OPS.index(op) for op in ("skip_connect", "none"))
    assert e["A_skip_connect"] == pytest.approx(w["A"][:, skip].mean())
    assert e["A_none"] == pytest.approx(w["A"][:, none].mean())
    assert ("lambda_max" in e) == hessian
    if hessian:
      assert e["lambda_max"] == w["lambda_max"]


def test_read_run_values_per_epoch(tmp_path):
  written = write_run(tmp_path / "darts", "darts", repeat_epoch=2)
  read = trajectory.read_run(str(tmp_path / "darts"))
  check_epochs(read, written)  # the redone epoch 2 counts once, with its later record
  assert read[1]["eval_accuracy"] == pytest.approx(0.22)


def test_read_run_queries_the_table_when_the_run_did_not(tmp_path):
  written = write_run(tmp_path / "adv", "adv", queried=False, hessian=False)
  with pytest.raises(ValueError, match="give the table"):
    trajectory.read_run(str(tmp_path / "adv"))
  table = nb201.Table.load(write_table(tmp_path / "t.csv"))
  check_epochs(trajectory.read_run(str(tmp_path / "adv"), table), written, hessian=False)


def test_command_reads_plots_and_writes_json(tmp_path, monkeypatch, capsys):
  """--norun: every method's accuracy and lambda_max per epoch reach the plot, the JSON and
  the printed tables; a method without a workdir is left out with a warning."""
  written = {m: write_run(tmp_path / "runs" / m, m) for m in ("darts", "adv")}
  drawn = []
  real = plots.panels
  monkeypatch.setattr(plots, "panels", lambda content, out, title="": (
      drawn.append(content), real(content, out, title)))
  out = tmp_path / "docs" / "fig.png"
  f = types.SimpleNamespace(table=write_table(tmp_path / "t.csv"), dataset="cifar10", run=False,
                            methods="darts,rs,adv", workdir=str(tmp_path / "runs"), out=str(out))
  trajectory._main(f)
  assert os.path.getsize(out) > 5000
  (accuracy, ylabel, refs), (lam, lam_label, _) = drawn[0]
  assert "CIFAR-10" in ylabel and "lambda_max" in lam_label
  assert sorted(refs.values()) == [54.3, 94.37]
  for m, label in (("darts", "DARTS (nb201)"), ("adv", "SDARTS-ADV (nb201)")):
    assert accuracy[label] == [(k + 1, w["acc"][0]) for k, w in enumerate(written[m])]
    assert lam[label] == [(k + 1, w["lambda_max"]) for k, w in enumerate(written[m])]
  saved = json.loads((tmp_path / "docs" / "fig.json").read_text())
  assert saved["references"] == {"best": 94.37, "all_skip_connect": 54.3}
  assert list(saved["runs"]) == ["darts", "adv"]
  for m in ("darts", "adv"):
    check_epochs(saved["runs"][m]["epochs"], written[m])
  printed = capsys.readouterr()
  assert "rs left out" in printed.err
  assert "| 2 | 54.30 `ssssss` | 94.37 `333s33` |" in printed.out
  assert f"| 3 | {written['darts'][2]['lambda_max']:.4f} | " in printed.out
  mixing = printed.out.split("skip_connect / none:")[1]
  w = written["adv"][0]["A"]
  assert f"| 1 | {written['darts'][0]['A'][:, 1].mean():.4f} / " in mixing
  assert f" | {w[:, 1].mean():.4f} / {w[:, 0].mean():.4f} |" in mixing
  escaped = trajectory.ALL_SKIP.replace("|", "\\|")
  assert f"| DARTS (nb201) | `{escaped}` | 54.30 | 15.61 | 16.32 | 3 | 1.1 |" in printed.out


def test_plot_without_hessian_has_one_panel(tmp_path, monkeypatch):
  write_run(tmp_path / "darts", "darts", hessian=False)
  runs = trajectory.collect({"darts": str(tmp_path / "darts")})
  drawn = []
  monkeypatch.setattr(plots, "panels", lambda content, out, title="": drawn.append(content))
  trajectory.plot(runs, "cifar100", {"best": 73.51, "all_skip_connect": 15.61}, "x.png")
  assert len(drawn[0]) == 1
  assert drawn[0][0][0] == {"DARTS (nb201)": [(1, 70.25), (2, 15.61), (3, 15.61)]}


def test_config_for_the_flags():
  f = types.SimpleNamespace(data="imgs", epochs=4, channels=8, batch=16, examples=512,
                            hessian_batches=2, cells_per_stage=2, table="t.csv",
                            hessian_every=1, dataset="cifar100")
  c = trajectory.config_for("rs", f)
  assert (c.space, c.method, c.epochs, c.model.channels, c.model.cells_per_stage) == (
      "nb201", "rs", 4, 8, 2)
  assert (c.data.folder, c.data.name, c.data.batch_size, c.data.max_examples) == (
      "imgs", "cifar100", 16, 512)
  assert (c.nb201.table, c.hessian.every_epochs, c.hessian.batches) == ("t.csv", 1, 2)
