"""metrics.jsonl after a process was killed mid-write: readers skip the half-written last
line with a warning, a resumed run cuts it off before appending."""
import json

import pytest

from sdarts_jax.run import metrics


def write_killed_run(workdir):
  lines = [json.dumps({"kind": "train", "step": s, "train_loss": 1.0 / s}) for s in (1, 2)]
  (workdir / "metrics.jsonl").write_text("\n".join(lines) + '\n{"kind": "epoch", "st')


def test_half_written_last_line_is_skipped_with_a_warning(tmp_path, capsys):
  write_killed_run(tmp_path)
  assert [r["step"] for r in metrics.read_records(str(tmp_path))] == [1, 2]
  assert metrics.read_records(str(tmp_path), "epoch") == []
  assert "skipped the half-written last line 3" in capsys.readouterr().err


def test_resumed_writer_cuts_the_half_written_line(tmp_path, capsys):
  write_killed_run(tmp_path)
  writer = metrics.MetricWriter(str(tmp_path))
  assert "removed a half-written last line (21 bytes)" in capsys.readouterr().err
  writer.write("train", 3, {"train_loss": 0.25})
  writer.close()
  assert [r["step"] for r in metrics.read_records(str(tmp_path), "train")] == [1, 2, 3]
  assert capsys.readouterr().err == ""


def test_damaged_line_inside_the_file_is_an_error(tmp_path):
  write_killed_run(tmp_path)
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('"}\n{"kind": "train", "step": 4}\n')  # an old writer appended after it
  with pytest.raises(ValueError, match=r"metrics.jsonl: line 3 is not valid JSON"):
    metrics.read_records(str(tmp_path))
