"""Evaluation training with 2 processes x 2 devices joined by jax.distributed over loopback
against 1 process x 4 devices: the same checks as the search's in test_multiprocess.py,
whose process driver this file uses."""
import json

import jax
import numpy as np

from conftest import override
from sdarts_jax import data
from sdarts_jax.evaluation import defaults as eval_defaults, train
from test_multiprocess import final_state, finish, outputs, start

# Evaluation training: darts_v2, 2 cells (both reduce), C=4, no auxiliary head, synthetic 8x8
# images (32 train, 8 test), batch 8: 2 epochs of 4 steps.
EVAL_OVERRIDES = {"arch": "darts_v2", "epochs": 2, "model.layers": 2, "model.channels": 4,
                  "model.auxiliary": False, "data.name": "synthetic", "data.image_size": 8,
                  "data.synthetic_examples": 32, "data.batch_size": 8, "drop_path": 0.2,
                  "log_every_steps": 1, "compilation_cache": ""}
EVAL_STEPS = 8


def test_two_process_evaluation_training_equals_one_and_resumes(tmp_path):
  # As the search's test: 2 processes x 2 devices preempted after step 3 (mid-epoch 1) and
  # resumed, against one uninterrupted process with 4 devices.
  work = tmp_path / "two"
  work.mkdir()
  procs = start(work, 2, 2, stop_after=3, config_file="configs/cifar10_eval.py",
                overrides=EVAL_OVERRIDES)
  config = override(eval_defaults.cifar_config("cifar10"), EVAL_OVERRIDES)
  try:
    train.train_and_evaluate(config, str(tmp_path / "one"))
  finally:
    codes = finish(procs)
  assert codes == [143, 143], outputs(procs)
  assert "saved step 3" in outputs(procs)[0]
  procs = start(work, 2, 2, config_file="configs/cifar10_eval.py", overrides=EVAL_OVERRIDES)
  assert finish(procs) == [0, 0], outputs(procs)
  text = outputs(procs)
  assert "resumed from step 3" in text[0] and "resumed from step 3" not in text[1]
  assert "epoch 2/2" in text[0] and "epoch 2/2" not in text[1]

  saved = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("one", "two")]
  assert saved[0] == saved[1]
  model = train.build_model(config, 10)
  init = lambda: train.init_state(model, config, (8, 8, 3), EVAL_STEPS // config.epochs)
  (s1, a), (s2, b) = final_state(tmp_path / "one", config, init), final_state(work, config, init)
  assert s1 == s2 == EVAL_STEPS
  start_params = jax.jit(init)()["params"]
  moved = max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()),
                                           a["params"], start_params)))
  assert moved > 1e-3, moved  # 1e-5 is a tight tolerance for what the steps changed
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-5),
               b["params"], a["params"])

  # Only process 0 writes; its records equal the 1-process run's (the resumed epoch's
  # means included); checkpoints as the 1-process run's, each written once.
  records = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
  two, one = records(work), records(tmp_path / "one")
  assert [(r["kind"], r["step"]) for r in two] == [(r["kind"], r["step"]) for r in one]
  assert sum(r["kind"] == "epoch" and "test_accuracy" in r for r in two) == 2
  for r2, r1 in zip(two, one):
    assert set(r2) == set(r1)
    for k, v in r1.items():
      if isinstance(v, float) and k != "seconds":
        assert abs(r2[k] - v) <= 1e-4 * max(1.0, abs(v)), (k, r2[k], v)
  assert len(list((work / "tensorboard").glob("events.out.tfevents.*"))) == 2
  assert (sorted(p.name for p in (work / "checkpoints").iterdir())
          == sorted(p.name for p in (tmp_path / "one" / "checkpoints").iterdir()))

  # Each process placed only its own rows, of every train and test batch: 4 train batches
  # in the first launch (steps 1-3 and the one placed while step 3 ran), steps 4-8 in the
  # second, and the test split (one batch of 8) after each of the 2 epochs.
  rows = [tuple(map(int, line.split()))
          for line in (tmp_path / "rows_two.txt").read_text().splitlines()]
  assert {(p, lo // 4, hi - lo) for p, lo, hi in rows} == {(0, 0, 2), (1, 1, 2)}
  test_batches = -(-len(data.load(config.data, "test").labels) // config.data.batch_size)
  per_process = [sum(1 for r in rows if r[0] == p) for p in (0, 1)]
  assert per_process[0] == per_process[1] == 2 * (4 + 5 + 2 * test_batches)
