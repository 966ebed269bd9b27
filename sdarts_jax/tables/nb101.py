"""NAS-Bench-101's table read without TensorFlow: CRC-32C and TFRecord framing, the protobuf
wire format of its records, and the table with its index.

The table file is NAS-Bench-101's TFRecord (nasbench_only108.tfrecord, or
nasbench_full.tfrecord): one record per training run, a JSON list
[module_hash, epochs, adjacency, ops, metrics] with `metrics` a base64 `ModelMetrics`
protobuf (nasbench/lib/model_metrics.proto). `NB101Table` holds, per cell hash
(`nb101_cell.spec_hash`), the mean over its runs of the validation and test accuracy after
108 epochs.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import struct
import sys
import tempfile
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from sdarts_jax.model import nb101_cell

# ---------------------------------------------------------------- crc32c, TFRecord framing

def _crc32c_table() -> np.ndarray:
  """[256] uint32: the byte table of CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
  table = np.arange(256, dtype=np.uint32)
  for _ in range(8):
    table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1)
  return table.astype(np.uint32)


CRC_TABLE = _crc32c_table()
CRC_BATCH_ROWS, CRC_BATCH_BYTES = 4096, 1 << 22  # records, bytes checked at once


def crc32c_many(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """CRC-32C of buf[starts[i] : starts[i] + lengths[i]] for every i.

  Records of similar length are batched and advanced one byte position at a time, all rows
  of a batch together (rows that have ended keep their value).

  Args:
    buf: [bytes] uint8; starts, lengths: [R] ints.
  Returns:
    [R] uint32.
  """
  starts, lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
  out = np.zeros(len(starts), np.uint32)
  order = np.argsort(lengths, kind="stable")
  first = 0
  while first < len(order):
    count = min(CRC_BATCH_ROWS, len(order) - first)
    count = max(1, min(count, CRC_BATCH_BYTES // max(int(lengths[order[first + count - 1]]), 1)))
    rows = order[first:first + count]
    ends, width = lengths[rows], int(lengths[rows[-1]])
    data = buf[np.minimum(starts[rows, None] + np.arange(width), len(buf) - 1)]
    crc = np.full(count, 0xFFFFFFFF, np.uint32)
    for j in range(width):
      crc = np.where(j < ends, CRC_TABLE[(crc ^ data[:, j]) & 0xFF] ^ (crc >> 8), crc)
    out[rows] = crc ^ np.uint32(0xFFFFFFFF)
    first += count
  return out


def crc32c(data: bytes) -> int:
  """CRC-32C of data (crc32c(b"123456789") == 0xE3069283)."""
  return int(crc32c_many(np.frombuffer(data, np.uint8), [0], [len(data)])[0])


def masked_crc(crc: np.ndarray) -> np.ndarray:
  """TFRecord's masked CRC: rotate right by 15 bits, add 0xA282EAD8 (mod 2^32)."""
  crc = np.asarray(crc, np.uint32)
  return ((crc >> 15) | (crc << 17)) + np.uint32(0xA282EAD8)


HEADER, FOOTER = 12, 4  # uint64 length + masked crc of it; masked crc of the data


def frame_records(payloads: list[bytes]) -> bytes:
  """The TFRecord file holding payloads: per record, uint64 length, the masked crc32c of
  those 8 bytes, the data, the masked crc32c of the data (all little-endian)."""
  lengths = [struct.pack("<Q", len(p)) for p in payloads]
  joined = np.frombuffer(b"".join(lengths + payloads), np.uint8)
  n, sizes = len(payloads), np.array([len(p) for p in payloads], np.int64)
  data_starts = 8 * n + np.cumsum(sizes) - sizes
  length_crcs = masked_crc(crc32c_many(joined, 8 * np.arange(n), np.full(n, 8)))
  data_crcs = masked_crc(crc32c_many(joined, data_starts, sizes))
  return b"".join(length + struct.pack("<I", lc) + p + struct.pack("<I", dc)
                  for length, lc, p, dc in zip(lengths, length_crcs, payloads, data_crcs))


def read_frames(path: str | os.PathLike, data: bytes) -> Iterator[tuple[int, bytes]]:
  """(byte offset, payload) of every record of the TFRecord file `path` whose contents are
  `data`. Every checksum is verified before the first record is returned; ValueError
  naming the file and the byte offset of the first record whose length or data does not
  match its checksum or that the file ends inside of."""
  starts, lengths, end = [], [], None
  pos = 0
  while pos < len(data) and end is None:
    length = struct.unpack_from("<Q", data, pos)[0] if pos + HEADER <= len(data) else -1
    if length < 0 or pos + HEADER + length + FOOTER > len(data):
      end = pos
    else:
      starts.append(pos)
      lengths.append(length)
      pos += HEADER + length + FOOTER
  buf = np.frombuffer(data, np.uint8)
  starts, lengths = np.array(starts, np.int64), np.array(lengths, np.int64)
  header_starts = starts if end is None or end + HEADER > len(data) else np.append(starts, end)
  bad_length = (masked_crc(crc32c_many(buf, header_starts, np.full(len(header_starts), 8)))
                != _uint32_at(buf, header_starts + 8))
  if bad_length.any():
    raise ValueError(f"{path}: byte offset {header_starts[np.argmax(bad_length)]}: the "
                     f"record's length field does not match its checksum (corrupted file)")
  if end is not None:
    raise ValueError(f"{path}: byte offset {end}: the file ends inside this record "
                     f"(truncated file; {len(data) - end} bytes left)")
  bad_data = (masked_crc(crc32c_many(buf, starts + HEADER, lengths))
              != _uint32_at(buf, starts + HEADER + lengths))
  if bad_data.any():
    raise ValueError(f"{path}: byte offset {starts[np.argmax(bad_data)]}: the record's data "
                     f"does not match its checksum (corrupted file)")
  for start, length in zip(starts.tolist(), lengths.tolist()):
    yield start, data[start + HEADER:start + HEADER + length]


def _uint32_at(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """[R] little-endian uint32 at buf[offsets[i]:offsets[i] + 4]."""
  return np.ascontiguousarray(buf[offsets[:, None] + np.arange(4)]).view("<u4")[:, 0]


# ---------------------------------------------------------------- protobuf wire format

def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
  """(value, position after it) of the base-128 varint at buf[pos]."""
  value = 0
  for shift in range(0, 70, 7):
    if pos >= len(buf):
      raise ValueError("protobuf: the message ends inside a varint")
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, pos
  raise ValueError("protobuf: a varint longer than 10 bytes")


FIXED_BYTES = {1: 8, 5: 4}  # wire type -> size (fixed64/double, fixed32/float)


def proto_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
  """(field number, wire type, value) of every field of a serialized protobuf message:
  an int for varints (wire type 0), the raw bytes otherwise (1: 8, 5: 4, 2: the
  length-delimited payload). ValueError for a malformed message."""
  pos = 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    field, wire = key >> 3, key & 7
    if field == 0:
      raise ValueError("protobuf: field number 0")
    if wire == 0:
      value, pos = _read_varint(buf, pos)
    elif wire in FIXED_BYTES or wire == 2:
      size, pos = (FIXED_BYTES[wire], pos) if wire in FIXED_BYTES else _read_varint(buf, pos)
      if pos + size > len(buf):
        raise ValueError(f"protobuf: field {field} runs past the end of the message")
      value, pos = buf[pos:pos + size], pos + size
    else:
      raise ValueError(f"protobuf: field {field} has unsupported wire type {wire}")
    yield field, wire, value


def _varint(value: int) -> bytes:
  """The varint encoding of a non-negative int (a negative one as its 64-bit complement)."""
  value &= (1 << 64) - 1
  out = bytearray()
  while value >= 0x80:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  return bytes(out + bytes([value]))


# ---------------------------------------------------------------- records

class Evaluation(NamedTuple):
  """One checkpoint of a training run (the EvaluationData message, fields 1-5 in this order;
  a field absent from the file reads as nan, never as protobuf's default 0.0)."""
  current_epoch: float
  training_time: float
  train_accuracy: float
  validation_accuracy: float
  test_accuracy: float


class Record(NamedTuple):
  """One record of the table file: one training run of one cell.

  Attributes:
    module_hash: the cell's `nb101_cell.spec_hash`.
    epochs: the run's training length (4, 12, 36 or 108).
    matrix: [V, V] adjacency; ops: V labels ('input', ..., 'output').
    evaluations: the run's checkpoints (NAS-Bench-101: initial, halfway, final).
    trainable_parameters: the network's parameter count.
  """
  module_hash: str
  epochs: int
  matrix: np.ndarray
  ops: tuple[str, ...]
  evaluations: tuple[Evaluation, ...]
  trainable_parameters: int


def make_record(matrix, ops, epochs: int, evaluations, trainable_parameters: int = 0) -> Record:
  """A Record of the cell (matrix [V, V], V ops), filed under its `nb101_cell.spec_hash`."""
  return Record(nb101_cell.spec_hash(matrix, list(ops)), epochs, np.asarray(matrix, np.int64),
                tuple(ops), tuple(Evaluation(*e) for e in evaluations), trainable_parameters)


def encode_metrics(record: Record) -> bytes:
  """The record's ModelMetrics message: evaluation_data (1, repeated EvaluationData, whose
  fields 1-5 are doubles; nan fields are left out) and trainable_parameters (2, int32)."""
  messages = []
  for evaluation in record.evaluations:
    fields = [_varint(field << 3 | 1) + struct.pack("<d", value)
              for field, value in enumerate(evaluation, start=1) if not math.isnan(value)]
    messages.append(b"".join(fields))
  return (b"".join(_varint(1 << 3 | 2) + _varint(len(m)) + m for m in messages)
          + _varint(2 << 3 | 0) + _varint(record.trainable_parameters))


def decode_metrics(buf: bytes) -> tuple[tuple[Evaluation, ...], int]:
  """(evaluation_data, trainable_parameters) of a ModelMetrics message; other fields are
  skipped. ValueError for a malformed message or a known field of the wrong wire type."""
  evaluations, parameters = [], 0
  for field, wire, value in proto_fields(buf):
    if field == 1:
      _expect_wire(field, wire, 2, "ModelMetrics")
      evaluations.append(_decode_evaluation(value))
    elif field == 2:
      _expect_wire(field, wire, 0, "ModelMetrics")
      parameters = value - (1 << 64) if value >= 1 << 63 else value
  return tuple(evaluations), parameters


def _decode_evaluation(buf: bytes) -> Evaluation:
  """An EvaluationData message; its doubles 1-5, nan when absent."""
  values = [math.nan] * len(Evaluation._fields)
  for field, wire, value in proto_fields(buf):
    if 1 <= field <= len(values):
      _expect_wire(field, wire, 1, "EvaluationData")
      values[field - 1] = struct.unpack("<d", value)[0]
  return Evaluation(*values)


def _expect_wire(field: int, wire: int, want: int, message: str) -> None:
  if wire != want:
    raise ValueError(f"protobuf: {message} field {field} has wire type {wire}, expected {want}")


def encode_record(record: Record) -> bytes:
  """The record's payload: the JSON list [module_hash, epochs, adjacency as V*V digits
  row by row, ops joined by ',', base64 ModelMetrics]."""
  adjacency = "".join(str(int(e)) for e in np.asarray(record.matrix).ravel())
  metrics = base64.b64encode(encode_metrics(record)).decode("ascii")
  return json.dumps([record.module_hash, record.epochs, adjacency, ",".join(record.ops), metrics]
                    ).encode("utf-8")


def decode_record(payload: bytes) -> Record:
  """The Record of a payload (inverse of `encode_record`); ValueError when it is not one."""
  row = json.loads(payload.decode("utf-8"))
  if not (isinstance(row, list) and len(row) == 5 and isinstance(row[1], int)
          and all(isinstance(row[i], str) for i in (0, 2, 3, 4))):
    raise ValueError("a record must be the JSON list [module_hash, epochs, adjacency, ops, "
                     "metrics] (strings, epochs an int)")
  module_hash, epochs, adjacency, ops, metrics = row
  if len(module_hash) != 32 or set(module_hash) - set("0123456789abcdef"):
    raise ValueError(f"a record's module_hash must be 32 hex digits (md5); got {module_hash!r}")
  dim = math.isqrt(len(adjacency))
  if dim * dim != len(adjacency) or set(adjacency) - {"0", "1"} or len(ops.split(",")) != dim:
    raise ValueError(f"a record's adjacency must be V*V digits 0/1 and its ops V labels; got "
                     f"{adjacency!r} and {ops!r}")
  matrix = (np.frombuffer(adjacency.encode("ascii"), np.uint8) - ord("0")).astype(np.int64)
  matrix = matrix.reshape(dim, dim)
  try:
    raw_metrics = base64.b64decode(metrics, validate=True)
  except binascii.Error as e:
    raise ValueError(f"a record's metrics are not base64 ({e})") from None
  evaluations, parameters = decode_metrics(raw_metrics)
  return Record(module_hash, epochs, matrix, tuple(ops.split(",")), evaluations, parameters)


def write_records(path: str | os.PathLike, records: Iterable[Record]) -> None:
  """Write records as a NAS-Bench-101 TFRecord file, in the layout `read_records` and
  NAS-Bench-101's api.NASBench read."""
  pathlib.Path(path).write_bytes(frame_records([encode_record(record) for record in records]))


def read_records(path: str | os.PathLike) -> Iterator[tuple[int, Record]]:
  """(byte offset, Record) of every record of a NAS-Bench-101 TFRecord file. ValueError naming
  the file and the record's byte offset for a bad checksum, a truncated file, or a record
  that is not JSON, not the expected list, or whose protobuf is malformed."""
  for offset, payload in read_frames(path, pathlib.Path(path).read_bytes()):
    try:
      yield offset, decode_record(payload)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError included
      raise ValueError(f"{path}: byte offset {offset}: {e}") from None


# ---------------------------------------------------------------- the table

EPOCHS = 108  # the training length the table reports
FINAL = 2  # evaluation_data index of the end of training (api.py: 0 initial, 1 halfway)
INDEX_VERSION = 1
HEAD_BYTES = 1 << 20  # the file's first MiB is checksummed into the index's key


def scan(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Per cell hash, the mean final validation and test accuracy of its `EPOCHS`-epoch runs.

  Returns:
    {"hashes": [C] str, "validation": [C], "test": [C] (fractions in [0, 1]),
     "runs": [C] how many runs were averaged}, hashes sorted.
  Raises:
    ValueError naming the byte offset of a record that cannot be read, has fewer than
    FINAL + 1 evaluations, or whose final accuracies are not in [0, 1].
  """
  sums: dict[str, list] = {}
  for offset, record in read_records(path):
    if record.epochs != EPOCHS:
      continue
    final = record.evaluations[FINAL] if len(record.evaluations) > FINAL else None
    if final is None or not (0.0 <= final.validation_accuracy <= 1.0
                             and 0.0 <= final.test_accuracy <= 1.0):
      raise ValueError(f"{path}: byte offset {offset}: the run has no final evaluation "
                       f"(evaluation_data[{FINAL}]) with validation and test accuracy in "
                       f"[0, 1]; got {record.evaluations}")
    entry = sums.setdefault(record.module_hash, [0.0, 0.0, 0])
    entry[0] += final.validation_accuracy
    entry[1] += final.test_accuracy
    entry[2] += 1
  if not sums:
    raise ValueError(f"{path}: the file has no {EPOCHS}-epoch runs (expected NAS-Bench-101's "
                     f"nasbench_only108.tfrecord or nasbench_full.tfrecord)")
  hashes = sorted(sums)
  runs = np.array([sums[h][2] for h in hashes], np.int64)
  return {"hashes": np.array(hashes, dtype=str),
          "validation": np.array([sums[h][0] for h in hashes], np.float64) / runs,
          "test": np.array([sums[h][1] for h in hashes], np.float64) / runs,
          "runs": runs}


def file_key(path: str | os.PathLike) -> np.ndarray:
  """What the index is valid for: the file's size, mtime (ns) and sha256 of its first MiB,
  as [3] str."""
  stat = os.stat(path)
  with open(path, "rb") as f:
    head = hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()
  return np.array([str(stat.st_size), str(stat.st_mtime_ns), head])


def index_paths(path: str | os.PathLike, cache_dir: str | os.PathLike | None) -> list[pathlib.Path]:
  """Where the index of `path` may be, in the order they are tried: in `cache_dir` when
  given; else next to the file, then in the user cache ($XDG_CACHE_HOME/sdarts_jax/nb101,
  default ~/.cache/sdarts_jax/nb101) for a read-only data folder."""
  path = pathlib.Path(path).resolve()
  cached = f"{path.name}-{nb101_cell.md5(str(path))[:12]}.index.npz"
  if cache_dir is not None:
    return [pathlib.Path(cache_dir) / cached]
  from sdarts_jax.data.download import cache_root  # pulls in jax: only when an index is looked up
  return [path.with_name(path.name + ".index.npz"), cache_root() / "nb101" / cached]


def _read_index(index: pathlib.Path, key: np.ndarray) -> dict[str, np.ndarray] | None:
  """The table stored in `index` when it is there, readable, and made from the same file."""
  try:
    with np.load(index, allow_pickle=False) as stored:
      if int(stored["version"]) != INDEX_VERSION or not np.array_equal(stored["key"], key):
        return None
      return {name: stored[name] for name in ("hashes", "validation", "test", "runs")}
  except (OSError, ValueError, KeyError, EOFError):
    return None


def _write_index(index: pathlib.Path, table: dict[str, np.ndarray], key: np.ndarray) -> None:
  """Write the index atomically (a temporary file renamed onto it)."""
  index.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=index.parent, suffix=".tmp", delete=False) as f:
    np.savez(f, version=INDEX_VERSION, key=key, **table)
  os.replace(f.name, index)


@dataclasses.dataclass(frozen=True)
class NB101Table:
  """NAS-Bench-101's accuracies after 108 epochs, per cell hash (`nb101_cell.spec_hash`).

  Attributes:
    path: the TFRecord file.
    hashes: [C] cell hashes, sorted.
    validation, test: [C] mean over the cell's runs (3 in NAS-Bench-101) of the final
      validation and test accuracy, fractions in [0, 1].
    runs: [C] how many runs each mean is over.
  """
  path: str
  hashes: np.ndarray
  validation: np.ndarray
  test: np.ndarray
  runs: np.ndarray

  @classmethod
  def load(cls, path: str | os.PathLike, cache_dir: str | os.PathLike | None = None
           ) -> "NB101Table":
    """The table of the TFRecord file `path`, from its index when one matches the file (see
    `index_paths`, `file_key`); else the file is scanned (`scan`) and the index written to
    the first of `index_paths` that can be written. ValueError naming the file (and byte
    offset) when it is missing or cannot be read.

    The scan of nasbench_only108.tfrecord's 1.27 million records takes minutes, once
    (README, "The NAS-Bench-101 table"); loading the index is fast."""
    if not os.path.isfile(path):
      raise ValueError(f"{path}: no such file (expected NAS-Bench-101's "
                       f"nasbench_only108.tfrecord)")
    key, candidates = file_key(path), index_paths(path, cache_dir)
    table = next(filter(None, (_read_index(c, key) for c in candidates)), None)
    if table is None:
      table = scan(path)
      errors = []
      for index in candidates:
        try:
          _write_index(index, table, key)
          break
        except OSError as e:
          errors.append(f"{index}: {e}")
      else:
        print(f"warning: the NAS-Bench-101 index could not be written ({'; '.join(errors)}); "
              f"the next load scans {path} again", file=sys.stderr)
    return cls(str(path), table["hashes"], table["validation"], table["test"], table["runs"])

  def __len__(self) -> int:
    return len(self.hashes)

  def __iter__(self) -> Iterator[tuple[str, float, float]]:
    """(hash, mean validation accuracy, mean test accuracy) of every cell."""
    return zip(self.hashes.tolist(), self.validation.tolist(), self.test.tolist())

  def lookup(self, module_hash: str) -> tuple[float, float]:
    """(mean validation accuracy, mean test accuracy) of the cell with this hash; KeyError
    when the table has no such cell."""
    row = int(np.searchsorted(self.hashes, module_hash))
    if row == len(self.hashes) or self.hashes[row] != module_hash:
      raise KeyError(f"{self.path} has no cell with hash {module_hash}")
    return float(self.validation[row]), float(self.test[row])

  def query(self, matrix: np.ndarray, ops: list[str]) -> tuple[float, float]:
    """`lookup` of the cell (matrix [V, V], V ops), by its `nb101_cell.spec_hash`."""
    return self.lookup(nb101_cell.spec_hash(matrix, ops))
