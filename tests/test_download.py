"""The demo's CIFAR-10 download, against a local HTTP server holding a small archive in the
canonical format: downloaded once, checksum-verified, cached, read by `pipeline.load`."""
import functools
import hashlib
import http.server
import io
import os
import pathlib
import pickle
import re
import subprocess
import sys
import tarfile
import threading

import ml_collections
import numpy as np
import pytest

from sdarts_jax import demo
from sdarts_jax.data import download, pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
PER_BATCH = 20


def batch(seed: int) -> dict:
  """A CIFAR-10 python batch of PER_BATCH images, pickled keys as bytes like the real one."""
  rng = np.random.default_rng(seed)
  return {b"batch_label": f"batch {seed}".encode(),
          b"data": rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
          b"labels": [int(x) for x in rng.integers(0, 10, PER_BATCH)],
          b"filenames": [b"%d.png" % i for i in range(PER_BATCH)]}


def archive_bytes(batches: dict[str, dict]) -> bytes:
  """A tar.gz with cifar-10-batches-py/<name> holding each pickled batch."""
  out = io.BytesIO()
  with tarfile.open(fileobj=out, mode="w:gz") as tar:
    for name, value in batches.items():
      payload = pickle.dumps(value)
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  return out.getvalue()


BATCHES = {**{f"data_batch_{i}": batch(i) for i in range(1, 6)}, "test_batch": batch(0),
           "batches.meta": {b"label_names": [b"c%d" % i for i in range(10)]}}
ARCHIVE = archive_bytes(BATCHES)  # once: gzip stamps the time
CHECKSUMS = {"sha256": hashlib.sha256(ARCHIVE).hexdigest()}
PARTIAL = archive_bytes({"data_batch_1": BATCHES["data_batch_1"]})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  """(base url, requests list): a local HTTP server holding good.tar.gz (ARCHIVE) and
  partial.tar.gz (PARTIAL)."""
  root = tmp_path_factory.mktemp("www")
  (root / "good.tar.gz").write_bytes(ARCHIVE)
  (root / "partial.tar.gz").write_bytes(PARTIAL)
  requests = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      requests.append(self.path)

  httpd = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
  httpd.shutdown()


def test_downloads_verifies_caches_and_loads(server, tmp_path):
  base, requests = server
  url, checksums = f"{base}/good.tar.gz", CHECKSUMS
  said, before = [], len(requests)
  folder = download.cifar10(url, checksums, tmp_path, said.append)
  assert requests[before:] == ["/good.tar.gz"]
  assert said[0].startswith(f"downloading CIFAR-10 from {url}") and "checksum verified" in said[-2]
  assert folder.parent.parent == tmp_path and sorted(p.name for p in folder.iterdir()) == sorted(BATCHES)

  said.clear()
  assert download.cifar10(url, checksums, tmp_path, said.append) == folder
  assert requests[before:] == ["/good.tar.gz"], "the second call downloaded again"
  assert said == [f"using CIFAR-10 downloaded earlier: {folder}"]

  cfg = ml_collections.ConfigDict(dict(folder=str(folder), name="cifar10", max_examples=0))
  train, test = pipeline.load(cfg, "train"), pipeline.load(cfg, "test")
  assert train.images.shape == (5 * PER_BATCH, 32, 32, 3) and test.num_classes == 10
  first = BATCHES["data_batch_1"]
  np.testing.assert_array_equal(train.images[0], first[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0))
  np.testing.assert_array_equal(train.labels[:PER_BATCH], first[b"labels"])
  np.testing.assert_array_equal(test.labels, BATCHES["test_batch"][b"labels"])
  assert train.mean == test.mean == pipeline.channel_stats(train.images)[0]


def test_demo_takes_data_in_order_and_downloads_last(server, tmp_path, monkeypatch):
  """--data, then TFDS (not prepared here), then the fallback folder, then the download."""
  base, requests = server
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  config = ml_collections.ConfigDict({"data": dict(
      name="cifar10", folder="", tfds_data_dir=str(tmp_path / "tfds"), max_examples=0)})
  url, checksums = f"{base}/good.tar.gz", CHECKSUMS
  choose = lambda given, fallback: demo.choose_data(config, given, fallback, url, checksums)
  before = len(requests)
  assert choose("given", str(tmp_path)) == "given"
  assert choose("", str(tmp_path)) == str(tmp_path)
  assert len(requests) == before
  folder = choose("", str(tmp_path / "none"))
  assert requests[before:] == ["/good.tar.gz"]
  assert folder == str(download.cache_root() / f"cifar10-{checksums['sha256'][:16]}"
                       / download.BATCHES_DIR)


def test_wrong_checksum_is_rejected_and_not_cached(server, tmp_path):
  base, _ = server
  with pytest.raises(download.DownloadError, match="does not match its checksum.*md5 .*expected "
                                                   "0123.*deleted, not cached"):
    download.cifar10(f"{base}/good.tar.gz", {"md5": "0123"}, tmp_path, lambda _: None)
  assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


def test_missing_file_and_unwritable_cache_are_download_errors(server, tmp_path):
  base, _ = server
  with pytest.raises(download.DownloadError, match=rf"cannot download {base}/nope.tar.gz \(.*404"):
    download.cifar10(f"{base}/nope.tar.gz", {"md5": "0"}, tmp_path, lambda _: None)
  (tmp_path / "file").write_text("")
  with pytest.raises(download.DownloadError, match="cannot write the cache folder .*XDG_CACHE_HOME"):
    download.cifar10(f"{base}/good.tar.gz", {"md5": "0"}, tmp_path / "file", lambda _: None)


def test_archive_without_every_batch_is_rejected(server, tmp_path):
  base, _ = server
  with pytest.raises(download.DownloadError, match="not CIFAR-10's python version: "
                                                   "cifar-10-batches-py/ lacks data_batch_2"):
    download.cifar10(f"{base}/partial.tar.gz", {"sha256": hashlib.sha256(PARTIAL).hexdigest()},
                     tmp_path, lambda _: None)
  assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


class RunsCode:
  def __reduce__(self):
    return os.system, ("touch ran",)


def test_batch_file_cannot_run_code(tmp_path):
  for name in BATCHES:
    (tmp_path / name).write_bytes(pickle.dumps({b"data": RunsCode(), b"labels": []}))
  cfg = ml_collections.ConfigDict(dict(folder=str(tmp_path), name="cifar10", max_examples=0))
  with pytest.raises(pipeline.DataError,
                     match=r"data_batch_1 \(.*system is not part of a CIFAR batch"):
    pipeline.load(cfg, "train")
  assert not (pathlib.Path.cwd() / "ran").exists() and not (tmp_path / "ran").exists()


def test_demo_without_data_or_network_says_what_to_do(tmp_path):
  """No --data, TFDS not prepared, no fallback folder, nothing at the url: exit status 2."""
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"),
             XDG_CACHE_HOME=str(tmp_path / "cache"))
  out = subprocess.run(
      [sys.executable, "-m", "sdarts_jax.demo", f"--workdir={tmp_path / 'run'}",
       f"--fallback={tmp_path / 'none'}", "--url=http://127.0.0.1:9/cifar-10-python.tar.gz"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr
  assert "Traceback" not in out.stderr and out.stderr.count("error:") == 1, out.stderr
  assert "cannot download http://127.0.0.1:9/cifar-10-python.tar.gz" in out.stderr
  assert "make demo DEMO_DATA=" in out.stderr
  assert not re.search(r"^[IWE]\d{4} ", out.stderr + out.stdout, re.M), "TFDS's log lines show"
  assert not (tmp_path / "run").exists()
