"""NAS-Bench-1Shot1 and NAS-Bench-101: alpha shapes and the derived cell against matrices
written by hand from the reference's rules, the cell hash against NAS-Bench-101's own code
(when the reference checkout is there) and pinned values, crc32c against published
vectors, the TFRecord framing against a file TensorFlow wrote, the protobuf against the
protobuf library, and the table reader on written, corrupted and re-indexed files."""
import base64
import importlib
import json
import os
import pathlib
import sys

import numpy as np
import pytest

from sdarts_jax.model import nb101_cell
from sdarts_jax.tables import nb101

I, O = nb101_cell.INPUT, nb101_cell.OUTPUT
C3, C1, MP = nb101_cell.CONV3X3, nb101_cell.CONV1X1, nb101_cell.MAXPOOL3X3
# A checkout of github.com/google-research/nasbench (the official NAS-Bench-101 code, read
# only), named by $SDARTS_NASBENCH_CODE (`.ci/run` sets it where the workplace has one).
REF_NASBENCH = pathlib.Path(os.environ.get("SDARTS_NASBENCH_CODE", "/nonexistent"))
# A file TensorFlow's TFRecordWriter wrote, shipped with grain (a dependency of the project).
GRAIN_TFRECORD = (pathlib.Path(importlib.util.find_spec("grain").origin).parent
                  / "_src/python/testdata/morris_sequence_first_5.tfrecord")
API_EXAMPLE = (np.array([[0, 1, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1],
                         [0, 0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1],
                         [0, 0, 0, 0, 0, 0, 0]]),
               [I, C1, C3, C3, C3, MP, O])  # the cell of nasbench/api.py's docstring


@pytest.fixture(scope="module")
def official():
  """NAS-Bench-101's lib.model_spec (pruning, hash_spec) and lib.graph_util (hash_module):
  both need only numpy, so they import without TensorFlow."""
  if not (REF_NASBENCH / "nasbench/lib/model_spec.py").is_file():
    pytest.skip("the official NAS-Bench-101 code is not checked out at $SDARTS_NASBENCH_CODE "
                f"({REF_NASBENCH})")
  sys.path.insert(0, str(REF_NASBENCH))
  try:
    return importlib.import_module("nasbench.lib.model_spec")
  finally:
    sys.path.remove(str(REF_NASBENCH))


def alpha(space, **rows):
  """Alpha for `space`, zero except the given arrays (keys of nb101_cell.alpha_shapes)."""
  out = {key: np.zeros(shape) for key, shape in nb101_cell.alpha_shapes(space).items()}
  out.update({key: np.asarray(value, np.float64) for key, value in rows.items()})
  return out


def one_hot_ops(*columns):
  """alpha["mixed_op"] choosing, for node v, the op in column columns[v - 1] (OPS order)."""
  return np.eye(len(nb101_cell.OPS))[list(columns)] * 5.0


def random_cell(rng, vertices):
  """A random upper-triangular cell (matrix [V, V], V ops) with the NAS-Bench-101 ops."""
  matrix = np.triu(rng.integers(0, 2, (vertices, vertices)), 1)
  return matrix, [I] + [str(op) for op in rng.choice(nb101_cell.HASH_OPS, vertices - 2)] + [O]


# ---------------------------------------------------------------- spaces and alpha

def test_alpha_shapes_are_the_reference_ones():
  """model_search.py's _initialize_alphas: mixed ops [steps, 3], output [1, steps + 1], and
  inputs [1, n] for n in range(begin, steps + 1) with begin 3 for ss1, else 2 (steps 4, 4, 5)."""
  want = {"ss1": {"mixed_op": (4, 3), "output": (1, 5), "inputs_3": (1, 3), "inputs_4": (1, 4)},
          "ss2": {"mixed_op": (4, 3), "output": (1, 5), "inputs_2": (1, 2), "inputs_3": (1, 3),
                  "inputs_4": (1, 4)},
          "ss3": {"mixed_op": (5, 3), "output": (1, 6), "inputs_2": (1, 2), "inputs_3": (1, 3),
                  "inputs_4": (1, 4), "inputs_5": (1, 5)}}
  assert {name: nb101_cell.alpha_shapes(space) for name, space in nb101_cell.SPACES.items()} == want
  assert [nb101_cell.get_space(n).parents for n in ("ss1", "ss2", "ss3")] == [
      (1, 2, 2, 2, 2), (1, 1, 2, 2, 3), (1, 1, 1, 2, 2, 2)]  # docs/method.md, section 4
  with pytest.raises(ValueError, match="ss1, ss2, ss3"):
    nb101_cell.get_space("ss4")


def test_derive_ss1_prunes_a_dangling_node():
  """ss1: node 1 <- 0 and node 2 <- 0, 1 are fixed; node 3 picks {1, 2}, node 4 {0, 1}, the
  output {2, 4}. Node 3 feeds nothing, so it is dropped: vertices 0, 1, 2, 4, out remain."""
  space = nb101_cell.get_space("ss1")
  a = alpha(space, mixed_op=one_hot_ops(1, 0, 2, 1), inputs_3=[[0, 5, 4]],
            inputs_4=[[3, 2, 0, 1]], output=[[0, 0, 5, 0, 4]])
  assert nb101_cell.cell_parents(space, a) == ((0,), (0, 1), (1, 2), (0, 1), (2, 4))
  matrix, ops = nb101_cell.derive_cell(space, a)
  np.testing.assert_array_equal(matrix, [[0, 1, 1, 1, 0],
                                         [0, 0, 1, 1, 0],
                                         [0, 0, 0, 0, 1],
                                         [0, 0, 0, 0, 1],
                                         [0, 0, 0, 0, 0]])
  assert ops == [I, C3, MP, C3, O]


def test_derive_ss2_with_the_input_to_output_edge():
  """ss2: node 2 picks {1}, node 3 {0, 2}, node 4 {1, 3}, the output its top 3 {0, 3, 4}
  (column 0 of alpha["output"] is the cell input): all 9 edges stay."""
  space = nb101_cell.get_space("ss2")
  a = alpha(space, mixed_op=one_hot_ops(1, 2, 0, 1), inputs_2=[[0, 1]],
            inputs_3=[[1, 0, 2]], inputs_4=[[0, 3, 0, 2]], output=[[1, 0, 0, 0.5, 2]])
  matrix, ops = nb101_cell.derive_cell(space, a)
  np.testing.assert_array_equal(matrix, [[0, 1, 0, 1, 0, 1],
                                         [0, 0, 1, 0, 1, 0],
                                         [0, 0, 0, 1, 0, 0],
                                         [0, 0, 0, 0, 1, 1],
                                         [0, 0, 0, 0, 0, 1],
                                         [0, 0, 0, 0, 0, 0]])
  assert ops == [I, C3, C1, MP, C3, O]


def test_derive_ss3_drops_a_dangling_chain():
  """ss3: 2 <- {0}, 3 <- {2}, 4 <- {0, 1}, 5 <- {0, 4}, output <- {4, 5}: nodes 3 and 2 lead
  nowhere and go; vertices 0, 1, 4, 5, out remain."""
  space = nb101_cell.get_space("ss3")
  a = alpha(space, mixed_op=one_hot_ops(0, 1, 2, 2, 1), inputs_2=[[1, 0]],
            inputs_3=[[0, 0, 1]], inputs_4=[[2, 1, 0, 0]], inputs_5=[[1, 0, 0, 0, 1]],
            output=[[0, 0, 0, 0, 1, 1]])
  matrix, ops = nb101_cell.derive_cell(space, a)
  np.testing.assert_array_equal(matrix, [[0, 1, 1, 1, 0],
                                         [0, 0, 1, 0, 0],
                                         [0, 0, 0, 1, 1],
                                         [0, 0, 0, 0, 1],
                                         [0, 0, 0, 0, 0]])
  assert ops == [I, MP, C1, C3, O]


def test_derive_checks_alpha_and_breaks_ties_to_the_lower_index():
  space = nb101_cell.get_space("ss1")
  assert nb101_cell.top_k(np.array([[1.0, 2.0, 2.0, 2.0]]), 2) == (1, 2)
  with pytest.raises(ValueError, match="inputs_4"):
    nb101_cell.derive_cell(space, {k: v for k, v in alpha(space).items() if k != "inputs_4"})
  with pytest.raises(ValueError, match="mixed_op"):
    nb101_cell.derive_cell(space, alpha(space, mixed_op=np.zeros((5, 3))))


def test_prune_matches_the_official_model_spec(official):
  rng = np.random.default_rng(1)
  for _ in range(40):
    matrix, ops = random_cell(rng, int(rng.integers(3, 8)))
    spec = official.ModelSpec(matrix, list(ops))
    if not spec.valid_spec:
      with pytest.raises(ValueError, match="not reachable"):
        nb101_cell.prune(matrix, ops)
      continue
    pruned, pruned_ops = nb101_cell.prune(matrix, ops)
    np.testing.assert_array_equal(pruned, spec.matrix)
    assert pruned_ops == spec.ops


# ---------------------------------------------------------------- the hash

def test_hash_matches_the_official_function(official):
  rng = np.random.default_rng(0)
  graph_util = official.graph_util
  for _ in range(30):
    matrix, _ = random_cell(rng, int(rng.integers(2, 8)))
    labels = [-1] + rng.integers(0, 3, len(matrix) - 2).tolist() + [-2]
    assert nb101_cell.graph_hash(matrix, labels) == graph_util.hash_module(matrix, labels)
    matrix, ops = random_cell(rng, int(rng.integers(3, 8)))
    spec = official.ModelSpec(matrix, list(ops))
    if spec.valid_spec:
      assert nb101_cell.spec_hash(matrix, ops) == spec.hash_spec(list(nb101_cell.HASH_OPS))


def test_hash_pinned_values():
  """Computed with the official code: ModelSpec(matrix, ops).hash_spec(['conv3x3-bn-relu',
  'conv1x1-bn-relu', 'maxpool3x3']) from $SDARTS_NASBENCH_CODE (nasbench/lib/model_spec.py)."""
  assert nb101_cell.spec_hash(*API_EXAMPLE) == "28cfc7874f6d200472e1a9dcd8650aa0"
  assert nb101_cell.spec_hash([[0, 1, 0], [0, 0, 1], [0, 0, 0]], [I, C3, O]) == \
      "b49ac8c578b4561d79ac7087988f1c61"
  ss2_cell = ([[0, 1, 0, 1, 0, 1], [0, 0, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0],
               [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], [I, C3, C1, MP, C3, O])
  assert nb101_cell.spec_hash(*ss2_cell) == "46dc425092832c338ba5dc8e87032fef"


def test_isomorphic_cells_hash_alike_and_others_do_not():
  matrix, ops = API_EXAMPLE
  # Relabel the intermediate vertices (1..5 -> perm) keeping the edges: an isomorphic graph.
  rng = np.random.default_rng(3)
  for _ in range(5):
    perm = np.concatenate([[0], 1 + rng.permutation(5), [6]])
    permuted = np.zeros_like(matrix)
    permuted[np.ix_(perm, perm)] = matrix
    labels = np.array([-1, 1, 0, 0, 0, 2, -2])
    moved = np.empty_like(labels)
    moved[perm] = labels
    assert (nb101_cell.graph_hash(permuted, moved.tolist())
            == nb101_cell.graph_hash(matrix, labels.tolist()))
  # Two parallel branches swapped: an upper-triangular isomorphic cell.
  diamond = np.array([[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
  assert (nb101_cell.spec_hash(diamond, [I, C3, MP, O])
          == nb101_cell.spec_hash(diamond, [I, MP, C3, O]))
  # A dangling vertex does not change the cell NAS-Bench-101 trains.
  dangling = np.pad(diamond, ((0, 1), (0, 1)))[[0, 1, 2, 4, 3]][:, [0, 1, 2, 4, 3]]
  dangling[0, 3] = 1
  assert (nb101_cell.spec_hash(dangling, [I, C3, MP, C1, O])
          == nb101_cell.spec_hash(diamond, [I, C3, MP, O]))
  # Another op, another edge: other cells.
  base = nb101_cell.spec_hash(matrix, ops)
  assert nb101_cell.spec_hash(matrix, [I, C1, C3, C3, C1, MP, O]) != base
  extra = matrix.copy()
  extra[0, 4] = 1
  assert nb101_cell.spec_hash(extra, ops) != base
  chain = np.eye(5, k=1, dtype=int)
  assert (nb101_cell.spec_hash(chain, [I, C3, C1, C1, O])
          != nb101_cell.spec_hash(chain, [I, C1, C1, C3, O]))


def test_spec_hash_rejects_what_is_not_a_cell():
  with pytest.raises(ValueError, match="upper-triangular"):
    nb101_cell.spec_hash([[0, 1], [1, 0]], [I, O])
  with pytest.raises(ValueError, match="ops are"):
    nb101_cell.spec_hash(np.eye(3, k=1), [I, "conv5x5", O])
  with pytest.raises(ValueError, match="not reachable"):
    nb101_cell.spec_hash(np.zeros((3, 3)), [I, C3, O])


# ---------------------------------------------------------------- crc32c, framing, protobuf

def test_crc32c_known_vectors():
  """RFC 3720 B.4 and the common check value."""
  assert nb101.crc32c(b"123456789") == 0xE3069283
  assert nb101.crc32c(bytes(32)) == 0x8A9136AA
  assert nb101.crc32c(b"\xff" * 32) == 0x62A8AB43
  assert nb101.crc32c(bytes(range(32))) == 0x46DD794E
  assert nb101.crc32c(b"") == 0
  # Many lengths at once agree with one at a time.
  data = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)
  starts, lengths = [0, 5, 100, 7, 2000], [3000, 0, 1, 900, 1000]
  want = [nb101.crc32c(data[s:s + n].tobytes()) for s, n in zip(starts, lengths)]
  assert nb101.crc32c_many(data, starts, lengths).tolist() == want
  # TFRecord's mask, with Python ints.
  crc = 0xE3069283
  assert int(nb101.masked_crc(crc)) == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


@pytest.mark.skipif(not GRAIN_TFRECORD.is_file(), reason=f"no {GRAIN_TFRECORD}")
def test_framing_matches_a_file_tensorflow_wrote():
  data = GRAIN_TFRECORD.read_bytes()
  frames = list(nb101.read_frames(GRAIN_TFRECORD, data))
  assert [payload for _, payload in frames] == [b"1", b"1 1", b"2 1", b"1 2 1 1", b"1 1 1 2 2 1"]
  assert [offset for offset, _ in frames] == [0, 17, 36, 55, 78]
  assert nb101.frame_records([payload for _, payload in frames]) == data


def evaluations(val, test):
  """Three checkpoints (initial, halfway, final) ending at the given accuracies."""
  return [(0.0, 0.0, 0.1, 0.1, 0.1), (54.0, 600.0, 0.5, 0.5, 0.5), (108.0, 1200.0, 1.0, val, test)]


def test_metrics_protobuf_matches_the_protobuf_library():
  """ModelMetrics built by the protobuf library from nasbench/lib/model_metrics.proto's
  field numbers reads back with our decoder, and ours parses with the library."""
  pytest.importorskip("google.protobuf")
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
  proto = descriptor_pb2.FileDescriptorProto(name="nb101_test.proto", package="nb101test",
                                             syntax="proto2")
  field = descriptor_pb2.FieldDescriptorProto
  evaluation = proto.message_type.add(name="EvaluationData")
  for number, name in enumerate(nb101.Evaluation._fields, start=1):
    evaluation.field.add(name=name, number=number, type=field.TYPE_DOUBLE,
                         label=field.LABEL_OPTIONAL)
  evaluation.field.add(name="checkpoint_path", number=6, type=field.TYPE_STRING,
                       label=field.LABEL_OPTIONAL)
  metrics = proto.message_type.add(name="ModelMetrics")
  metrics.field.add(name="evaluation_data", number=1, type=field.TYPE_MESSAGE,
                    type_name=".nb101test.EvaluationData", label=field.LABEL_REPEATED)
  metrics.field.add(name="trainable_parameters", number=2, type=field.TYPE_INT32,
                    label=field.LABEL_OPTIONAL)
  metrics.field.add(name="total_time", number=3, type=field.TYPE_DOUBLE,
                    label=field.LABEL_OPTIONAL)
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  message = message_factory.GetMessageClass(pool.FindMessageTypeByName("nb101test.ModelMetrics"))

  theirs = message(trainable_parameters=2_694_282, total_time=3456.5)
  for values in evaluations(0.93, 0.925):
    theirs.evaluation_data.add(checkpoint_path="gs://bucket/model.ckpt-1",
                               **dict(zip(nb101.Evaluation._fields, values)))
  evals, params = nb101.decode_metrics(theirs.SerializeToString())
  assert params == 2_694_282
  assert evals == tuple(nb101.Evaluation(*e) for e in evaluations(0.93, 0.925))

  run = nb101.make_record(*API_EXAMPLE, 108, evaluations(0.8, 0.7), -5)
  parsed = message.FromString(nb101.encode_metrics(run))
  assert parsed.trainable_parameters == -5
  assert [tuple(getattr(e, f) for f in nb101.Evaluation._fields)
          for e in parsed.evaluation_data] == [tuple(e) for e in evaluations(0.8, 0.7)]
  assert nb101.decode_metrics(parsed.SerializeToString()) == (run.evaluations, -5)


# ---------------------------------------------------------------- the table

CELL_B = (np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]]), [I, C3, O])


def table_records():
  """Three runs of the api example cell and of CELL_B at 108 epochs, one 36-epoch run."""
  a = [nb101.make_record(*API_EXAMPLE, 108, evaluations(v, t), 100) for v, t in
       ((0.90, 0.89), (0.92, 0.90), (0.94, 0.94))]
  b = [nb101.make_record(*CELL_B, 108, evaluations(v, t), 50) for v, t in
       ((0.70, 0.60), (0.71, 0.62), (0.72, 0.64))]
  return a[:1] + b[:2] + [nb101.make_record(*CELL_B, 36, evaluations(0.1, 0.1))] + a[1:] + b[2:]


def test_records_round_trip(tmp_path):
  path = tmp_path / "nb.tfrecord"
  records = table_records()
  nb101.write_records(path, records)
  read = list(nb101.read_records(path))
  assert len(read) == len(records)
  for (_, got), want in zip(read, records):
    assert (got.module_hash, got.epochs, got.ops, got.evaluations, got.trainable_parameters) == \
        (want.module_hash, want.epochs, want.ops, want.evaluations, want.trainable_parameters)
    np.testing.assert_array_equal(got.matrix, want.matrix)
  row = json.loads(nb101.encode_record(records[0]))
  assert row[:4] == [nb101_cell.spec_hash(*API_EXAMPLE), 108,
                     "".join(str(e) for e in API_EXAMPLE[0].ravel()), ",".join(API_EXAMPLE[1])]


def test_table_averages_the_three_runs(tmp_path):
  path = tmp_path / "nb.tfrecord"
  nb101.write_records(path, table_records())
  table = nb101.NB101Table.load(path)
  assert len(table) == 2 and table.runs.tolist() == [3, 3]
  val, test = table.query(*API_EXAMPLE)
  assert val == pytest.approx(0.92) and test == pytest.approx(0.91)
  assert table.lookup(nb101_cell.spec_hash(*CELL_B)) == pytest.approx((0.71, 0.62))
  # An isomorphic relabelling of CELL_B with a dangling vertex finds the same entry.
  assert table.query(np.array([[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]),
                     [I, C3, MP, O]) == pytest.approx((0.71, 0.62))
  entries = {h: (v, t) for h, v, t in table}
  assert entries == {nb101_cell.spec_hash(*API_EXAMPLE): pytest.approx((0.92, 0.91)),
                     nb101_cell.spec_hash(*CELL_B): pytest.approx((0.71, 0.62))}
  with pytest.raises(KeyError, match="no cell with hash"):
    table.lookup("0" * 32)


def written(tmp_path):
  """The file of `table_records` and its (byte offset, payload) frames."""
  path = tmp_path / "nb.tfrecord"
  nb101.write_records(path, table_records())
  return path, list(nb101.read_frames(path, path.read_bytes()))


def test_corrupted_data_names_the_record_offset(tmp_path):
  path, frames = written(tmp_path)
  data = bytearray(path.read_bytes())
  offset = frames[2][0]
  data[offset + nb101.HEADER + 10] ^= 0x01
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=f"nb.tfrecord: byte offset {offset}: .*data does not match"):
    nb101.NB101Table.load(path, cache_dir=tmp_path / "cache")


def test_corrupted_length_names_the_record_offset(tmp_path):
  path, frames = written(tmp_path)
  for flip in (0x01, 0x40):  # a length still inside the file, and one far past its end
    data = bytearray(path.read_bytes())
    offset = frames[3][0]
    data[offset + 1] ^= flip
    (tmp_path / "bad.tfrecord").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"byte offset {offset}: the record's length field"):
      list(nb101.read_records(tmp_path / "bad.tfrecord"))


def test_truncated_file_names_the_last_record(tmp_path):
  path, frames = written(tmp_path)
  for cut in (3, 600):
    (tmp_path / "cut.tfrecord").write_bytes(path.read_bytes()[:-cut])
    offset = [o for o, _ in frames if o < path.stat().st_size - cut][-1]
    with pytest.raises(ValueError, match=f"byte offset {offset}: the file ends inside"):
      list(nb101.read_records(tmp_path / "cut.tfrecord"))


def test_bad_record_contents_name_the_offset(tmp_path):
  good = nb101.encode_record(table_records()[0])
  row = json.loads(good)
  bad_proto = json.dumps(row[:4] + [base64.b64encode(b"\x0a\x09short").decode()]).encode()
  cases = {b"not json": "Expecting value", json.dumps(row[:4]).encode(): "JSON list",
           json.dumps(row[:4] + ["@@"]).encode(): "not base64",
           bad_proto: "runs past the end",
           json.dumps(["x" * 32] + row[1:]).encode(): "32 hex digits"}
  for payload, message in cases.items():
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(nb101.frame_records([good, payload]))
    offset = nb101.HEADER + len(good) + nb101.FOOTER
    with pytest.raises(ValueError, match=f"bad.tfrecord: byte offset {offset}: .*({message})"):
      list(nb101.read_records(path))


def test_missing_final_accuracy_is_an_error(tmp_path):
  run = nb101.make_record(*CELL_B, 108, evaluations(0.5, float("nan")))
  path = tmp_path / "nb.tfrecord"
  nb101.write_records(path, [run])
  with pytest.raises(ValueError, match="byte offset 0: the run has no final evaluation"):
    nb101.scan(path)


def test_index_is_reused_and_rebuilt_when_the_file_changes(tmp_path, monkeypatch):
  path, _ = written(tmp_path)
  first = nb101.NB101Table.load(path)
  index = path.with_name(path.name + ".index.npz")
  assert index.is_file()

  def no_scan(p):
    raise AssertionError(f"scanned {p} although the index is current")

  real_scan = nb101.scan
  monkeypatch.setattr(nb101, "scan", no_scan)
  second = nb101.NB101Table.load(path)
  assert list(second) == list(first)

  # Another file at the same path: its size differs.
  monkeypatch.setattr(nb101, "scan", real_scan)
  nb101.write_records(path, table_records()[:3])
  assert nb101.NB101Table.load(path).runs.tolist() == [1, 2]

  # Same size and mtime, other bytes in the head: the checksum catches it.
  stat = path.stat()
  data = bytearray(path.read_bytes())
  data[nb101.HEADER + 5] ^= 0x01
  path.write_bytes(bytes(data))
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  with pytest.raises(ValueError, match="does not match its checksum"):
    nb101.NB101Table.load(path)

  # A damaged index is rebuilt.
  nb101.write_records(path, table_records())
  nb101.NB101Table.load(path)
  index.write_bytes(b"garbage")
  assert list(nb101.NB101Table.load(path)) == list(first)


def test_index_goes_to_the_cache_when_the_data_folder_is_read_only(tmp_path, monkeypatch):
  path, _ = written(tmp_path)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  real_write = nb101._write_index

  def write(index, table, key):
    if index.parent == path.parent:
      raise PermissionError(f"read-only: {index.parent}")
    real_write(index, table, key)

  monkeypatch.setattr(nb101, "_write_index", write)
  nb101.NB101Table.load(path)
  assert not path.with_name(path.name + ".index.npz").exists()
  assert len(list((tmp_path / "xdg/sdarts_jax/nb101").glob("nb.tfrecord-*.index.npz"))) == 1
  monkeypatch.setattr(nb101, "scan", None)  # the cached index is found: no scan
  assert len(nb101.NB101Table.load(path)) == 2


def test_index_goes_to_a_given_cache_dir(tmp_path):
  path, _ = written(tmp_path)
  nb101.NB101Table.load(path, cache_dir=tmp_path / "mine")
  assert [p.name.endswith(".index.npz") for p in (tmp_path / "mine").iterdir()] == [True]
  assert not path.with_name(path.name + ".index.npz").exists()
