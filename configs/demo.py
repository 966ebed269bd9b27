"""The `make demo` search: SDARTS-ADV on a small supernet and a subset of CIFAR-10, about
10 minutes on 2 CPU cores. The data source is set by `python -m sdarts_jax.demo`."""
from sdarts_jax import defaults


def get_config(arg=None):
  c = defaults.apply_search_args(defaults.search_config("adv"), arg)
  c.epochs = 3
  c.model.layers = 5
  c.model.channels = 4
  c.data.batch_size = 32
  c.data.max_examples = 1280  # 640 images train the weights, 640 alpha: 20 steps/epoch
  c.log_every_steps = 5
  return c
