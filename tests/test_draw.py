"""Cell drawings: the edges drawn match hand-written cells of every kind, the PNG and SVG
are written, and bad input ends the command with one error line."""
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from sdarts_jax.analysis import draw
from sdarts_jax.model import nb101_cell
from sdarts_jax.run import lifecycle

ROOT = pathlib.Path(__file__).resolve().parents[1]
K2, K1, K = "c_{k-2}", "c_{k-1}", "c_{k}"

# darts_v2's cells (DARTS, second order; sdarts_jax/search/genotypes.json), read off by hand.
DARTS_V2_NORMAL = [(K2, "0", "sep_conv_3x3"), (K1, "0", "sep_conv_3x3"),
                   (K2, "1", "sep_conv_3x3"), (K1, "1", "sep_conv_3x3"),
                   (K1, "2", "sep_conv_3x3"), (K2, "2", "skip_connect"),
                   (K2, "3", "skip_connect"), ("0", "3", "dil_conv_3x3"),
                   ("0", K, None), ("1", K, None), ("2", K, None), ("3", K, None)]
DARTS_V2_REDUCE_OPS = [(K2, "0", "max_pool_3x3"), (K1, "0", "max_pool_3x3"),
                       ("0", "1", "skip_connect"), (K1, "1", "max_pool_3x3"),
                       (K2, "2", "max_pool_3x3"), ("0", "2", "skip_connect"),
                       ("0", "3", "skip_connect"), (K1, "3", "max_pool_3x3")]

NB201_CELL = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"
NB201_EDGES = [("0", "1", "nor_conv_3x3"), ("1", "2", "skip_connect"),
               ("0", "3", "avg_pool_3x3"), ("1", "3", "nor_conv_1x1")]

NB101_MATRIX = [[0, 1, 1, 0, 1],
                [0, 0, 0, 1, 0],
                [0, 0, 0, 1, 0],
                [0, 0, 0, 0, 1],
                [0, 0, 0, 0, 0]]
NB101_OPS = ["input", "conv3x3-bn-relu", "maxpool3x3", "conv1x1-bn-relu", "output"]
C3, P3, C1 = "1: conv3x3-bn-relu", "2: maxpool3x3", "3: conv1x1-bn-relu"
NB101_EDGES = [("input", C3, None), ("input", P3, None), ("input", "output", None),
               (C3, C1, None), (P3, C1, None), (C1, "output", None)]


def nb101_genotype() -> dict:
  return {"nb101": {"matrix": NB101_MATRIX, "ops": NB101_OPS,
                    "hash": nb101_cell.spec_hash(np.array(NB101_MATRIX), NB101_OPS)}}


def svg_texts(path) -> set[str]:
  """The strings of the SVG's <text> elements."""
  return set(re.findall(r"<text[^>]*>([^<]+)</text>", pathlib.Path(path).read_text()))


def check_images(stem) -> None:
  png, svg = pathlib.Path(f"{stem}.png"), pathlib.Path(f"{stem}.svg")
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
  assert svg.read_text().rstrip().endswith("</svg>")


def test_published_darts_v2_by_name(tmp_path, capsys):
  drawn = draw.command(["darts_v2"], str(tmp_path))
  assert capsys.readouterr().out == f"wrote {tmp_path}/darts_v2.png and {tmp_path}/darts_v2.svg\n"
  check_images(tmp_path / "darts_v2")
  assert list(drawn) == ["normal cell", "reduction cell"]
  assert drawn["normal cell"] == DARTS_V2_NORMAL
  assert drawn["reduction cell"][:8] == DARTS_V2_REDUCE_OPS
  texts = svg_texts(tmp_path / "darts_v2.svg")
  assert {"sep_conv_3x3", "skip_connect", "dil_conv_3x3", "max_pool_3x3"} <= texts
  assert {"normal cell", "reduction cell"} <= texts


def test_nb201_cell_leaves_out_none_edges(tmp_path):
  assert draw.draw({"nb201": NB201_CELL}, str(tmp_path / "c")) == {
      "NAS-Bench-201 cell": NB201_EDGES}
  check_images(tmp_path / "c")
  texts = svg_texts(tmp_path / "c.svg")
  assert {"nor_conv_3x3", "skip_connect", "avg_pool_3x3", "nor_conv_1x1"} <= texts
  assert "none" not in texts


def test_nb101_cell_beside_its_file_as_the_search_writes_it(tmp_path):
  path = tmp_path / "genotype.json"
  path.write_text(json.dumps(nb101_genotype()))
  assert draw.draw_beside(str(path)) == {"NAS-Bench-101 cell": NB101_EDGES}
  check_images(tmp_path / "genotype")
  assert {"input", C3, P3, C1, "output"} <= svg_texts(tmp_path / "genotype.svg")


def test_drawing_is_deterministic(tmp_path):
  for name in ("a", "b"):
    draw.draw({"nb201": NB201_CELL}, str(tmp_path / name))
  assert (tmp_path / "a.svg").read_text() == (tmp_path / "b.svg").read_text()


def test_labels_clear_the_nodes_and_each_other():
  for graph in draw.graphs(draw.load("darts_v2")[0]) + [draw.nb201_graph(NB201_CELL)]:
    labels = [r.label for r in draw.route(graph) if r.label is not None]
    nodes = [(n.x, n.y, *draw.node_half_size(n)) for n in graph.nodes]
    for i, label in enumerate(labels):
      assert not draw._hits(label, nodes + labels[:i]), (graph.title, label)


def test_bad_input_is_one_error_line(tmp_path, capsys):
  with pytest.raises(ValueError, match="unknown genotype 'nope': neither a genotype JSON file"):
    draw.load("nope")
  not_a_cell = tmp_path / "cell.json"
  not_a_cell.write_text('{"normal": []}')
  with pytest.raises(SystemExit) as exit_:
    lifecycle.as_command(draw.command, [str(not_a_cell)], "")
  assert exit_.value.code == 2
  assert capsys.readouterr().err == (f"error: {not_a_cell}: 'normal' must list 8 [op, input] "
                                     f"pairs\n")
  truncated = tmp_path / "truncated.json"
  truncated.write_text(json.dumps({"nb201": NB201_CELL})[:-5])
  out = subprocess.run([sys.executable, "-m", "sdarts_jax.analysis.draw", str(truncated),
                        f"--out={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {truncated}: not valid JSON (line 1")
  assert not list(tmp_path.glob("*.png"))


def test_a_failed_drawing_is_a_warning_for_the_search(tmp_path, capsys, monkeypatch):
  def broken(path):
    raise RuntimeError("no room")
  monkeypatch.setattr(draw, "draw_beside", broken)
  draw.draw_final_cell(str(tmp_path / "genotype.json"))
  assert capsys.readouterr().err == (f"warning: could not draw the cell in "
                                     f"{tmp_path}/genotype.json: RuntimeError: no room\n")


def test_the_search_draws_its_genotype_file(tmp_path, capsys):
  path = tmp_path / "genotype.json"
  path.write_text(json.dumps({"nb201": NB201_CELL}))
  draw.draw_final_cell(str(path))
  check_images(tmp_path / "genotype")
  assert capsys.readouterr().err == ""
