"""The search loop end to end: outputs, exact resume after SIGTERM, bad input, real images."""
import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import check_exact_resume, final_state, shared_data, tiny_config
from sdarts_jax.data import pipeline
from sdarts_jax.model import spaces
from sdarts_jax.run import lifecycle, metrics
from sdarts_jax.search import genotype, run_search

ROOT = pathlib.Path(__file__).resolve().parents[1]
JPEG = shared_data("cifar10-jpeg")


def test_search_writes_outputs_and_resumes_exactly(tmp_path, monkeypatch):
  config = tiny_config("adv")  # 4 steps per epoch, 2 epochs
  full = str(tmp_path / "full")
  record = run_search.train_and_evaluate(config, full)
  assert record["epoch"] == 2 and 0 <= record["eval_accuracy"] <= 1
  lines = [json.loads(l) for l in open(os.path.join(full, "metrics.jsonl"))]
  epochs = [l for l in lines if l["kind"] == "epoch"]
  assert [e["epoch"] for e in epochs] == [1, 2]
  assert set(epochs[0]["A"]) == {"normal", "reduce"} and len(epochs[0]["A"]["normal"]) == 14
  alpha = final_state(full)[1]["alpha"]
  want = genotype.derive({t: np.asarray(jax.nn.softmax(a, -1)) for t, a in alpha.items()},
                         spaces.get_space(config.space))
  for path in ("genotype.json", "genotypes/epoch_002.json"):
    with open(os.path.join(full, path)) as f:
      assert json.load(f) == want
  assert os.listdir(os.path.join(full, "tensorboard"))

  # Interrupted after step 3 (mid-epoch) by a simulated SIGTERM, then resumed: the same
  # final state bit for bit, and the same epoch means (the resumed epoch's cover all of its
  # steps, not only those after the resume).
  resumed = str(tmp_path / "resumed")
  check_exact_resume(run_search.train_and_evaluate, config, full, resumed, monkeypatch, steps=8)
  means = lambda workdir: {r["epoch"]: {k: v for k, v in r.items() if k != "seconds"}
                           for r in metrics.read_records(workdir, "epoch")}
  assert means(resumed) == means(full)

  # Rerunning a finished run does nothing; a different config is refused.
  run_search.train_and_evaluate(config, resumed)
  with pytest.raises(ValueError, match="different configuration"):
    run_search.train_and_evaluate(tiny_config("adv", seed=3), resumed)


def test_sigterm_sets_the_flag():
  previous = signal.getsignal(signal.SIGTERM)
  try:
    preempted = lifecycle.on_sigterm()
    assert not preempted()
    os.kill(os.getpid(), signal.SIGTERM)
    assert preempted()
  finally:
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("overrides,message", [
    ({"space": "s9"}, "unknown search space 's9'"),
    ({"method": "pgd"}, "unknown method 'pgd'"),
    ({"perturb.eps_max": 1.5}, r"eps_max=1.5 is outside \[0, 1\]"),
    ({"perturb.eps_start": -0.1}, "eps_start"),
    ({"data.batch_size": 6}, "not divisible by the 4 devices"),
    ({"data.name": "imagenet_x"}, "config.data.name"),
    ({"data.folder": "/nonexistent/folder"}, "config.data.folder"),
    ({"data.train_portion": 1.0}, "train_portion"),
    ({"epochs": 0}, "config.epochs"),
    ({"model.impl": "cudnn"}, "config.model.impl"),
])
def test_bad_input_is_one_clear_error(tmp_path, overrides, message):
  if "batch_size" in str(overrides) and jax.device_count() != 4:
    pytest.skip("needs the 4 CPU devices of conftest")
  with pytest.raises(ValueError, match=message):
    run_search.train_and_evaluate(tiny_config("adv", **overrides), str(tmp_path / "w"))


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(ValueError, match="not a writable directory"):
    run_search.train_and_evaluate(tiny_config("darts"), str(blocker / "w"))


def test_missing_tfds_dataset_says_how_to_prepare(tmp_path):
  config = tiny_config("darts", **{"data.name": "cifar10",
                                   "data.tfds_data_dir": str(tmp_path / "tfds")})
  with pytest.raises(pipeline.DataError, match="tfds build cifar10"):
    run_search.train_and_evaluate(config, str(tmp_path / "w"))


def test_cli_reports_errors_in_one_line(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "sdarts_jax.main", "--config=configs/cifar10_adv.py:smoke",
       "--config.perturb.eps_max=2.0", f"--workdir={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("error: config.perturb.eps_max=2.0")
  assert "Traceback" not in out.stderr


@pytest.mark.slow  # CI budget: make demo runs a real search on the same images end to end
@pytest.mark.skipif(JPEG is None, reason="the shared CIFAR-10 JPEG folder is not here")
def test_real_step_on_shared_jpeg_folder(tmp_path):
  config = tiny_config("adv", **{"data.folder": str(JPEG), "data.max_examples": 32,
                                 "epochs": 1})
  record = run_search.train_and_evaluate(config, str(tmp_path))
  assert record["epoch"] == 1 and np.isfinite(record["train_loss"])
  assert 0 <= record["eval_accuracy"] <= 1
  assert os.path.exists(tmp_path / "genotype.json")


def test_hessian_tracking_and_early_stop(tmp_path):
  config = tiny_config("darts", epochs=3, **{
      "hessian.every_epochs": 1, "hessian.trace_samples": 4, "hessian.lanczos_iters": 10,
      "hessian.early_stop": True, "hessian.start_epoch": 0, "hessian.window": 1,
      "hessian.lag": 1, "hessian.factor": 0.0})  # fires at the second measurement
  run_search.train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  hess = [l for l in lines if l["kind"] == "hessian"]
  assert [h["epoch"] for h in hess] == [1, 2]
  assert all(np.isfinite(h["hessian_lambda_max"]) and "hessian_trace" in h for h in hess)
  stop = [l for l in lines if l["kind"] == "early_stop"]
  assert stop and stop[0]["epoch"] == 2 and stop[0]["genotype_epoch"] == 1
  with open(tmp_path / "genotype.json") as a, open(tmp_path / "genotypes/epoch_001.json") as b:
    assert json.load(a) == json.load(b)
  assert run_search.train_and_evaluate(config, str(tmp_path)) == {}  # finished: nothing to do
