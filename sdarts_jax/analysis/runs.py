"""Open a finished (or running) search workdir for analysis: its config, model, data and
checkpointed states."""
from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections

from sdarts_jax.data import pipeline
from sdarts_jax.run import checkpoint, metrics
from sdarts_jax.search import run_search


@dataclasses.dataclass
class Run:
  workdir: str
  config: ml_collections.ConfigDict
  model: object
  alpha_source: pipeline.Source    # the alpha half of the training split
  steps_per_epoch: int
  checkpoints: checkpoint.Checkpointer

  def steps(self) -> list[int]:
    """Checkpointed steps, oldest first."""
    return self.checkpoints.all_steps()

  def state(self, step: int) -> dict:
    return self.checkpoints.restore(step)[0]

  def batches(self, count: int, batch_size: int | None = None):
    """The first `count` batches of the alpha half, unaugmented: images [count, B, H, W, 3]
    float, labels [count, B]."""
    b = batch_size or self.config.data.batch_size
    n = count * b
    if n > len(self.alpha_source.labels):
      raise ValueError(f"{count} batches of {b} exceed the {len(self.alpha_source.labels)} "
                       f"alpha images of {self.workdir}")
    src = self.alpha_source
    images = pipeline.preprocess(None, src.images[:n], src.mean, src.std, False)
    return images.reshape((count, b) + src.images.shape[1:]), src.labels[:n].reshape(count, b)


def open_run(workdir: str) -> Run:
  """ValueError when `workdir` is not a search workdir with checkpoints."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"{workdir} has no config.json: not a search workdir")
  config = ml_collections.ConfigDict(metrics.read_json(path))
  _, batches, alpha_source = run_search.search_data(config)
  model = run_search.build_model(config, alpha_source.num_classes)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), 0)
  if not ckpt.all_steps():
    raise ValueError(f"{workdir} has no checkpoints yet")
  return Run(workdir, config, model, alpha_source, batches.steps_per_epoch, ckpt)


def mixing_weights(state: dict) -> dict:
  from sdarts_jax.model import supernet
  return jax.device_get(supernet.mixing_weights(state["alpha"]))
