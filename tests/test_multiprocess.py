"""Multi-process data parallelism on CPU: 2 processes x 2 devices joined by jax.distributed
over loopback (gloo collectives) against 1 process x 4 devices.

Each process runs `python -m sdarts_jax.main` (through a driver that can simulate SIGTERM
after a number of steps, identically in every process). Checked, for the search here and
for evaluation training in test_multiprocess_eval.py (a file of its own, so that the two
run on different test workers): the run preempted and resumed in the 2-process setting ends where the
uninterrupted 1-process run ends (search: alpha within 1e-5, the same genotypes; evaluation
training: the weights within 1e-5); only process 0 writes metrics, genotypes and
TensorBoard; each process places only its own rows of every global batch; checkpoints are
written once; a process that dies ends the other with an error, not a hang.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np

from conftest import tiny_config
from sdarts_jax.model import supernet
from sdarts_jax.run import checkpoint
from sdarts_jax.search import genotype, run_search

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The search: tiny_config's model and data, 2 epochs of 2 steps, no evaluation pass.
OVERRIDES = {"method": "darts", "space": "s3", "epochs": 2, "model.layers": 1,
             "model.channels": 4, "perturb.steps": 2, "data.name": "synthetic", "data.image_size": 8,
             "data.synthetic_examples": 32, "data.batch_size": 8, "log_every_steps": 1,
             "eval_every_epochs": 0, "compilation_cache": ""}
STEPS = 4

# A process of the run: sdarts_jax.main, with SIGTERM simulated after TEST_STOP_AFTER steps
# (the same step in every process, as a preemption agreed between them would give), and
# the rows of every global batch it places recorded in TEST_ROWS_LOG.
DRIVER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, os.environ["TEST_DIR"])
    import jax
    from absl import app
    from sdarts_jax import main
    from sdarts_jax.data import pipeline
    from sdarts_jax.run import lifecycle
    if os.environ.get("TEST_STOP_AFTER"):
      from conftest import sigterm_after
      lifecycle.on_sigterm = sigterm_after(int(os.environ["TEST_STOP_AFTER"]))
    place = jax.make_array_from_callback
    def recorded(shape, sharding, callback, *args, **kwargs):
      def cb(index):
        if len(shape) == 4 and index[0].start is not None:  # sharded images [rows, H, W, 3]
          with open(os.environ["TEST_ROWS_LOG"], "a") as f:
            f.write(f"{jax.process_index()} {index[0].start} {index[0].stop}\\n")
        return callback(index)
      return place(shape, sharding, cb, *args, **kwargs)
    pipeline.jax.make_array_from_callback = recorded
    app.run(main.main, flags_parser=main.parse_flags)
    """)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(workdir, processes: int, devices: int, stop_after: int = 0, env=None,
          config_file: str = "configs/cifar10_darts.py", overrides=None):
  """Start the run's processes (the search of OVERRIDES unless `config_file` and `overrides`
  say otherwise); returns [(Popen, path of its output)]."""
  port = _free_port()
  overrides = overrides or {k: v for k, v in OVERRIDES.items() if k != "method"}
  flags = [f"--config={config_file}", f"--workdir={workdir}"] + [
      f"--config.{k}={v}" for k, v in overrides.items()]
  procs = []
  for i in range(processes):
    e = {**os.environ, "JAX_PLATFORMS": "cpu", "TEST_DIR": str(ROOT / "tests"),
         "TEST_ROWS_LOG": str(workdir.parent / f"rows_{workdir.name}.txt"),
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                      "--xla_backend_optimization_level=0", **(env or {})}
    if stop_after:
      e["TEST_STOP_AFTER"] = str(stop_after)
    if processes > 1:
      e.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
               JAX_PROCESS_ID=str(i))
    out = workdir.parent / f"output_{workdir.name}_{i}.txt"
    with open(out, "w") as f:
      procs.append((subprocess.Popen([sys.executable, "-c", DRIVER, *flags], cwd=ROOT, env=e,
                                     stdout=f, stderr=subprocess.STDOUT), out))
  return procs


def finish(procs, timeout: float = 400) -> list[int]:
  """Wait for every process (killing all of them past `timeout`); their exit statuses."""
  deadline = time.time() + timeout
  codes = []
  try:
    for p, _ in procs:
      codes.append(p.wait(timeout=max(1, deadline - time.time())))
  finally:
    for p, _ in procs:
      if p.poll() is None:
        p.kill()
  return codes


def final_state(workdir, config, init=None) -> tuple[int, dict]:
  """(step, state) of the newest checkpoint, restored onto this process's first device
  (a checkpoint written by several processes needs a target with shardings). init: a
  function giving the initial state (default: the search's)."""
  if init is None:
    model = run_search.build_model(config, 10)
    init = lambda: run_search.init_state(model, config, (8, 8, 3), 2)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          jax.eval_shape(init))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), 2)
  try:
    step_count = ckpt.latest_step()
    return step_count, ckpt.restore(step_count, abstract)[0]
  finally:
    ckpt.close()


def outputs(procs) -> list[str]:
  return [pathlib.Path(out).read_text() for _, out in procs]


def preempt_and_resume(tmp_path, reference, **run) -> None:
  """2 processes x 2 devices in tmp_path/two (`start` with `run`'s config), preempted after
  step 3, then resumed; while the first launch runs, reference(tmp_path/"one") runs the
  uninterrupted 1-process reference here (4 devices). Checks that both launches end as
  they should and that only process 0 logs."""
  work = tmp_path / "two"
  work.mkdir()
  procs = start(work, 2, 2, stop_after=3, **run)
  try:
    reference(str(tmp_path / "one"))
  finally:
    codes = finish(procs)
  assert codes == [143, 143], outputs(procs)
  assert "saved step 3" in outputs(procs)[0]
  procs = start(work, 2, 2, **run)
  assert finish(procs) == [0, 0], outputs(procs)
  text = outputs(procs)
  assert "resumed from step 3" in text[0] and "resumed from step 3" not in text[1]
  assert "epoch 2/2" in text[0] and "epoch 2/2" not in text[1]


def check_written_once(tmp_path) -> list[tuple[dict, dict]]:
  """The 2-process run in tmp_path/two wrote what the 1-process run in tmp_path/one wrote:
  the same config.json, the same records (kind and step; floats but seconds within 1e-4,
  the resumed epoch's means included: the preempted run saved its partial sums), one
  TensorBoard file per launch (only process 0 writes). Returns the record pairs."""
  saved = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("one", "two")]
  assert saved[0] == saved[1]
  def records(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
  two, one = records(tmp_path / "two"), records(tmp_path / "one")
  assert [(r["kind"], r["step"]) for r in two] == [(r["kind"], r["step"]) for r in one]
  for r2, r1 in zip(two, one):
    for k, v in r1.items():
      if isinstance(v, float) and k != "seconds":
        assert abs(r2[k] - v) <= 1e-4 * max(1.0, abs(v)), (k, r2[k], v)
  assert len(list((tmp_path / "two" / "tensorboard").glob("events.out.tfevents.*"))) == 2
  return list(zip(two, one))


def rows_placed(tmp_path) -> list[int]:
  """How many image batches each process placed in the 2-process run, after checking that
  each placed only its own rows of every batch (process p: rows [4p, 4p + 4) of the 8, 2
  per device)."""
  rows = [tuple(map(int, line.split()))
          for line in (tmp_path / "rows_two.txt").read_text().splitlines()]
  # (process, which half of the batch, rows per device)
  assert {(p, lo // 4, hi - lo) for p, lo, hi in rows} == {(0, 0, 2), (1, 1, 2)}
  return [sum(1 for r in rows if r[0] == p) for p in (0, 1)]


def test_two_processes_equal_one_and_resume(tmp_path):
  # Preempted after step 3 (mid-epoch 2).
  config = tiny_config("darts", **{k: v for k, v in OVERRIDES.items() if k != "method"})
  preempt_and_resume(tmp_path, lambda workdir: run_search.train_and_evaluate(config, workdir))
  check_outputs(tmp_path, config)


def check_outputs(tmp_path, config):
  """The 2-process run in tmp_path/two against the 1-process run in tmp_path/one."""
  work = tmp_path / "two"
  # Same result (alpha within 1e-5 of its scale, the same genotypes). Normwise: batch sums
  # split over processes round differently, a few roundings of alpha's scale (2.6e-3;
  # observed 2e-7 of it). atol=1e-5 was 4e-3 of that scale and up to 0.1 of what the steps
  # changed (> 1e-4), so an update wrong by 1e-3 passed; now 2.6e-4 of the change at most.
  (s1, a), (s2, b) = final_state(tmp_path / "one", config), final_state(work, config)
  assert s1 == s2 == STEPS
  for cell in a["alpha"]:
    scale = np.max(np.abs(np.asarray(a["alpha"][cell])))
    np.testing.assert_allclose(b["alpha"][cell], a["alpha"][cell], rtol=0, atol=1e-5 * scale)
  model = run_search.build_model(config, 10)
  init = jax.jit(lambda: run_search.init_state(model, config, (8, 8, 3), 2))()
  moved = max(float(np.abs(b["alpha"][c] - init["alpha"][c]).max()) for c in init["alpha"])
  assert moved > 1e-4, moved  # the tolerance above is far below what the steps changed
  for name in ("genotype.json", "genotypes/epoch_001.json", "genotypes/epoch_002.json"):
    assert genotype.load(str(work / name)) == genotype.load(str(tmp_path / "one" / name))
  A = {t: np.asarray(v) for t, v in jax.device_get(supernet.mixing_weights(b["alpha"])).items()}
  assert genotype.derive(A, model.space) == genotype.load(str(work / "genotype.json"))

  # Only process 0 writes, each record once; the records equal the 1-process run's, the
  # mixing weights A within 1e-5.
  for r2, r1 in check_written_once(tmp_path):
    assert r2.get("genotype") == r1.get("genotype")
    for cell in r1.get("A", {}):
      np.testing.assert_allclose(r2["A"][cell], r1["A"][cell], rtol=0, atol=1e-5)
  assert sorted(p.name for p in (work / "genotypes").iterdir()) == ["epoch_001.json",
                                                                    "epoch_002.json"]
  # Checkpoints written once: the newest two steps, each one folder, nothing half-written.
  assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["3", "4"]

  # Each process placed only its own rows, for every batch of every step (train and val
  # images), in both launches: 2 devices x 2 image batches (train, val) x 5 global batches: steps 1-4 in the first
  # launch (the next batch is placed while a step runs), step 4 again in the second.
  assert rows_placed(tmp_path) == [2 * 2 * 5] * 2


def test_a_process_that_dies_ends_the_other(tmp_path):
  work = tmp_path / "run"
  work.mkdir()
  procs = start(work, 2, 2, env={"SDARTS_HEARTBEAT_TIMEOUT_S": "10"})
  (p0, out0), (p1, _) = procs
  try:
    deadline = time.time() + 300
    while "compiling the step" not in pathlib.Path(out0).read_text():
      assert p0.poll() is None and p1.poll() is None, outputs(procs)
      assert time.time() < deadline, "the run did not start"
      time.sleep(0.2)
    p1.send_signal(signal.SIGKILL)
    t = time.time()
    code = p0.wait(timeout=120)
    waited = time.time() - t
  finally:
    finish(procs, 1)
  text = pathlib.Path(out0).read_text()
  assert code != 0 and waited < 90, (code, waited)
  assert ("another process of this run died" in text or "another task died" in text), text[-3000:]
