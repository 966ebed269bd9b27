"""Mistakes on the command line and in files a run reads: one `error:` line naming the
flag or the file, exit status 2, no traceback."""
import json
import pathlib
import subprocess
import sys

import pytest

from conftest import tiny_config
from sdarts_jax import genotype, search

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "sdarts_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("config,message", [
    ("configs/cifar10_adv.py:dataset=mnist", "error: flag --config=configs/cifar10_adv.py:"
                                             "dataset=mnist: unknown dataset argument 'mnist'"),
    ("configs/nope.py", "error: --config: cannot load the config file: [Errno 2] No such file "
                        "or directory: 'configs/nope.py'"),
])
def test_bad_config_flag_is_one_error_line(tmp_path, config, message):
  out = main(f"--config={config}", f"--workdir={tmp_path}")
  assert out.returncode == 2, out.stderr
  assert out.stderr.strip().splitlines() == [out.stderr.strip().splitlines()[-1]]
  assert out.stderr.strip().startswith(message)


def test_unknown_config_field_is_one_error_line(tmp_path):
  out = main("--config=configs/cifar10_adv.py:smoke", "--config.epochz=3",
             f"--workdir={tmp_path}")
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert out.stderr.strip() == ("error: --config.*: the config has no field 'epochz'; Did you "
                                "mean \"epochs\" instead of \"epochz\"?")


def test_malformed_config_json_in_workdir_names_the_file(tmp_path):
  path = tmp_path / "config.json"
  path.write_text('{"method": "adv",\n "epochs": }\n')
  with pytest.raises(ValueError, match=rf"^{path}: not valid JSON \(line 2 col 12: "):
    search.train_and_evaluate(tiny_config("adv"), str(tmp_path))
  out = main("--config=configs/cifar10_adv.py:smoke", f"--workdir={tmp_path}")
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(f"error: {path}: not valid JSON (line 2")


def test_malformed_genotype_json_names_the_file(tmp_path):
  path = tmp_path / "cell.json"
  path.write_text(json.dumps(genotype.published()["darts_v2"])[:-10])
  with pytest.raises(ValueError, match=rf"^{path}: not valid JSON \(line 1 col "):
    genotype.resolve(str(path))
  out = main("--config=configs/cifar10_eval.py", f"--config.arch={path}",
             f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(f"error: {path}: not valid JSON (line 1")
