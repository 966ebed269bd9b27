"""Test setup: four host CPU devices, so sharding tests run without accelerators, and a
tiny search configuration.

XLA reads XLA_FLAGS when JAX initialises its backends, so this must run before any test
module imports jax (pytest imports conftest.py first).
"""
import os

# Four CPU devices; LLVM at -O0, which halves compile time (tests run tiny models, where
# compilation, not execution, is the cost).
for _flag in ("--xla_force_host_platform_device_count=4", "--xla_backend_optimization_level=0"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import pathlib  # noqa: E402
import pytest  # noqa: E402  (after XLA_FLAGS)


def shared_data(name: str) -> pathlib.Path | None:
  """A folder of the workplace's shared data (cifar10-jpeg, nb201): under
  $SDARTS_SHARED_DATA when set (`.ci/run` sets it), else ../shared/data next to the
  repository; None when it is not there (the tests that need it are skipped)."""
  root = os.environ.get("SDARTS_SHARED_DATA") or (
      pathlib.Path(__file__).resolve().parents[2] / "shared" / "data")
  folder = pathlib.Path(root) / name
  return folder if folder.is_dir() else None


def tiny_config(method_name="adv", **overrides):
  """A search config small enough to compile in seconds: 1 (reduction) cell, C=4, synthetic
  8x8 images, batch 8, space s3 (none, skip, sep3), 2 PGD steps."""
  from sdarts_jax import defaults
  c = defaults.search_config(method_name)
  c.space = "s3"
  c.epochs = 2
  c.model.layers = 1
  c.model.channels = 4
  c.perturb.steps = 2
  c.data.name = "synthetic"
  c.data.image_size = 8
  c.data.synthetic_examples = 64
  c.data.batch_size = 8
  c.log_every_steps = 1
  c.compilation_cache = ""
  return override(c, overrides)


def override(config, overrides: dict):
  """Set dotted fields: {"data.batch_size": 8} sets config.data.batch_size."""
  for key, value in overrides.items():
    target = config
    *path, last = key.split(".")
    for p in path:
      target = target[p]
    target[last] = value
  return config


def sigterm_after(steps: int):
  """A stand-in for `lifecycle.on_sigterm` whose flag rises after `steps` steps."""
  calls = {"n": 0}

  def on_sigterm():
    def preempted():
      calls["n"] += 1
      return calls["n"] >= steps
    return preempted

  return on_sigterm


def final_state(workdir: str):
  """(step, state) of the latest checkpoint in a run's workdir."""
  from sdarts_jax.run import checkpoint
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), 2)
  step = ckpt.latest_step()
  state, _ = ckpt.restore(step)
  ckpt.close()
  return step, state


def check_exact_resume(train_fn, config, full: str, resumed: str, monkeypatch, steps: int):
  """A run of `train_fn(config, resumed)` stopped by a simulated SIGTERM after 3 steps
  (mid-epoch), then rerun, ends bit-identical to the uninterrupted run in `full` (`steps`
  steps)."""
  import jax
  import numpy as np
  from sdarts_jax.run import lifecycle
  monkeypatch.setattr(lifecycle, "on_sigterm", sigterm_after(3))
  with pytest.raises(lifecycle.Preempted):
    train_fn(config, resumed)
  assert final_state(resumed)[0] == 3
  monkeypatch.undo()
  train_fn(config, resumed)
  (s1, a), (s2, b) = final_state(full), final_state(resumed)
  assert s1 == s2 == steps
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def assert_close_normwise(actual, desired, tol: float, err_msg: str = ""):
  """Per leaf (arrays or trees of them): max |actual - desired| <= tol * max |desired|.

  float32 results computed two ways (another implementation, numpy, PyTorch, a formula)
  differ by roundings of the largest terms that enter each entry, not of the entry itself:
  an entry that cancels toward zero keeps the absolute error of its array's scale, and the
  order of the sums and the fused multiply-adds differ between CPUs (AVX2, AVX-512), so an
  elementwise rtol holds only on the machine it was taken from; this bound holds on any.
  A desired leaf of zeros must be matched exactly."""
  import jax
  import numpy as np
  got, want = jax.tree.leaves(actual), jax.tree.leaves(desired)
  assert len(got) == len(want), (err_msg, len(got), len(want))
  for g, w in zip(got, want):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    assert g.shape == w.shape or w.ndim == 0, (err_msg, g.shape, w.shape)
    scale = np.max(np.abs(w), initial=0.0)
    err = np.max(np.abs(g - w), initial=0.0)
    assert err <= tol * scale, (f"{err_msg}: max |actual - desired| = {err:.3e} > "
                                f"{tol:.0e} * {scale:.3e} (normwise {err / max(scale, 1e-300):.2e})")


@pytest.fixture
def make_config():
  return tiny_config


def tiny_search(method_name="adv", steps_per_epoch=4, **overrides):
  """(config, model, initial state, batches, preprocess) of `tiny_config`'s search:
  batches a `pipeline.SearchBatches` (its source: batches.source), preprocess(key, images)
  with augmentation."""
  import jax
  from sdarts_jax.data import pipeline
  from sdarts_jax.search import run_search
  config = tiny_config(method_name, **overrides)
  source = pipeline.load(config.data, "train")
  batches = pipeline.SearchBatches(source, 0.5, config.data.batch_size, config.seed)
  model = run_search.build_model(config, source.num_classes)
  state = jax.jit(lambda: run_search.init_state(model, config, source.images.shape[1:],
                                                steps_per_epoch))()
  preprocess = lambda key, images: pipeline.preprocess(key, images, source.mean, source.std, True)
  return config, model, state, batches, preprocess


def hessian_batches(source):
  """Two batches of 8 of source's first images, normalised (no augmentation):
  images [2, 8, H, W, 3], labels [2, 8]."""
  import jax.numpy as jnp
  from sdarts_jax.data import pipeline
  x = pipeline.preprocess(None, source.images[:16], source.mean, source.std, False)
  return x.reshape((2, 8) + x.shape[1:]), jnp.asarray(source.labels[:16]).reshape(2, 8)
