"""Cell drawings: every genotype the project writes, drawn to PNG and SVG with matplotlib.

  python -m sdarts_jax.analysis.draw runs/adv/genotype.json   # runs/adv/genotype.{png,svg}
  python -m sdarts_jax.analysis.draw darts_v2 --out=docs      # a published cell, by name

A DARTS-family genotype draws its normal and reduction cells as the DARTS paper does: the
cell inputs c_{k-2} and c_{k-1} on the left, the intermediate nodes 0..3, the op written on
each edge, and the output c_{k} (the concatenation of the `*_concat` states) on the right.
A NAS-Bench-201 cell draws its nodes 0..3 with the op on each edge (`none` edges carry
nothing and are left out); a NAS-Bench-101 cell (1Shot1 spaces) its input, its vertices
labelled with their op, and its output.

The layout is deterministic: nodes left to right in their order, and every edge takes the
first bend of `BENDS` and label position of `LABEL_AT` that clear the other nodes and the
labels placed before it. Lengths are in inches (one data unit is one inch of the figure).
"""
from __future__ import annotations

import os
from typing import NamedTuple

import matplotlib
import numpy as np
from absl import app, flags
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path

from sdarts_jax.model import spaces
from sdarts_jax.run import lifecycle, metrics
from sdarts_jax.search import genotype as genotype_lib
from sdarts_jax.tables import nb201

DARTS_INPUTS, DARTS_OUTPUT = ("c_{k-2}", "c_{k-1}"), "c_{k}"
CELL_TITLES = {"normal": "normal cell", "reduce": "reduction cell"}
COLORS = {"input": "#b4eeb4", "node": "#add8e6", "output": "#eee8aa"}  # as DARTS's plots
SPACING = 2.0        # inches between consecutive nodes of a DARTS cell
BENCH_SPACING = 2.5  # of a benchmark cell (room for a label between neighbours, long names)
ZIGZAG = 0.45        # inches intermediate nodes sit above / below the middle line
NODE_FONT, EDGE_FONT = 10, 8  # points
CHAR_IN = 0.6 / 72   # width of a character per point of font size, inches
TEXT_PAD = (0.1, 0.08)    # inches around a text, on each side (x, y)
MIN_NODE = (0.3, 0.2)     # smallest half width and half height of a node, inches
TITLE_IN = 0.4       # room above each cell for its title, inches
PNG_DPI = 110
MARGIN = 0.25        # inches of room kept around nodes and labels
BENDS = (0.0, -0.25, 0.25, -0.45, 0.45, -0.7, 0.7)  # `curve`'s rad, tried in order
LABEL_AT = (0.5, 0.35, 0.65)  # positions along an edge (0: source, 1: target), tried in order
CURVE_SAMPLES = 40   # points of a drawn edge
BISECTIONS = 20      # steps finding where an edge leaves its source and enters its target
SVG_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "sdarts_jax"}  # text as text; fixed ids


class Node(NamedTuple):
  """A node of a drawing: label (its name in the edge list), centre (x, y) in inches, and
  kind ("input", "node" or "output": its colour)."""
  label: str
  x: float
  y: float
  kind: str


# (source label, target label, op); op None for an edge that applies none (into a
# DARTS cell's output, which concatenates, and every NAS-Bench-101 edge).
Edge = tuple[str, str, str | None]


class Graph(NamedTuple):
  """One cell to draw."""
  title: str
  nodes: tuple[Node, ...]
  edges: tuple[Edge, ...]


class Route(NamedTuple):
  """How an edge is drawn: its label's box (x, y, half width, half height; None without
  op) and the points [CURVE_SAMPLES, 2] of its curve (`curve`) from the border of its
  source's box to that of its target's."""
  edge: Edge
  label: tuple[float, float, float, float] | None
  curve: np.ndarray


# ---------------------------------------------------------------- cells as graphs

def _kinds(count: int) -> list[str]:
  """The kinds of `count` nodes in order: an input, intermediate nodes, an output."""
  return ["input"] + ["node"] * (count - 2) + ["output"]


def _zigzag(i: int) -> float:
  """The height of intermediate node i: alternately above and below the middle line, so
  that edges skipping a node pass beside it."""
  return ZIGZAG if i % 2 == 0 else -ZIGZAG


def darts_graph(cell: list, concat: list[int], title: str) -> Graph:
  """A DARTS cell: cell [[op, input], ...] (`genotype.EDGES_PER_NODE` per node; input 0
  and 1 are the cell inputs, k >= 2 node k - 2), concat the states the output joins."""
  num_nodes = len(cell) // genotype_lib.EDGES_PER_NODE
  names = DARTS_INPUTS + tuple(str(i) for i in range(num_nodes))
  nodes = (Node(DARTS_INPUTS[0], 0.0, 1.0, "input"), Node(DARTS_INPUTS[1], 0.0, -1.0, "input"))
  nodes += tuple(Node(str(i), SPACING * (i + 1), _zigzag(i), "node") for i in range(num_nodes))
  nodes += (Node(DARTS_OUTPUT, SPACING * (num_nodes + 1), 0.0, "output"),)
  edges = tuple((names[src], str(i // genotype_lib.EDGES_PER_NODE), op)
                for i, (op, src) in enumerate(cell))
  return Graph(title, nodes, edges + tuple((names[s], DARTS_OUTPUT, None) for s in concat))


def nb201_graph(arch: str) -> Graph:
  """A NAS-Bench-201 cell string: nodes 0 (input) .. 3 (output) and the op of every edge
  other than `none`."""
  kinds = _kinds(spaces.NB201_CELL.inputs + spaces.NB201_CELL.num_nodes)
  nodes = tuple(Node(str(k), BENCH_SPACING * k, 0.0, kind) for k, kind in enumerate(kinds))
  edges = tuple((str(src), str(target + spaces.NB201_CELL.inputs), op)
                for op, (src, target) in zip(nb201.parse(arch), spaces.NB201_CELL.edges())
                if op != "none")
  return Graph("NAS-Bench-201 cell", nodes, edges)


def nb101_label(vertex: int, ops: list[str]) -> str:
  """The label of a NAS-Bench-101 vertex: "input", "output", or "v: op"."""
  return ops[vertex] if vertex in (0, len(ops) - 1) else f"{vertex}: {ops[vertex]}"


def nb101_graph(matrix, ops: list[str]) -> Graph:
  """A NAS-Bench-101 cell: matrix [V, V] (matrix[u, v] = 1 for an edge u -> v) and V ops,
  'input' first and 'output' last."""
  matrix = np.asarray(matrix)
  nodes = tuple(Node(nb101_label(v, ops), BENCH_SPACING * v,
                     _zigzag(v - 1) if kind == "node" else 0.0, kind)
                for v, kind in enumerate(_kinds(len(ops))))
  edges = tuple((nb101_label(int(u), ops), nb101_label(int(v), ops), None)
                for u, v in zip(*np.nonzero(matrix)))
  return Graph("NAS-Bench-101 cell", nodes, edges)


def graphs(genotype: dict) -> list[Graph]:
  """The cells of a genotype (`genotype.validate`d): normal and reduction cells, or the
  NAS-Bench-201 cell, or the NAS-Bench-101 cell."""
  if "nb101" in genotype:
    return [nb101_graph(genotype["nb101"]["matrix"], genotype["nb101"]["ops"])]
  if "nb201" in genotype:
    return [nb201_graph(genotype["nb201"])]
  return [darts_graph(genotype[t], genotype[f"{t}_concat"], CELL_TITLES[t])
          for t in spaces.CELL_TYPES]


# ---------------------------------------------------------------- layout

def shown(label: str) -> str:
  """The text drawn for a node label: DARTS's c_{...} states in math type."""
  return f"${label}$" if label.startswith("c_") else label


def text_half_size(text: str, fontsize: float) -> tuple[float, float]:
  """(half width, half height) in inches of a box around `text` (an estimate from its
  length; math markup counts as nothing)."""
  plain = text.strip("$").replace("_{", "").replace("}", "")
  return (0.5 * len(plain) * fontsize * CHAR_IN + TEXT_PAD[0],
          0.5 * fontsize / 72 + TEXT_PAD[1])


def node_half_size(node: Node) -> tuple[float, float]:
  """(half width, half height) of a node's box, inches; at least MIN_NODE."""
  w, h = text_half_size(shown(node.label), NODE_FONT)
  return max(w, MIN_NODE[0]), max(h, MIN_NODE[1])


def curve(p: np.ndarray, q: np.ndarray, rad: float, t: np.ndarray) -> np.ndarray:
  """Points [len(t), 2] at t of the edge from p to q with bend rad: the quadratic Bezier
  whose control point is the midpoint moved by rad * (dy, -dx) (matplotlib's arc3); rad < 0
  bends a left-to-right edge upwards."""
  d = q - p
  control = (p + q) / 2 + rad * np.array([d[1], -d[0]])
  t = t[:, None]
  return (1 - t) ** 2 * p + 2 * (1 - t) * t * control + t ** 2 * q


def _crosses(xy: np.ndarray, boxes: list[tuple]) -> bool:
  """Whether a point of xy [n, 2] lies in one of boxes, each (x, y, half width, half height)."""
  return any(np.any((abs(xy[:, 0] - x) < w) & (abs(xy[:, 1] - y) < h)) for x, y, w, h in boxes)


def _hits(box: tuple, boxes: list[tuple]) -> bool:
  """Whether box (x, y, half width, half height) overlaps one of boxes."""
  x, y, w, h = box
  return any(abs(x - bx) < w + bw and abs(y - by) < h + bh for bx, by, bw, bh in boxes)


def _border(p: np.ndarray, q: np.ndarray, rad: float, box: tuple, inside: float,
            outside: float) -> float:
  """The t at which the curve (`curve`) crosses the border of box, by bisection between a
  t inside it and one outside."""
  for _ in range(BISECTIONS):
    middle = (inside + outside) / 2
    if _crosses(curve(p, q, rad, np.array([middle])), [box]):
      inside = middle
    else:
      outside = middle
  return outside


def _place_label(p: np.ndarray, q: np.ndarray, bends: list[float], op: str,
                 obstacles: list[tuple]) -> tuple[float, tuple]:
  """(bend, label box) of the first bend and LABEL_AT position whose box around `op` clears
  the obstacles; else the first bend with its label midway."""
  w, h = text_half_size(op, EDGE_FONT)
  for rad in bends:
    for t in LABEL_AT:
      x, y = curve(p, q, rad, np.array([t]))[0]
      if not _hits((x, y, w, h), obstacles):
        return rad, (x, y, w, h)
  x, y = curve(p, q, bends[0], np.array([0.5]))[0]
  return bends[0], (x, y, w, h)


def route(graph: Graph) -> list[Route]:
  """How every edge is drawn, in order. Its bends: those of BENDS whose curve clears every
  other node's box (with MARGIN), or a straight line when none does; an edge without op
  takes the first, an edge with one the first whose label clears the nodes and the labels
  placed before it (`_place_label`)."""
  where = {n.label: np.array([n.x, n.y]) for n in graph.nodes}
  boxes = {n.label: (n.x, n.y, *node_half_size(n)) for n in graph.nodes}
  node_boxes = {label: (x, y, w + MARGIN, h + MARGIN) for label, (x, y, w, h) in boxes.items()}
  samples = np.linspace(0.0, 1.0, CURVE_SAMPLES)
  labels: list[tuple] = []
  routes = []
  for edge in graph.edges:
    src, dst, op = edge
    p, q = where[src], where[dst]
    others = [box for label, box in node_boxes.items() if label not in (src, dst)]
    bends = [rad for rad in BENDS
             if not _crosses(curve(p, q, rad, samples[1:-1]), others)] or [0.0]
    rad, label = bends[0], None
    if op is not None:
      rad, label = _place_label(p, q, bends, op, list(node_boxes.values()) + labels)
      labels.append(label)
    t0, t1 = _border(p, q, rad, boxes[src], 0.0, 0.5), _border(p, q, rad, boxes[dst], 1.0, 0.5)
    routes.append(Route(edge, label, curve(p, q, rad, np.linspace(t0, t1, CURVE_SAMPLES))))
  return routes


# ---------------------------------------------------------------- rendering

def extent(graph: Graph, routes: list[Route]) -> tuple[float, float, float, float]:
  """(x0, x1, y0, y1) in inches holding every node box, curve and label, with MARGIN."""
  boxes = [(n.x, n.y, *node_half_size(n)) for n in graph.nodes]
  boxes += [r.label for r in routes if r.label is not None]
  boxes += [(x, y, 0.0, 0.0) for r in routes for x, y in r.curve]
  x0 = min(x - w for x, _, w, _ in boxes) - MARGIN
  x1 = max(x + w for x, _, w, _ in boxes) + MARGIN
  y0 = min(y - h for _, y, _, h in boxes) - MARGIN
  y1 = max(y + h for _, y, _, h in boxes) + MARGIN
  return x0, x1, y0, y1


def draw_cell(ax, graph: Graph, routes: list[Route]) -> list[Edge]:
  """Draw one cell's nodes and routed edges on `ax`; returns the edges drawn."""
  for n in graph.nodes:
    w, h = node_half_size(n)
    ax.add_patch(FancyBboxPatch(
        (n.x - w, n.y - h), 2 * w, 2 * h, boxstyle="round,pad=0,rounding_size=0.12",
        facecolor=COLORS[n.kind], edgecolor="black", linewidth=1.0, zorder=2))
    ax.text(n.x, n.y, shown(n.label), ha="center", va="center", fontsize=NODE_FONT, zorder=3)
  drawn = []
  for r in routes:
    op = r.edge[2]
    ax.add_patch(FancyArrowPatch(path=Path(r.curve), arrowstyle="-|>", mutation_scale=12,
                                 shrinkA=1, shrinkB=1, linewidth=1.0, color="0.25", zorder=1))
    if op is not None:
      ax.text(r.label[0], r.label[1], op, ha="center", va="center", fontsize=EDGE_FONT,
              zorder=4, bbox={"boxstyle": "round,pad=0.1", "facecolor": "white",
                              "edgecolor": "none", "alpha": 0.85})
    drawn.append(r.edge)
  return drawn


def draw_graphs(cells: list[Graph], stem: str) -> dict[str, list[Edge]]:
  """Draw the cells one above the other, each titled, into stem.png and stem.svg (text kept
  as text in the SVG); returns title -> the edges drawn."""
  laid = [(g, route(g)) for g in cells]
  boxes = [extent(g, routes) for g, routes in laid]
  width = max(x1 - x0 for x0, x1, _, _ in boxes)
  height = sum(y1 - y0 + TITLE_IN for _, _, y0, y1 in boxes)
  fig = Figure(figsize=(width, height))
  top, drawn = height, {}
  for (graph, routes), (x0, x1, y0, y1) in zip(laid, boxes):
    top -= y1 - y0 + TITLE_IN
    ax = fig.add_axes(((width - (x1 - x0)) / 2 / width, top / height, (x1 - x0) / width,
                       (y1 - y0) / height))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_axis_off()
    ax.set_title(graph.title, fontsize=NODE_FONT + 1)
    drawn[graph.title] = draw_cell(ax, graph, routes)
  with matplotlib.rc_context(SVG_STYLE):
    fig.savefig(f"{stem}.png", dpi=PNG_DPI)
    fig.savefig(f"{stem}.svg", metadata={"Date": None})
  return drawn


def draw(genotype: dict, stem: str) -> dict[str, list[Edge]]:
  """Draw every cell of a genotype into stem.png and stem.svg; returns cell title -> the
  edges drawn, each (source label, target label, op or None)."""
  return draw_graphs(graphs(genotype), stem)


def draw_beside(path: str) -> dict[str, list[Edge]]:
  """Draw the genotype file `path` (x.json) into x.png and x.svg beside it."""
  return draw(genotype_lib.load(path), os.path.splitext(path)[0])


def draw_final_cell(path: str) -> None:
  """A search's final cell drawn beside its genotype file (`draw_beside`: genotype.png,
  genotype.svg) by the process that writes the run's outputs, as the search commands
  (`sdarts_jax.main`, `sdarts_jax.demo`) do when a search ends. A failure is a warning: the
  search's results stand without the picture."""
  if not metrics.is_writer():
    return
  try:
    draw_beside(path)
  except Exception as e:  # noqa: BLE001 (a bug in the drawing must not cost a search)
    metrics.warn(f"could not draw the cell in {path}: {type(e).__name__}: {e}")


# ---------------------------------------------------------------- command line

def load(source: str) -> tuple[dict, str]:
  """(genotype, default output stem) of a published genotype's name (stem: the name) or of
  a genotype file of any cell kind (stem: the file without .json). ValueError otherwise."""
  table = genotype_lib.published()
  if source in table:
    return table[source], source
  if os.path.isfile(source):
    return genotype_lib.load(source), os.path.splitext(source)[0]
  raise ValueError(f"unknown genotype {source!r}: neither a genotype JSON file nor a published "
                   f"name ({', '.join(sorted(table))})")


def command(args: list[str], out: str) -> dict[str, list[Edge]]:
  """Draw the one genotype named in args into --out (default: beside the file, or the
  current directory for a published name); prints the files written, returns `draw`'s
  edges."""
  if len(args) != 1:
    raise ValueError("give one genotype: python -m sdarts_jax.analysis.draw "
                     "GENOTYPE.json|PUBLISHED_NAME [--out=DIR]")
  genotype, stem = load(args[0])
  if out:
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, os.path.basename(stem))
  drawn = draw(genotype, stem)
  print(f"wrote {stem}.png and {stem}.svg")
  return drawn


def main(argv):
  lifecycle.as_command(command, argv[1:], flags.FLAGS.out)


def define_flags() -> None:
  flags.DEFINE_string("out", "", "Output directory (default: beside the genotype file, or the "
                      "current directory for a published name).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
