"""The NAS-Bench-201 table outside this workplace: the converter from the official benchmark
files (on small files written here in their formats), the table's checksum, and the error
that names both ways to the table."""
import bz2
import csv
import hashlib
import os
import pickle
import tarfile
import zipfile

import pytest

from conftest import override, shared_data
from sdarts_jax import defaults
from sdarts_jax.tables import nb201, nb201_table

SHARED = shared_data("nb201")

# Cells of the tiny benchmark, with their UniqueString written out by hand from the official
# `to_unique_str(consider_zero=True)`: "#" a zero (none, or anything of a zero), skip_connect
# passes its input through, op(x) is "(x)@op", a node's terms sorted and joined by "+".
A = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
B = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
C = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|none~0|nor_conv_1x1~1|none~2|"
D = "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"
X = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"  # in meta_archs, not evaluated
UNIQUE = {A: "(0)@avg_pool_3x3+(0)@avg_pool_3x3+(0)@nor_conv_1x1+(0)@nor_conv_1x1",
          B: "0+0+0+0", C: "#+#+(0)@nor_conv_1x1", D: "#+#+#"}
META = [A, X, B, C, D]
# 200-epoch test accuracies per trial (seed): CIFAR-10 "ori-test", CIFAR-100 and
# ImageNet16-120 "x-test" after the last epoch.
TESTS = {0: {"cifar10": {777: 85.0, 888: 86.0, 999: 86.59},
             "cifar100": {777: 52.5, 888: 53.5}, "ImageNet16-120": {777: 26.25, 888: 26.75}},
         2: {"cifar10": {777: 54.5}, "cifar100": {777: 15.5}, "ImageNet16-120": {777: 16.5}},
         3: {"cifar10": {111: 88.5, 777: 89.0}, "cifar100": {111: 62.0, 777: 62.5},
             "ImageNet16-120": {111: 32.0, 777: 33.0}},
         4: {"cifar10": {777: 10.0}, "cifar100": {777: 1.0}, "ImageNet16-120": {777: 0.8333}}}
# The rows the converter must write, by hand: the means of the trials above.
EXPECTED = [
    ["85.86333333333334", "53.0", "26.5", A, UNIQUE[A]],  # (85 + 86 + 86.59) / 3
    ["54.5", "15.5", "16.5", B, UNIQUE[B]],
    ["88.75", "62.25", "32.5", C, UNIQUE[C]],
    ["10.0", "1.0", "0.8333", D, UNIQUE[D]]]


def _trial(dataset, seed, test, epochs):
  """One ResultsCount state dict, as the official API keeps it: accuracy per evaluation set
  and epoch under "<set>@<epoch>". Every other set and epoch holds a wrong value, so that
  reading any of them shows in the rows."""
  sets = {"cifar10-valid": ("x-valid", "ori-test"), "cifar10": ("ori-test",),
          "cifar100": ("x-valid", "x-test", "ori-test"),
          "ImageNet16-120": ("x-valid", "x-test", "ori-test")}[dataset]
  wanted = "ori-test" if dataset == "cifar10" else "x-test"
  accs = {f"{name}@{e}": (test if (name, e) == (wanted, epochs - 1) else 99.0)
          for name in sets for e in range(epochs)}
  return {"name": dataset, "net_state_dict": None, "train_acc1es": {e: 98.0 for e in range(epochs)},
          "train_acc5es": None, "train_losses": {e: 0.1 for e in range(epochs)},
          "train_times": None, "arch_config": {"channel": 16, "num_cells": 5}, "params": 0.1,
          "flop": 10.0, "seed": seed, "epochs": epochs, "latency": None,
          "eval_names": list(sets), "eval_acc1es": accs,
          "eval_losses": {k: 1.0 for k in accs}, "eval_times": {k: 0.5 for k in accs}}


def _arch_results(index, tests, epochs):
  """An ArchResults state dict; cifar10-valid has trials too (never read for the table)."""
  tests = {"cifar10-valid": {777: 1.0}, **tests}
  return {"arch_index": index, "arch_str": META[index],
          "all_results": {(d, s): _trial(d, s, t, epochs)
                          for d, trials in tests.items() for s, t in trials.items()},
          "dataset_seed": {d: sorted(trials) for d, trials in tests.items()},
          "clear_net_done": True}


def _less(tests):
  """The 12-epoch results, all wrong for the table."""
  return {d: {s: 5.0 for s in trials} for d, trials in tests.items()}


def nb201_dict():
  """NAS-Bench-201's file: 200-epoch results under "full", 12-epoch under "less"."""
  infos = {i: {"less": _arch_results(i, _less(TESTS[i]), 12),
               "full": _arch_results(i, TESTS[i], 200)} for i in (4, 0, 3, 2)}
  return {"meta_archs": META, "arch2infos": infos, "evaluated_indexes": set(TESTS)}


def _per_cell(i):
  return {"12": _arch_results(i, _less(TESTS[i]), 12), "200": _arch_results(i, TESTS[i], 200)}


def nats_dict():
  """NATS-Bench's topology file: results under "12" and "200"."""
  return {"meta_archs": META, "arch2infos": {i: _per_cell(i) for i in (4, 0, 3, 2)},
          "evaluated_indexes": set(TESTS)}


def torch_save_legacy(obj, path, persistent_id=None):
  """What torch.save(obj, path, _use_new_zipfile_serialization=False) writes for an object
  without tensors (the format of NAS-Bench-201-v1_0-e61699.pth, saved before torch 1.6):
  pickles (protocol 2) of the magic number, the protocol version, the system info, the
  object, and the (empty) list of storage keys."""
  with open(path, "wb") as f:
    for header in (nb201_table.TORCH_MAGIC, 1001,
                   {"protocol_version": 1001, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}):
      pickle.dump(header, f, protocol=2)
    pickler = pickle.Pickler(f, protocol=2)
    if persistent_id:
      pickler.persistent_id = persistent_id
    pickler.dump(obj)
    pickle.dump([], f, protocol=2)


def torch_save_zip(obj, path):
  """What torch.save writes (torch >= 1.6) for an object without tensors: a zip archive
  with <stem>/data.pkl (protocol 2), byteorder and version."""
  stem = os.path.basename(path).rsplit(".", 1)[0]
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr(f"{stem}/data.pkl", pickle.dumps(obj, protocol=2))
    z.writestr(f"{stem}/byteorder", "little")
    z.writestr(f"{stem}/version", "3\n")


def pickle_save(obj, path):
  """NATS-Bench's pickle_save: protocol 4, bz2-compressed."""
  with bz2.BZ2File(path, "wb") as f:
    pickle.dump(obj, f, protocol=4)
  return str(path)


def nats_simple(folder):
  """NATS-tss-v1_0-3ffb9-simple: meta.pickle.pbz2 (arch2infos None) and one file per cell."""
  os.makedirs(folder)
  pickle_save({"meta_archs": META, "total_archs": len(META), "arch2infos": None,
               "evaluated_indexes": set()}, os.path.join(folder, "meta.pickle.pbz2"))
  for i in TESTS:
    pickle_save(_per_cell(i), os.path.join(folder, f"{i:06d}.pickle.pbz2"))
  return str(folder)


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def _source(kind, tmp_path):
  if kind == "nb201_pth_legacy":
    path = tmp_path / "NAS-Bench-201-v1_0-e61699.pth"
    torch_save_legacy(nb201_dict(), path)
  elif kind == "nb201_pth_zip":
    path = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    torch_save_zip(nb201_dict(), path)
  elif kind == "nats_pickle":
    path = pickle_save(nats_dict(), tmp_path / "NATS-tss-v1_0-3ffb9.pickle.pbz2")
  elif kind == "nats_simple_folder":
    path = nats_simple(tmp_path / "NATS-tss-v1_0-3ffb9-simple")
  else:
    folder = nats_simple(tmp_path / "NATS-tss-v1_0-3ffb9-simple")
    path = tmp_path / "NATS-tss-v1_0-3ffb9-simple.tar"
    with tarfile.open(path, "w") as tar:
      tar.add(folder, arcname="NATS-tss-v1_0-3ffb9-simple")
  return str(path)


@pytest.mark.parametrize("kind", ["nb201_pth_legacy", "nb201_pth_zip", "nats_pickle",
                                  "nats_simple_folder", "nats_simple_tar"])
def test_converter_rows_by_hand(tmp_path, kind, capsys):
  out = str(tmp_path / "out" / "nb201.csv")
  assert nb201_table.main([f"--source={_source(kind, tmp_path)}", f"--out={out}"]) == 0
  assert read_csv(out) == [list(nb201.COLUMNS)] + EXPECTED
  with open(out, "rb") as f:
    content = f.read()
  assert b"\r" not in content and content.endswith(b"\n")
  digest = hashlib.sha256(content).hexdigest()
  printed = capsys.readouterr()
  assert f"sha256 {digest}" in printed.out
  assert f"--config.nb201.table_sha256={digest}" in printed.out
  assert "needs all 15,625 cells; this table has 4" in printed.err
  table = nb201.Table.load(out, digest)
  assert table.query(A)["nb201_cifar10"] == pytest.approx(257.59 / 3)
  assert table.num_groups == 4


def test_converter_with_torch_save(tmp_path):
  """The same rows from files that PyTorch itself wrote (both of its formats)."""
  torch = pytest.importorskip("torch", reason="PyTorch is not installed (the converter reads "
                                              "torch.save files without it; this checks them "
                                              "against torch's own writer)")
  for zipped in (False, True):
    path = str(tmp_path / f"nb201_{zipped}.pth")
    torch.save(nb201_dict(), path, _use_new_zipfile_serialization=zipped)
    out = str(tmp_path / f"{zipped}.csv")
    nb201_table.convert(path, out)
    assert read_csv(out) == [list(nb201.COLUMNS)] + EXPECTED


def test_tensors_need_torch_and_say_how_to_install(tmp_path):
  try:
    import torch  # noqa: F401
    pytest.skip("PyTorch is installed here: it reads the tensors")
  except ImportError:
    pass
  marker = object()
  data = nb201_dict()
  data["arch2infos"][0]["full"]["all_results"][("cifar10", 777)]["net_state_dict"] = marker
  path = tmp_path / "with_tensors.pth"
  torch_save_legacy(data, path, lambda obj: ("storage", "FloatStorage", "0", "cpu", 1)
                    if obj is marker else None)
  with pytest.raises(nb201_table.ConversionError, match="pip install torch==2.13.0"):
    nb201_table.read_benchmark(str(path))


class _NotPlainData:
  def __reduce__(self):
    return (os.getcwd, ())


def test_unpickler_builds_plain_data_only(tmp_path):
  data = nats_dict()
  data["arch2infos"][0]["200"]["clear_net_done"] = _NotPlainData()
  path = pickle_save(data, tmp_path / "NATS-tss-v1_0-3ffb9.pickle.pbz2")
  with pytest.raises(nb201_table.ConversionError, match="holds a posix.getcwd.*--trust_pickle"):
    nb201_table.read_benchmark(path)
  meta, results = nb201_table.read_benchmark(path, trusted=True)
  assert meta == META and sorted(results) == [0, 2, 3, 4]


@pytest.mark.parametrize("content,message", [
    (b"not a benchmark", "not a pickle"),
    (pickle.dumps([1, 2]), "not a NAS-Bench-201 / NATS-Bench topology file"),
    (pickle.dumps({"meta_archs": META, "arch2infos": {0: {"12": {}}}}),
     "cell 0 has no 200-epoch results"),
])
def test_converter_errors(tmp_path, capsys, content, message):
  path = tmp_path / "source.pickle"
  path.write_bytes(content)
  assert nb201_table.main([f"--source={path}", f"--out={tmp_path / 'o.csv'}"]) == 2
  assert message in capsys.readouterr().err
  with pytest.raises(nb201_table.ConversionError, match="no such file"):
    nb201_table.read_benchmark(str(tmp_path / "absent.pth"))


def test_a_missing_trial_is_an_error(tmp_path):
  data = nats_dict()
  del data["arch2infos"][3]["200"]["all_results"][("cifar100", 777)]["eval_acc1es"]["x-test@199"]
  path = pickle_save(data, tmp_path / "b.pickle.pbz2")
  with pytest.raises(nb201_table.ConversionError, match=r"cell 3 .* cifar100 seed 777 has no "
                                                        r"x-test@199"):
    nb201_table.convert(path, str(tmp_path / "o.csv"))


# ---------------------------------------------------------------- the checksum

def _small_table(path):
  with open(path, "w", newline="") as f:
    csv.writer(f, lineterminator="\n").writerows([nb201.COLUMNS] + EXPECTED)
  return str(path)


def _config(table, **overrides):
  return override(defaults.from_file("nb201_search"), {"nb201.table": table, **overrides})


def test_the_default_config_checks_the_published_checksum():
  assert defaults.from_file("nb201_search", "method=rs").nb201.table_sha256 == nb201.TABLE_SHA256
  assert len(nb201.TABLE_SHA256) == 64 and int(nb201.TABLE_SHA256, 16) >= 0
  assert "/v-tao/nats-bench-landscape/b307ae5" in nb201.TABLE_URL


def test_checksum_mismatch_is_a_clear_error_with_the_override(tmp_path):
  path = _small_table(tmp_path / "t.csv")
  digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
  assert nb201.Table.load(path, digest).num_groups == 4
  with open(path, "a") as f:
    f.write(",".join(["50.0", "10.0", "10.0", X, "#"]) + "\n")  # one row more
  with pytest.raises(ValueError, match=f"config.nb201.table={path}: its sha256 is") as e:
    nb201.Table.load(path, digest)
  assert "config.nb201.table_sha256" in str(e.value) and digest in str(e.value)
  # In a search's config: the published checksum by default, its own digest, or none.
  with pytest.raises(ValueError, match="not the published NAS-Bench-201 table's") as e:
    nb201.table_for(_config(path))
  message = str(e.value)
  assert nb201.TABLE_URL in message and nb201.TABLE_SHA256 in message
  assert "python -m sdarts_jax.tables.nb201_table" in message
  assert "--config.nb201.table_sha256=''" in message
  for pin in ("", nb201.sha256_of(path)):  # the check passes, then the table is incomplete
    with pytest.raises(ValueError, match="cells are missing"):
      nb201.table_for(_config(path, **{"nb201.table_sha256": pin}))


@pytest.mark.skipif(SHARED is None, reason="the shared NAS-Bench-201 table is not here")
def test_published_table_passes_and_a_modified_copy_fails(tmp_path):
  published = str(SHARED / "nats_bench.csv")
  assert nb201.sha256_of(published) == nb201.TABLE_SHA256
  table = nb201.table_for(_config(published))
  assert len(table.rows) == 15_625
  data = bytearray(open(published, "rb").read())
  first = data.index(b"\n") + 1  # the first row's CIFAR-10 accuracy, 85.86...: 86.86...
  assert data[first:first + 5] == b"85.86"
  data[first + 1:first + 2] = b"6"
  copy = tmp_path / "nats_bench.csv"
  copy.write_bytes(bytes(data))
  copy = str(copy)
  assert nb201.Table.load(copy).accuracy["cifar10"][0] == pytest.approx(86.8633, abs=1e-4)  # still a well-formed table: only the checksum tells
  with pytest.raises(ValueError, match="not the published NAS-Bench-201 table's"):
    nb201.table_for(_config(copy))


@pytest.mark.skipif(SHARED is None, reason="the shared NAS-Bench-201 table is not here")
def test_unique_string_matches_the_published_table():
  """The converter's UniqueString for all 15,625 cells equals the published column (made by
  NATS-Bench's get_unique_str)."""
  with open(SHARED / "nats_bench.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 15_625
  assert all(nb201_table.unique_string(r[nb201.ARCH]) == r[nb201.UNIQUE] for r in rows)


# ---------------------------------------------------------------- the missing table

def test_missing_table_names_both_ways(tmp_path):
  absent = str(tmp_path / "nats_bench.csv")
  with pytest.raises(ValueError, match=f"config.nb201.table={absent}: no such file") as e:
    nb201.table_for(_config(absent))
  message = str(e.value)
  assert nb201.TABLE_URL in message and nb201.TABLE_SHA256 in message  # where, and its sum
  assert "python -m sdarts_jax.tables.nb201_table --source=NAS-Bench-201-v1_0-e61699.pth" in message
  assert "NATS-tss-v1_0-3ffb9-simple" in message and "docs/data.md" in message
  assert nb201.table_for(_config("")) is None  # no table: a search without queries


def test_a_run_made_before_the_checksum_field_resumes(tmp_path):
  """config.json of an NB201 run saved before nb201.table_sha256 existed: the run resumes
  (the field only checks the file), and so does one that changes it."""
  import json
  from sdarts_jax.run import lifecycle
  config = _config("t.csv", **{"compilation_cache": ""})
  saved = json.loads(config.to_json())
  del saved["nb201"]["table_sha256"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  lifecycle.check_resume(config, str(tmp_path))
  lifecycle.check_resume(_config("t.csv", **{"compilation_cache": "", "nb201.table_sha256": ""}),
                         str(tmp_path))
  with pytest.raises(ValueError, match="fields nb201.table"):
    lifecycle.check_resume(_config("other.csv", **{"compilation_cache": ""}), str(tmp_path))
