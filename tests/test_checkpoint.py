"""Checkpoint integrity: a checksum saved with every checkpoint, fallback past damaged ones."""
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from sdarts_jax.run import checkpoint, lifecycle, parallel
from sdarts_jax.search import run_search

N = 65536  # floats per array: the data file is far larger than the 4,096 bytes flipped


def make_state(kind: str, seed: int) -> dict:
  """A small search-like state: params, an optax chain's state (tuples, namedtuples) and
  the step. kind: "random" (stored as raw bytes: damage reads back as wrong numbers) or
  "smooth" (compressed: damage breaks decompression)."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=N) if kind == "random" else np.arange(N) + seed
  params = {"w": jnp.asarray(w, jnp.float32), "b": jnp.full((3,), float(seed))}
  tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9))
  opt = tx.init(params)
  opt = jax.tree.map(lambda x: x + seed, opt)
  return {"params": params, "opt": opt, "step": jnp.asarray(seed, jnp.int32)}


def damage(folder: str) -> list[str]:
  """Flip 4,096 bytes in the middle of every data file over 12 KiB under `folder`.

  Every one, not only the largest: OCDBT keeps a copy of its b-tree per process besides
  the merged one that restores read, so the largest file can be a copy that nothing reads.
  """
  paths = [p for p in glob.glob(os.path.join(folder, "state", "**", "d", "*"), recursive=True)
           if os.path.getsize(p) > 3 * 4096]
  assert paths
  for path in paths:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      f.seek(size // 2)
      block = f.read(4096)
      f.seek(size // 2)
      f.write(bytes(b ^ 0xFF for b in block))
  return paths


def two_checkpoints(workdir: str, kind: str):
  """A Checkpointer under workdir/checkpoints with steps 1 and 2, the init function of
  their state and its replicated sharding."""
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), 0)
  for step in (1, 2):
    ckpt.save(step, make_state(kind, step), {"step": step})
  ckpt.wait()
  init = jax.jit(lambda: make_state(kind, 0))
  return ckpt, init, parallel.replicated(parallel.make_mesh())


def assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_checksum_survives_restore_without_target(tmp_path):
  ckpt, _, _ = two_checkpoints(str(tmp_path), "random")
  state, meta = ckpt.restore(2)  # tuples come back as lists, namedtuples as dicts
  assert meta == {"step": 2}
  assert checkpoint.state_checksum(state) == checkpoint.state_checksum(make_state("random", 2))
  assert checkpoint.state_checksum(make_state("random", 1)) != checkpoint.state_checksum(
      make_state("random", 2))
  ckpt.close()


@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys, kind):
  workdir = str(tmp_path)
  ckpt, init, sharding = two_checkpoints(workdir, kind)
  damage(ckpt.step_path(2))
  with pytest.raises(checkpoint.CheckpointError, match="step 2"):
    ckpt.restore(2)

  state, meta = lifecycle.restore_or_init(ckpt, init, sharding, workdir)
  assert meta == {"step": 1}
  assert_tree_equal(state, make_state(kind, 1))
  err = capsys.readouterr().err
  reason = "is damaged" if kind == "random" else "cannot be read"
  assert f"warning: the checkpoint of step 2 ({ckpt.step_path(2)}) {reason}" in err
  assert "trying the checkpoint before it" in err
  moved = glob.glob(os.path.join(workdir, "checkpoints_damaged", "2_*"))
  assert len(moved) == 1 and f"moved the damaged checkpoint of step 2 to {moved[0]}" in err
  # The run goes on from step 1 and saves step 2 again.
  assert ckpt.all_steps() == [1]
  ckpt.save(2, make_state(kind, 2), {"step": 2})
  ckpt.wait()
  assert ckpt.restore(2)[1] == {"step": 2}  # its checksum checked
  ckpt.close()


def test_no_intact_checkpoint_is_a_clear_error(tmp_path, capsys):
  workdir = str(tmp_path)
  ckpt, init, sharding = two_checkpoints(workdir, "random")
  for step in (1, 2):
    damage(ckpt.step_path(step))
  with pytest.raises(lifecycle.RunError, match=r"none of the checkpoints in .*checkpoints "
                                               r"\(steps 1, 2\) can be restored .* remove .* rerun"):
    lifecycle.restore_or_init(ckpt, init, sharding, workdir)
  err = capsys.readouterr().err
  assert "step 2" in err and "step 1" in err
  assert ckpt.all_steps() == [1, 2]  # nothing moved when nothing restores
  assert not os.path.exists(os.path.join(workdir, "checkpoints_damaged"))
  ckpt.close()


def test_non_finite_message_without_checkpoint(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), 2)
  with pytest.raises(lifecycle.RunError, match="no checkpoint has been saved yet") as e:
    lifecycle.check_finite({"train_loss": float("nan")}, 3, ckpt, str(tmp_path))
  assert "None" not in str(e.value)
  ckpt.save(2, {"x": jnp.zeros(2)}, {})
  ckpt.wait()
  with pytest.raises(lifecycle.RunError, match=r"last good checkpoint \(step 2\) is kept"):
    lifecycle.check_finite({"train_loss": float("inf")}, 3, ckpt, str(tmp_path))
  ckpt.close()


def test_search_state_falls_back(tmp_path, capsys):
  """The tiny search's real state (Flax params, both optax states) on the search's
  replicated sharding, saved at the ends of epochs 1 and 2 as the loop saves it: with the
  latest damaged, `restore_or_init` returns the first."""
  config = tiny_config("adv")
  source, batches, _ = run_search.search_data(config)
  model = run_search.build_model(config, source.num_classes)
  sharding = parallel.replicated(parallel.make_mesh())
  init = jax.jit(lambda: run_search.init_state(model, config, source.images.shape[1:],
                                               batches.steps_per_epoch), out_shardings=sharding)
  rng = np.random.default_rng(0)  # values for the state's shapes, without compiling init
  state = jax.tree.map(lambda s: jax.device_put(rng.normal(size=s.shape).astype(s.dtype),
                                                sharding), jax.eval_shape(init))
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), config.checkpoints_to_keep)
  ckpt.save(4, state, {"step": 4, "epoch": 1, "lambda_max": []})
  later = dict(state, alpha=jax.tree.map(lambda a: a + 1.0, state["alpha"]),
               step=state["step"] + 8)
  ckpt.save(8, later, {"step": 8, "epoch": 2, "lambda_max": []})
  ckpt.wait()
  damage(ckpt.step_path(8))
  restored, meta = lifecycle.restore_or_init(ckpt, init, sharding, str(tmp_path))
  assert meta["step"] == 4 and "warning: the checkpoint of step 8" in capsys.readouterr().err
  assert_tree_equal(restored, state)
  ckpt.close()


def test_compilation_cache_is_off_on_several_cpu_devices(tmp_path, capsys, monkeypatch):
  """On CPU over several devices (the tests run on 4) the persistent cache stays off, with
  a log line: executables loaded from it deadlock in their all-reduces with this JAX
  (lifecycle.enable_compilation_cache); on one device it is switched on."""
  before = jax.config.jax_compilation_cache_dir
  lifecycle.enable_compilation_cache(str(tmp_path / "xla"))
  assert jax.config.jax_compilation_cache_dir == before
  assert "compilation cache is off" in capsys.readouterr().out
  monkeypatch.setattr(jax, "device_count", lambda: 1)
  try:
    lifecycle.enable_compilation_cache(str(tmp_path / "xla"))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
