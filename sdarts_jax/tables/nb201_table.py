"""The NAS-Bench-201 accuracy table (the CSV `sdarts_jax.tables.nb201` reads) from the official
benchmark files, without the official API:

  python -m sdarts_jax.tables.nb201_table --source=PATH --out=nb201.csv

PATH is one of (docs/data.md says where each comes from):
  - NAS-Bench-201's file, `NAS-Bench-201-v1_0-e61699.pth` or `NAS-Bench-201-v1_1-096897.pth`
    (what `torch.save` wrote: a dict with meta_archs, arch2infos {index: {"less": ...,
    "full": ...}} and evaluated_indexes; the 200-epoch results are "full");
  - NATS-Bench's topology file, `NATS-tss-v1_0-3ffb9.pickle.pbz2` (the same dict, pickled
    and bz2-compressed, the results keyed by "12" and "200"), or its fast-mode archive
    `NATS-tss-v1_0-3ffb9-simple` (a folder, or the .tar it comes in, of meta.pickle.pbz2
    with meta_archs and one `{index:06d}.pickle.pbz2` per cell, {"12": ..., "200": ...}).

Each cell's results are the official API's state dicts of `ArchResults` (all_results
{(dataset, seed): ResultsCount state}, dataset_seed {dataset: [seeds]}), which hold each
trial's accuracy per evaluation set and epoch in `eval_acc1es["<set>@<epoch>"]`. A row is
what NATS-Bench's `api.get_more_info(i, dataset, hp="200", is_random=False)["test-accuracy"]`
returns, the mean over the trials (seeds) of the accuracy after the last epoch on CIFAR-10's
test set (dataset "cifar10", trained on train+valid, set "ori-test") and on the test halves
of CIFAR-100 and ImageNet16-120 (set "x-test"), with the cell string `api.arch(i)` and
`api.get_unique_str(i)` (`unique_string` here), in the order of the benchmark's indices.
This is how the published table was made (docs/data.md), so converting NATS-Bench's topology
files reproduces it; NAS-Bench-201 v1.0 and v1.1 ran fewer trials of some cells, so their
numbers differ a little and the table's sha256 (printed) is not the published one.

The files are pickles. They are read with an unpickler that builds only plain containers
and numbers (so a file cannot run code); a file that holds anything else is refused unless
--trust_pickle, and a .pth file that holds tensors needs PyTorch (`pip install
torch==2.13.0`), imported only then.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import bz2
import collections
import csv
import hashlib
import io
import os
import pickle
import sys
import tarfile
import zipfile
from typing import Any, Iterator

from sdarts_jax.tables import nb201

# Table column -> (the benchmark's dataset, its evaluation set), as get_more_info reads them.
SOURCES = {nb201.DATASETS["cifar10"]: ("cifar10", "ori-test"),
           nb201.DATASETS["cifar100"]: ("cifar100", "x-test"),
           nb201.DATASETS["imagenet16"]: ("ImageNet16-120", "x-test")}
# The 200-epoch results: "full" in NAS-Bench-201's file, "200" in NATS-Bench's.
FULL_KEYS = ("200", "full")
TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy (pre-zip) torch.save
INSTALL_TORCH = "pip install torch==2.13.0"
# What the restricted unpickler may build: plain containers and numbers.
SAFE_GLOBALS = {("collections", "OrderedDict"), ("collections", "defaultdict"),
                ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "list"),
                ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "int"),
                ("builtins", "float"), ("builtins", "str"), ("builtins", "bytes"),
                ("builtins", "bool"), ("_codecs", "encode"),
                ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}


class ConversionError(ValueError):
  """The source is not a NAS-Bench-201 / NATS-Bench topology file this module reads."""


class _NeedsTorch(Exception):
  """The pickle holds tensors (torch.save's persistent ids)."""


class _Unpickler(pickle.Unpickler):
  """Builds only SAFE_GLOBALS unless trusted; tensors raise _NeedsTorch."""

  def __init__(self, file, trusted: bool, name: str):
    super().__init__(file)
    self.trusted, self.name = trusted, name

  def find_class(self, module, name):
    # Protocol 2 (torch.save's) writes Python 2 names, e.g. __builtin__.set.
    where = _compat_pickle.NAME_MAPPING.get(
        (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
    if self.trusted or where in SAFE_GLOBALS:
      return super().find_class(module, name)
    module, name = where
    if module.startswith("torch"):
      raise _NeedsTorch()
    raise ConversionError(f"{self.name}: holds a {module}.{name}, which this reader does not "
                          f"build (it builds plain containers and numbers only); if the file "
                          f"is the official one, rerun with --trust_pickle")

  def persistent_load(self, pid):
    raise _NeedsTorch()


def _unpickle(file, name: str, trusted: bool) -> Any:
  return _Unpickler(file, trusted, name).load()


def _torch_load(path: str, trusted: bool) -> Any:
  """A torch.save file with tensors in it: PyTorch reads it."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConversionError(f"{path} holds tensors, and reading them needs PyTorch, which is not "
                          f"installed: {INSTALL_TORCH} (only for the conversion)") from None
  return torch.load(path, map_location="cpu", weights_only=not trusted)


def load_torch_file(path: str, trusted: bool = False) -> Any:
  """What torch.save wrote to `path` (zip format, torch >= 1.6, or the legacy one), read
  without PyTorch while it holds no tensors."""
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(names) != 1:
          raise ConversionError(f"{path}: a zip file without torch.save's data.pkl")
        with z.open(names[0]) as f:
          return _unpickle(f, path, trusted)
    with open(path, "rb") as f:
      # Legacy format: magic number, protocol version, system info, then the object.
      try:
        magic = _unpickle(f, path, False)
      except (pickle.UnpicklingError, EOFError, ConversionError):
        magic = None
      if magic != TORCH_MAGIC:
        raise ConversionError(f"{path}: not a torch.save file (neither a zip archive nor the "
                              f"legacy format's magic number)")
      _unpickle(f, path, False)  # protocol version
      _unpickle(f, path, False)  # sys_info
      return _unpickle(f, path, trusted)
  except _NeedsTorch:
    return _torch_load(path, trusted)


def load_pickle_file(path: str, trusted: bool = False) -> Any:
  """A pickle, bz2-compressed (NATS-Bench's .pickle.pbz2) or not."""
  with open(path, "rb") as f:
    compressed = f.read(3) == b"BZh"
  opener = bz2.open if compressed else open
  try:
    with opener(path, "rb") as f:
      return _unpickle(f, path, trusted)
  except _NeedsTorch:
    raise ConversionError(f"{path}: a pickle of tensors, not a benchmark file") from None
  except (pickle.UnpicklingError, EOFError, OSError) as e:
    raise ConversionError(f"{path}: not a pickle ({e})") from None


def _archive_members(path: str, trusted: bool) -> Iterator[tuple[str, Any]]:
  """(file name, content) of every *.pickle.pbz2 in a folder or a .tar."""
  suffix = ".pickle.pbz2"
  if os.path.isdir(path):
    for name in sorted(os.listdir(path)):
      if name.endswith(suffix):
        yield name, load_pickle_file(os.path.join(path, name), trusted)
    return
  with tarfile.open(path) as tar:
    for member in tar:
      name = os.path.basename(member.name)
      if member.isfile() and name.endswith(suffix):
        data = bz2.decompress(tar.extractfile(member).read())
        yield name, _unpickle(io.BytesIO(data), f"{path}:{member.name}", trusted)


def read_benchmark(path: str, trusted: bool = False) -> tuple[list[str], dict[int, dict]]:
  """(meta_archs, {index: the cell's 200-epoch ArchResults state dict}) of a benchmark file
  or archive (the module's docstring lists them)."""
  if not os.path.exists(path):
    raise ConversionError(f"--source={path}: no such file or folder")
  if os.path.isdir(path) or tarfile.is_tarfile(path):
    meta, per_cell = None, {}
    for name, content in _archive_members(path, trusted):
      if name.startswith("meta."):
        meta = content
      elif name.split(".")[0].isdigit():
        per_cell[int(name.split(".")[0])] = content
    if meta is None:
      raise ConversionError(f"{path}: no meta.pickle.pbz2 (expected NATS-Bench's "
                            f"NATS-tss-v1_0-3ffb9-simple archive)")
    data = {"meta_archs": meta.get("meta_archs"), "arch2infos": per_cell}
  elif zipfile.is_zipfile(path) or path.endswith(".pth"):
    data = load_torch_file(path, trusted)
  else:
    data = load_pickle_file(path, trusted)
  if not isinstance(data, dict) or not isinstance(data.get("meta_archs"), list) \
      or not isinstance(data.get("arch2infos"), dict):
    raise ConversionError(f"{path}: not a NAS-Bench-201 / NATS-Bench topology file (expected "
                          f"a dict with meta_archs and arch2infos)")
  results = {}
  for index, by_hp in data["arch2infos"].items():
    key = next((k for k in FULL_KEYS if k in by_hp), None)
    if key is None:
      raise ConversionError(f"{path}: cell {index} has no 200-epoch results (keys "
                            f"{', '.join(map(str, by_hp))}; expected one of {FULL_KEYS})")
    results[int(index)] = by_hp[key]
  if not results:
    raise ConversionError(f"{path}: no cell has results")
  return list(data["meta_archs"]), results


def unique_string(arch: str) -> str:
  """NATS-Bench's `get_unique_str`: the computation of the cell's output node, as the
  official `to_unique_str(consider_zero=True)` writes it ("#" a zero, skip_connect passes
  its input through, op(x) as "(x)@op", a node's inputs sorted and joined by "+")."""
  nodes = ["0"]
  for text in arch.split("+"):
    terms = []
    for item in filter(None, text.split("|")):
      op, _, src = item.partition("~")
      x = nodes[int(src)]
      terms.append("#" if op == "none" or x == "#" else x if op == "skip_connect"
                   else f"({x})@{op}")
    nodes.append("+".join(sorted(terms)))
  return nodes[-1]


def accuracy(state: dict, dataset: str, setname: str, where: str) -> float:
  """The mean over trials of the accuracy on `setname` after the last epoch, as the
  official `ArchResults.get_metrics(dataset, setname, is_random=False)` averages it."""
  seeds = state.get("dataset_seed", {}).get(dataset)
  if not seeds:
    raise ConversionError(f"{where}: no {dataset} results")
  values = []
  for seed in seeds:
    trial = state["all_results"][(dataset, seed)]
    key = f"{setname}@{trial['epochs'] - 1}"
    if key not in trial["eval_acc1es"]:
      raise ConversionError(f"{where}: {dataset} seed {seed} has no {key} accuracy")
    values.append(float(trial["eval_acc1es"][key]))
  return sum(values) / len(values)


def rows(meta_archs: list[str], results: dict[int, dict],
         where: str = "the source") -> Iterator[tuple]:
  """The table's rows (nb201.COLUMNS), by the benchmark's index."""
  for index in sorted(results):
    if not 0 <= index < len(meta_archs):
      raise ConversionError(f"{where}: cell {index} is not in meta_archs")
    arch = meta_archs[index]
    state = results[index]
    if state.get("arch_str", arch) != arch:
      raise ConversionError(f"{where}: cell {index} is {arch} in meta_archs but "
                            f"{state['arch_str']} in its results")
    cell = f"{where}: cell {index} ({arch})"
    values = {column: accuracy(state, dataset, setname, cell)
              for column, (dataset, setname) in SOURCES.items()}
    yield tuple(values[c] for c in nb201.DATASETS.values()) + (arch, unique_string(arch))


def write_table(table_rows, out: str) -> str:
  """Write the CSV as the published table is written (floats as Python writes them, "\\n"
  line ends) and return its sha256."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(nb201.COLUMNS)
    writer.writerows(table_rows)
  with open(out, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def convert(source: str, out: str, trusted: bool = False) -> tuple[int, str]:
  """Convert the benchmark at `source` into the CSV `out`: (rows written, the CSV's sha256).
  The CSV is checked by nb201.Table.load before it is reported."""
  meta_archs, results = read_benchmark(source, trusted)
  digest = write_table(list(rows(meta_archs, results, source)), out)
  nb201.Table.load(out)
  return len(results), digest


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m sdarts_jax.tables.nb201_table",
      description="Write the NAS-Bench-201 accuracy table (config.nb201.table) from the "
                  "official NAS-Bench-201 or NATS-Bench topology files.")
  parser.add_argument("--source", required=True,
                      help="NAS-Bench-201-v1_0-e61699.pth (or v1_1), "
                           "NATS-tss-v1_0-3ffb9.pickle.pbz2, or NATS-tss-v1_0-3ffb9-simple "
                           "(the folder or its .tar)")
  parser.add_argument("--out", required=True, help="the CSV to write")
  parser.add_argument("--trust_pickle", action="store_true",
                      help="unpickle the source without restriction (only a file from the "
                           "official source: a pickle can run code)")
  parser.add_argument("--helpfull", action="help", help=argparse.SUPPRESS)  # as absl's
  args = parser.parse_args(argv)
  try:
    count, digest = convert(os.path.expanduser(args.source), os.path.expanduser(args.out),
                            args.trust_pickle)
  except (ConversionError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  total = len(nb201.all_cells())
  print(f"wrote {args.out}: {count:,} of the {total:,} cells, sha256 {digest}")
  if count != total:
    print(f"warning: a search needs all {total:,} cells; this table has {count:,}",
          file=sys.stderr)
  if digest == nb201.TABLE_SHA256:
    print("it is the published table: use --config.nb201.table=" + args.out)
  else:
    print(f"it is not byte for byte the published table (sha256 {nb201.TABLE_SHA256}): use "
          f"--config.nb201.table={args.out} --config.nb201.table_sha256={digest}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
