"""The NAS-Bench-1Shot1 trajectory figure's reading, tables, plot and JSON, on hand-made run
directories (no search runs here)."""
import json
import os
import types

import pytest

from sdarts_jax.analysis import oneshot1_trajectory as traj

# Two NAS-Bench-101 cells: input -> conv3x3 -> output with a skip from the input, and
# input -> maxpool -> conv1x1 -> output.
CELL_A = {"matrix": [[0, 1, 1], [0, 0, 1], [0, 0, 0]],
          "ops": ["input", "conv3x3-bn-relu", "output"], "hash": "a" * 32}
CELL_B = {"matrix": [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]],
          "ops": ["input", "maxpool3x3", "conv1x1-bn-relu", "output"], "hash": "b" * 32}


def write_run(workdir, method, scored=False, repeat_epoch=None, hessian_every=1):
  """A 1Shot1 search workdir by hand; returns per epoch (eval_accuracy, lambda_max or None)."""
  os.makedirs(workdir)
  config = {"method": method, "space": "1shot1_ss3", "epochs": 3, "seed": 2,
            "model": {"channels": 8, "layers": 3},
            "data": {"batch_size": 32, "max_examples": 1024}}
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  lines, written = [], []
  for epoch, cell in enumerate([CELL_A, CELL_B, CELL_B], start=1):
    accuracy = 0.25 + 0.125 * epoch
    record = {"kind": "epoch", "step": 16 * epoch, "epoch": epoch, "seconds": 30.0,
              "eval_accuracy": accuracy, "genotype": {"nb101": cell}}
    if scored:
      record.update(nb101_test_accuracy=0.9 + 0.01 * epoch, nb101_test_regret=0.04 - 0.01 * epoch)
    if epoch == repeat_epoch:  # logged before a kill, then redone
      lines.append(dict(record, eval_accuracy=0.0))
    lines.append(record)
    lam = None
    if epoch % hessian_every == 0:
      lam = 0.5 * epoch + len(method)
      lines.append({"kind": "hessian", "step": 16 * epoch, "epoch": epoch,
                    "hessian_lambda_max": lam, "hessian_seconds": 6.0})
    written.append((accuracy, lam))
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in lines))
  return written


def test_read_run_per_epoch(tmp_path):
  written = write_run(tmp_path / "darts", "darts", repeat_epoch=2, hessian_every=2)
  read = traj.read_run(str(tmp_path / "darts"))
  assert [e["epoch"] for e in read] == [1, 2, 3]
  assert [e["cell"]["hash"] for e in read] == ["a" * 32, "b" * 32, "b" * 32]
  # The error in percent: (1 - 0.375) * 100 = 62.5, 50.0 (the redone epoch 2), 37.5.
  assert [e["validation_error"] for e in read] == [62.5, 50.0, 37.5]
  assert [e.get("lambda_max") for e in read] == [lam for _, lam in written] == [None, 6.0, None]
  assert all("nb101_test_regret" not in e for e in read)


def test_read_run_scored_and_refuses_other_spaces(tmp_path):
  write_run(tmp_path / "adv", "adv", scored=True)
  read = traj.read_run(str(tmp_path / "adv"))
  assert [e["nb101_test_regret"] for e in read] == pytest.approx([3.0, 2.0, 1.0])
  assert [e["nb101_test_accuracy"] for e in read] == pytest.approx([91.0, 92.0, 93.0])
  other = tmp_path / "nb201"
  os.makedirs(other)
  (other / "metrics.jsonl").write_text(json.dumps(
      {"kind": "epoch", "step": 1, "epoch": 1, "seconds": 1.0, "genotype": {"nb201": "x"}}) + "\n")
  with pytest.raises(ValueError, match="not a search in a 1shot1 space"):
    traj.read_run(str(other))


def test_tables_plot_and_command(tmp_path):
  for method in ("darts", "adv"):
    write_run(tmp_path / method, method, scored=method == "adv")
  runs = traj.collect({m: str(tmp_path / m) for m in ("darts", "adv")})
  text = traj.tables(runs)
  assert "| 2 | 6.0000 | 4.0000 |" in text  # lambda_max 0.5 * 2 + len("darts"), + len("adv")
  assert "| 3 | 37.50 | 37.50 |" in text  # validation error
  assert "| 3 |  | 1.00 |" in text  # the regret: only ADV was scored
  assert "| mp-c1, 3 edges | `bbbbbbbbbbbb` | 1.8 |" in text  # 3 x (30 + 6) s
  out = tmp_path / "fig.png"
  traj.plot(runs, str(out), "title")
  assert out.stat().st_size > 10_000
  flags = types.SimpleNamespace(space="ss3", methods="darts,adv", run=False,
                                workdir=str(tmp_path), out=str(tmp_path / "cmd.png"))
  traj._main(flags)
  saved = json.loads((tmp_path / "cmd.json").read_text())
  assert set(saved["runs"]) == {"darts", "adv"} and "1shot1_ss3" in saved["title"]
  with pytest.raises(ValueError, match="--space=ss4"):
    traj._main(types.SimpleNamespace(**{**vars(flags), "space": "ss4"}))
