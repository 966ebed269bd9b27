"""Evaluation training with 2 processes x 2 devices joined by jax.distributed over loopback
against 1 process x 4 devices: the same checks as the search's in test_multiprocess.py,
whose process driver this file uses."""
import jax
import numpy as np

from conftest import assert_close_normwise, override
from sdarts_jax.data import pipeline
from sdarts_jax.evaluation import defaults as eval_defaults, train
from test_multiprocess import check_written_once, final_state, preempt_and_resume, rows_placed

# Evaluation training: darts_v2, 2 cells (both reduce), C=4, no auxiliary head, synthetic 8x8
# images (32 train, 8 test), batch 8: 2 epochs of 4 steps.
EVAL_OVERRIDES = {"arch": "darts_v2", "epochs": 2, "model.layers": 2, "model.channels": 4,
                  "model.auxiliary": False, "data.name": "synthetic", "data.image_size": 8,
                  "data.synthetic_examples": 32, "data.batch_size": 8, "drop_path": 0.2,
                  "log_every_steps": 1, "compilation_cache": ""}
EVAL_STEPS = 8


def test_two_process_evaluation_training_equals_one_and_resumes(tmp_path):
  # Preempted after step 3 (mid-epoch 1).
  config = override(eval_defaults.cifar_config("cifar10"), EVAL_OVERRIDES)
  preempt_and_resume(tmp_path, lambda workdir: train.train_and_evaluate(config, workdir),
                     config_file="configs/cifar10_eval.py", overrides=EVAL_OVERRIDES)

  work = tmp_path / "two"
  model = train.build_model(config, 10)
  init = lambda: train.init_state(model, config, (8, 8, 3), EVAL_STEPS // config.epochs)
  (s1, a), (s2, b) = final_state(tmp_path / "one", config, init), final_state(work, config, init)
  assert s1 == s2 == EVAL_STEPS
  start_params = jax.jit(init)()["params"]
  moved = max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()),
                                           a["params"], start_params)))
  assert moved > 1e-3, moved  # the tolerance below is far below what the steps changed
  # Per leaf, normwise: batch sums split over processes round differently, a few roundings
  # of each leaf's scale (observed 1.8e-7 of it; leaves of zeros stay exactly zero). A fixed
  # atol=1e-5 was 3.5e-3 of the smallest leaves' scale (3e-3), so an update wrong by 1e-3
  # there passed; 1e-5 of each leaf's scale leaves 55x.
  assert_close_normwise(b["params"], a["params"], 1e-5)

  # Only process 0 writes; its records equal the 1-process run's; checkpoints as the
  # 1-process run's, each written once.
  pairs = check_written_once(tmp_path)
  assert sum(r2["kind"] == "epoch" and "test_accuracy" in r2 for r2, _ in pairs) == 2
  assert all(set(r2) == set(r1) for r2, r1 in pairs)
  assert (sorted(p.name for p in (work / "checkpoints").iterdir())
          == sorted(p.name for p in (tmp_path / "one" / "checkpoints").iterdir()))

  # Each process placed only its own rows, of every train and test batch: 4 train batches
  # in the first launch (steps 1-3 and the one placed while step 3 ran), steps 4-8 in the
  # second, and the test split after each of the 2 epochs.
  test_batches = -(-len(pipeline.load(config.data, "test").labels) // config.data.batch_size)
  assert rows_placed(tmp_path) == [2 * (4 + 5 + 2 * test_batches)] * 2
