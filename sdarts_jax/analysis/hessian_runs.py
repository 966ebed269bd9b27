"""lambda_max, top-k eigenvalues and the trace of the validation-loss Hessian over the
checkpoints of one or several search runs, with a trajectory plot and alpha heat maps.

  python -m sdarts_jax.analysis.hessian_runs --workdirs=runs/darts,runs/adv --out=analysis/
  python -m sdarts_jax.analysis.hessian_runs --workdirs=... --out=... --tracked

With --tracked, nothing is recomputed: the values tracked during the searches
(config.hessian.every_epochs) are plotted. Otherwise every checkpoint kept in each run is
measured (keep them all with --config.checkpoints_to_keep=0 during the search). Writes
hessian.jsonl, lambda_max.png and alpha_<run>.png under --out.
"""
from __future__ import annotations

import json
import os
import sys

import jax
from absl import app, flags


def measure_run(run, options, f) -> list[dict]:
  from sdarts_jax.search import hessian
  fn = hessian.Measure(run.model, options, f.top_k, f.lanczos_iters, f.trace_samples)
  if not fn.host:
    fn = jax.jit(fn)
  images, labels = run.batches(f.batches)
  records = []
  for step in run.steps():
    state = run.state(step)
    out = jax.device_get(fn(state["params"], state["batch_stats"], state["alpha"], images,
                            labels, jax.random.PRNGKey(run.config.seed)))
    record = {"workdir": run.workdir, "step": step, "epoch": step / run.steps_per_epoch,
              **{k: jax.numpy.asarray(v).tolist() for k, v in out.items()}}
    print(json.dumps(record), flush=True)
    records.append(record)
  return records


def main(argv):
  del argv
  from sdarts_jax.analysis import plots, runs
  from sdarts_jax.model import spaces
  from sdarts_jax.run import lifecycle as run_lib, metrics
  from sdarts_jax.search import hessian
  run_lib.quiet_libraries()
  f = flags.FLAGS
  if not f.workdirs:
    sys.exit("error: give --workdirs=DIR[,DIR...]")
  os.makedirs(f.out, exist_ok=True)
  series = {}
  try:
    if f.tracked:
      for w in f.workdirs:
        series[plots.run_label(w)] = [(r["epoch"], r["hessian_lambda_max"])
                                      for r in metrics.read_records(w, "hessian")]
    else:
      options = hessian.HessianLoss(f.wrt, f.train_bn, f.weight_decay)
      with open(os.path.join(f.out, "hessian.jsonl"), "w") as out:
        for w in f.workdirs:
          run = runs.open_run(w)
          records = measure_run(run, options, f)
          out.writelines(json.dumps(r) + "\n" for r in records)
          series[plots.run_label(w)] = [(r["epoch"], r["lambda_max"]) for r in records]
          last = run.state(run.steps()[-1])
          name = os.path.basename(os.path.normpath(w))
          plots.alpha_heatmaps(runs.mixing_weights(last), spaces.get_space(run.config.space),
                               f"softmax(alpha), {plots.run_label(w)}, step {run.steps()[-1]}",
                               os.path.join(f.out, f"alpha_{name}.png"))
  except ValueError as e:
    sys.exit(f"error: {e}")
  plots.trajectories(series, os.path.join(f.out, "lambda_max.png"))
  print(f"wrote {f.out}/lambda_max.png")


def define_flags() -> None:
  flags.DEFINE_list("workdirs", [], "Search workdirs.")
  flags.DEFINE_string("out", "analysis", "Output directory.")
  flags.DEFINE_bool("tracked", False, "Plot the values tracked during search; compute nothing.")
  flags.DEFINE_integer("batches", 1, "Validation batches averaged (reference: 1).")
  flags.DEFINE_integer("top_k", 3, "Eigenvalues reported.")
  flags.DEFINE_integer("lanczos_iters", 20, "Lanczos steps (HVPs) per measurement.")
  flags.DEFINE_integer("trace_samples", 16, "Hutchinson probes (0: no trace).")
  flags.DEFINE_enum("wrt", "alpha", ["alpha", "A"], "Differentiate w.r.t. raw alpha or A.")
  flags.DEFINE_bool("train_bn", True, "BatchNorm with batch statistics (the reference).")
  flags.DEFINE_float("weight_decay", 1e-3, "Added to the diagonal (the reference: alpha's L2).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
