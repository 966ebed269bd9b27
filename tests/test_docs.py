"""The commands quoted in README.md and docs/*.md still run, checked cheaply (no search is
started): the shell commands of every fenced code block, and inline `python -m ...`,
`python path.py`, `make ...` and `launch/...` commands.

- `python -m MODULE`: the module exists (`importlib.util.find_spec`); for absl entry points
  every flag the command passes is defined (`python -m MODULE --helpfull`, once per module,
  all modules at once in parallel).
- `python path.py` (any interpreter, e.g. `path/to/torch-python tools/golden.py`): the script
  exists and, when it uses argparse, defines every `--flag` passed (read from its source).
- `make TARGET`: the target is defined in the Makefile.
- `launch/*.sh`, `sbatch launch/*`: the script exists.
- `--config=configs/X.py[:args]`: the file exists and its `get_config(args)` loads; every
  `--config.a.b=` field exists in that config.

And no file of the repository's README, docs, package, tests, configs or Makefile cites the
workplace's method description, which is not in the repository.
"""
from __future__ import annotations

import concurrent.futures
import functools
import importlib.util
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
PYTHONS = ("python", "python3")


def _fenced_lines(text: str) -> list[str]:
  """The logical lines of the fenced code blocks (except ```text blocks, which show output):
  continuation backslashes joined, comments and blank lines dropped."""
  lines, inside, output, pending = [], False, False, ""
  for raw in text.splitlines():
    if raw.lstrip().startswith("```"):
      inside = not inside
      output = inside and raw.strip()[3:].strip() == "text"  # printed output, not commands
      continue
    if not inside or output:
      continue
    line = raw.strip()
    if line.endswith("\\"):
      pending += line[:-1] + " "
      continue
    line, pending = pending + line, ""
    if line and not line.startswith("#"):
      lines.append(line)
  return lines


def _inline_commands(text: str) -> list[str]:
  """Inline code spans (possibly wrapped over lines) that are commands."""
  spans = re.findall(r"(?<!`)`([^`]+)`(?!`)", text)
  starts = ("python -m ", "python benchmarks/", "python tools/", "make ", "launch/", "sbatch ")
  return [" ".join(s.split()) for s in spans if s.startswith(starts)]


def _words(line: str) -> list[str]:
  """The command's words: comments cut, env assignments and `&` dropped."""
  try:
    words = shlex.split(line, comments=True)
  except ValueError:  # an unbalanced quote in prose-like text
    return []
  while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
    words = words[1:]
  return [w for w in words if w != "&"]


def _commands() -> list[tuple[str, list[str]]]:
  """(where, words) for every command quoted in the docs."""
  out = []
  for doc in DOCS:
    text = doc.read_text()
    where = str(doc.relative_to(ROOT))
    for line in _fenced_lines(text) + _inline_commands(text):
      words = _words(line)
      if words and words[0] not in ("for", "done", "wait", "do", "fi", "if", "then"):
        out.append((f"{where}: {line}", words))
  return out


COMMANDS = _commands()


def _kind(words: list[str]):
  """("module", name, args) | ("script", path, args) | ("make", target, args) |
  ("file", path, args) | None for a line that is not a command we check."""
  first = pathlib.PurePath(words[0]).name
  if first in PYTHONS or first.startswith("python3."):
    if len(words) > 2 and words[1] == "-m":
      return "module", words[2], words[3:]
    if len(words) > 1:
      return "script", words[1], words[2:]
  if words[0] == "make":
    targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    return "make", (targets[0] if targets else ""), words[1:]
  if words[0] == "sbatch" and len(words) > 1:
    return "file", words[1], words[2:]
  if words[0].startswith(("launch/", "tools/", "benchmarks/")):
    return "file", words[0], words[1:]
  scripts = [i for i, w in enumerate(words) if w.endswith(".py") and "/" in w
             and not w.startswith("-")]
  if scripts:  # e.g. path/to/torch-python tools/golden.py --ref=...
    return "script", words[scripts[0]], words[scripts[0] + 1:]
  return None


def _flag_names(args: list[str]) -> list[str]:
  return [a[2:].split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2]


def _absl_flags(module: str) -> frozenset[str] | None:
  """The flags `python -m module --helpfull` lists (booleans also as noNAME), or None when
  the module is not an absl entry point."""
  return _ABSL_FLAGS.get(module)


def _helpfull(module: str) -> tuple[str, frozenset[str] | None]:
  proc = subprocess.run([sys.executable, "-m", module, "--helpfull"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120,
                        env={"JAX_PLATFORMS": "cpu", **_environ()})
  names = set()
  for m in re.finditer(r"^\s+--(\[no\])?([A-Za-z0-9_.]+)", proc.stdout + proc.stderr, re.M):
    names.add(m.group(2))
    if m.group(1):
      names.add("no" + m.group(2))
  return module, (frozenset(names) if names else None)


def _environ():
  import os
  return dict(os.environ)


def _modules() -> list[str]:
  return sorted({k[1] for _, w in COMMANDS if (k := _kind(w)) and k[0] == "module"})


_ABSL_FLAGS: dict[str, frozenset[str] | None] = {}


@pytest.fixture(scope="module", autouse=True)
def absl_flags():
  """Every quoted module's --helpfull, run in parallel once."""
  modules = [m for m in _modules() if importlib.util.find_spec(m) is not None]
  with concurrent.futures.ThreadPoolExecutor(max_workers=len(modules) or 1) as pool:
    _ABSL_FLAGS.update(pool.map(_helpfull, modules))
  yield


def test_the_docs_quote_commands():
  kinds = {k[0] for _, w in COMMANDS if (k := _kind(w))}
  assert {"module", "make", "script", "file"} <= kinds, kinds
  assert any(k[1] == "sdarts_jax.main" for _, w in COMMANDS if (k := _kind(w)))
  assert {"config", "workdir"} <= _ABSL_FLAGS["sdarts_jax.main"]  # --helpfull was read


def _config_value(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if part not in node:
      raise KeyError(part)
    node = node[part]
  return node


@functools.lru_cache(maxsize=None)
def _load_config(spec: str):
  """`configs/X.py[:arg]` as ml_collections' config_flags loads it: get_config(arg)."""
  from sdarts_jax import defaults
  path, _, arg = spec.partition(":")
  assert (ROOT / path).parent == defaults.CONFIGS, f"{path} is not in configs/"
  return defaults.from_file(pathlib.Path(path).stem, arg or None)


def _check_config_args(args: list[str], where: str):
  config_specs = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
  fields = [a[len("--config."):].split("=", 1)[0] for a in args
            if a.startswith("--config.")]
  if not config_specs:
    return
  spec = config_specs[0]
  assert (ROOT / spec.partition(":")[0]).is_file(), f"{where}: no config file {spec}"
  try:
    config = _load_config(spec)
  except Exception as e:  # noqa: BLE001 - any failure to load is the finding
    pytest.fail(f"{where}: {spec} does not load: {type(e).__name__}: {e}")
  for field in fields:
    try:
      _config_value(config, field)
    except (KeyError, AttributeError, TypeError):
      pytest.fail(f"{where}: --config.{field} is not a field of {spec}")


def _argparse_flags(path: pathlib.Path) -> set[str] | None:
  source = path.read_text()
  if "argparse" not in source:
    return None
  names = set(re.findall(r"add_argument\(\s*['\"]--([A-Za-z0-9_-]+)['\"]", source))
  return names | {"no-" + n for n in names} | {"help"}


@pytest.mark.parametrize("where,words", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_command(where, words):
  kind = _kind(words)
  if kind is None:
    pytest.skip("not a command this test checks")
  what, name, args = kind
  if what == "module":
    assert importlib.util.find_spec(name) is not None, f"{where}: no module {name}"
    defined = _absl_flags(name)
    if defined is not None:
      for flag in _flag_names(args):
        top = flag.split(".", 1)[0]
        assert flag in defined or top in defined, f"{where}: {name} has no flag --{flag}"
    _check_config_args(args, where)
  elif what == "script":
    path = ROOT / name
    assert path.is_file(), f"{where}: no script {name}"
    defined = _argparse_flags(path)
    if defined is not None:
      for flag in _flag_names(args):
        assert flag in defined, f"{where}: {name} has no option --{flag}"
  elif what == "make":
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (ROOT / "Makefile").read_text(),
                             re.M))
    assert name in targets, f"{where}: the Makefile has no target {name!r}"
  elif what == "file":
    exists = (ROOT / name).is_dir() if name.endswith("/") else (ROOT / name).is_file()
    assert exists, f"{where}: no file {name}"


def test_no_citation_of_documents_outside_the_repository():
  """The method is described in docs/method.md; nothing cites the workplace's own method
  description (whose name is built here so that this file does not cite it either)."""
  name = "SP" + "EC"
  files = [ROOT / "README.md", ROOT / "Makefile"]
  for folder in ("docs", "sdarts_jax", "tests", "configs"):
    files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".txt")]
  offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
               for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
               if name in line or f"../shared/{name}.md" in line]
  assert not offenders, "\n".join(offenders)


def test_method_md_has_the_sections_the_code_cites():
  """Every "docs/method.md, section N[.M]" citation in the code names a section that exists."""
  method = (ROOT / "docs" / "method.md").read_text()
  sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", method, re.M))
  cited = set()
  for folder in ("sdarts_jax", "tests", "configs"):
    for p in (ROOT / folder).rglob("*.py"):
      for m in re.finditer(r"docs/method\.md,?\s+sections?\s+([\d.,\s\-and]+)", p.read_text()):
        cited |= set(re.findall(r"\d+(?:\.\d+)?", m.group(1)))
      for m in re.finditer(r"docs/method\.md (\d+\.\d+)", p.read_text()):
        cited.add(m.group(1))
  assert cited and cited <= sections, (sorted(cited - sections), sorted(sections))


def test_relative_links_point_at_files():
  """Every relative Markdown link or image of README.md and docs/*.md names a file."""
  broken = []
  for doc in DOCS:
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
      if re.match(r"[a-z]+:", target) or target.startswith("#"):
        continue
      if not (doc.parent / target.split("#", 1)[0]).exists():
        broken.append(f"{doc.relative_to(ROOT)}: {target}")
  assert not broken, "\n".join(broken)
