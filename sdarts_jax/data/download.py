"""CIFAR-10 for a machine without it: the canonical python archive, downloaded once,
checksum-verified and unpacked into a per-user cache (no TensorFlow).

The cache is $XDG_CACHE_HOME/sdarts_jax (default ~/.cache/sdarts_jax), never the repository.
An archive is cached under the checksum it was verified against, as
`cifar10-<first 16 hex digits>/cifar-10-batches-py/` (data_batch_1..5, test_batch,
batches.meta: the folder `sdarts_jax.data.pipeline` reads with config.data.folder); once that folder
is there, nothing is downloaded again.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import tarfile
import tempfile
import urllib.error
import urllib.request
from typing import Callable

from sdarts_jax.data import pipeline

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# The archive's published md5 and its sha256; both are checked.
CIFAR10_CHECKSUMS = {"md5": "c58f30108f718f92721af3b95e74349a",
                     "sha256": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"}
BATCHES_DIR = "cifar-10-batches-py"
TIMEOUT_S = 30
CHUNK_BYTES = 1 << 20
MIB = 1 << 20
PROGRESS_STEPS = 10  # a progress line every 10%,
PROGRESS_UNSIZED_BYTES = 16 * MIB  # or every 16 MiB when the server does not send the size


def _say(text: str) -> None:
  """A progress line, shown at once also when stdout is a pipe."""
  print(text, flush=True)


class DownloadError(RuntimeError):
  """The archive could not be fetched, did not match its checksum, or is not CIFAR-10."""


def cache_root() -> pathlib.Path:
  """$XDG_CACHE_HOME/sdarts_jax, else ~/.cache/sdarts_jax."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "sdarts_jax"


def parse_checksums(text: str) -> dict[str, str]:
  """"md5:HEX,sha256:HEX" -> {"md5": "hex", "sha256": "hex"}; ValueError when malformed."""
  checksums = {}
  for item in filter(None, text.split(",")):
    algorithm, _, digest = item.strip().partition(":")
    if algorithm not in ("md5", "sha256") or not digest:
      raise ValueError(f"checksum {item!r} is not md5:HEX or sha256:HEX")
    checksums[algorithm] = digest.lower()
  if not checksums:
    raise ValueError("no checksum given: the download must be verified (md5:HEX or sha256:HEX)")
  return checksums


def cifar10(url: str = CIFAR10_URL, checksums: dict[str, str] | None = None,
            cache: pathlib.Path | None = None,
            say: Callable[[str], None] = _say) -> pathlib.Path:
  """The folder cifar-10-batches-py of the archive at `url`, downloaded and unpacked on the
  first call, found in the cache afterwards.

  checksums: {"md5"|"sha256": hex} the archive must match (default: the canonical archive's).
  A download that does not match is deleted, not cached. DownloadError when the archive
  cannot be fetched, does not match, or holds no cifar-10-batches-py folder.
  """
  checksums = checksums or CIFAR10_CHECKSUMS
  key = checksums.get("sha256") or checksums["md5"]
  home = (cache or cache_root()) / f"cifar10-{key[:16]}"
  target = home / BATCHES_DIR
  if target.is_dir():
    say(f"using CIFAR-10 downloaded earlier: {target}")
    return target
  try:
    home.mkdir(parents=True, exist_ok=True)
    scratch_dir = tempfile.TemporaryDirectory(dir=home, prefix=".download-")
  except OSError as e:
    raise DownloadError(f"cannot write the cache folder {home} ({e.strerror}); set "
                        "XDG_CACHE_HOME to a writable folder") from None
  with scratch_dir as scratch:
    archive = pathlib.Path(scratch) / "archive.tar.gz"
    digests = fetch(url, archive, say)
    verify(digests, checksums, url)
    say(f"checksum verified ({', '.join(sorted(checksums))}); unpacking to {target}")
    unpacked = pathlib.Path(scratch) / BATCHES_DIR
    unpack(archive, unpacked, url)
    try:
      os.rename(unpacked, target)
    except OSError:
      if not target.is_dir():  # else another process cached it meanwhile
        raise
  say(f"CIFAR-10 is cached in {target}; later runs use it without downloading")
  return target


def fetch(url: str, path: pathlib.Path, say: Callable[[str], None]) -> dict[str, str]:
  """Stream `url` into `path` with progress lines; returns its {"md5", "sha256"} hex digests."""
  digests = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
  try:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(path, "wb") as out:
      size = int(response.headers.get("Content-Length") or 0)
      say(f"downloading CIFAR-10 from {url}" + (f" ({size / MIB:.1f} MiB)" if size else ""))
      done, shown = 0, 0
      while chunk := response.read(CHUNK_BYTES):
        out.write(chunk)
        for d in digests.values():
          d.update(chunk)
        done += len(chunk)
        step = done * PROGRESS_STEPS // size if size else done // PROGRESS_UNSIZED_BYTES
        if step > shown:
          shown = step
          say(f"  {done / MIB:.1f}" + (f" of {size / MIB:.1f} MiB ({100 * done // size}%)"
                                        if size else " MiB"))
  except (urllib.error.URLError, OSError, ValueError) as e:
    reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
    raise DownloadError(f"cannot download {url} ({reason})") from None
  return {name: d.hexdigest() for name, d in digests.items()}


def verify(digests: dict[str, str], checksums: dict[str, str], url: str) -> None:
  """DownloadError unless every expected checksum matches the downloaded digests."""
  wrong = [f"{name} {digests[name]}, expected {expected}"
           for name, expected in sorted(checksums.items()) if digests[name] != expected]
  if wrong:
    raise DownloadError(f"the file downloaded from {url} does not match its checksum "
                        f"({'; '.join(wrong)}), so it was deleted, not cached. Retry; if it "
                        "fails again, the server sends a different file: give its url and "
                        "checksum (make demo DEMO_URL=... DEMO_CHECKSUMS=sha256:...)")


def unpack(archive: pathlib.Path, into: pathlib.Path, url: str) -> None:
  """Copy cifar-10-batches-py's batch files, and batches.meta when present, out of the
  tar.gz `archive` into the new folder `into`; nothing else is extracted (no links, no
  other paths). DownloadError when a batch file is missing."""
  batch_files = [name for split in pipeline.CIFAR_BATCHES.values() for name in split]
  try:
    with tarfile.open(archive, "r:gz") as tar:
      files = {m.name: m for m in tar.getmembers() if m.isfile()}
      missing = [name for name in batch_files if f"{BATCHES_DIR}/{name}" not in files]
      if missing:
        raise DownloadError(f"the archive from {url} is not CIFAR-10's python version: "
                            f"{BATCHES_DIR}/ lacks {', '.join(missing)}")
      into.mkdir()
      for name in [*batch_files, "batches.meta"]:
        if f"{BATCHES_DIR}/{name}" in files:
          (into / name).write_bytes(tar.extractfile(files[f"{BATCHES_DIR}/{name}"]).read())
  except (tarfile.TarError, OSError, EOFError) as e:
    raise DownloadError(f"the archive from {url} cannot be unpacked ({e})") from None
