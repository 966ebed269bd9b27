"""Mistakes on the command line and in files a run reads: one `error:` line naming the
flag or the file, exit status 2, no traceback."""
import json
import pathlib
import subprocess
import sys

import pytest

from conftest import tiny_config
from sdarts_jax import defaults
from sdarts_jax.run import lifecycle
from sdarts_jax.search import genotype, run_search

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
    run_search.train_and_evaluate(tiny_config("adv"), str(tmp_path))
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


def test_resume_of_a_run_saved_before_a_field_existed(tmp_path):
  """A config.json written before alpha.order/hvp/hvp_r existed is a first-order run: the
  same config resumes it, a second-order one is refused, and an evaluation config (which has
  no alpha fields) is not made to differ by the filled-in values."""
  config = tiny_config("adv")
  saved = json.loads(config.to_json())
  for field in ("order", "hvp", "hvp_r"):
    del saved["alpha"][field]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  lifecycle.check_resume(config, str(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text())["alpha"]["order"] == 1
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config.alpha.order = 2
  with pytest.raises(ValueError, match=r"different configuration \(fields alpha\.order\)"):
    lifecycle.check_resume(config, str(tmp_path))
  # Saved before data.cutout_schedule: with cutout on it ran the ramp, so the constant
  # default is refused and linear_ramp resumes; with cutout off the schedule changes nothing.
  config = tiny_config("adv", **{"data.cutout": 4})
  saved = json.loads(config.to_json())
  del saved["data"]["cutout_schedule"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(ValueError, match=r"different configuration \(fields data\.cutout_schedule\)"):
    lifecycle.check_resume(config, str(tmp_path))
  config.data.cutout_schedule = "linear_ramp"
  lifecycle.check_resume(config, str(tmp_path))
  config, saved["data"]["cutout"] = tiny_config("adv"), 0
  (tmp_path / "config.json").write_text(json.dumps(saved))
  lifecycle.check_resume(config, str(tmp_path))
  evaluation = defaults.from_file("cifar10_eval", "smoke")
  (tmp_path / "eval").mkdir()
  (tmp_path / "eval" / "config.json").write_text(evaluation.to_json())
  lifecycle.check_resume(evaluation, str(tmp_path / "eval"))


def test_method_darts2_in_the_method_field_says_where_second_order_is():
  config = tiny_config("darts")
  config.method = "darts2"
  with pytest.raises(ValueError, match=r"config\.method=darts2: second-order DARTS is method "
                                       r"darts with config\.alpha\.order=2"):
    run_search.check_config(config)
