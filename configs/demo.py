"""The `make demo` search (`defaults.demo_config`): SDARTS-ADV on a small supernet and a
subset of CIFAR-10, about 10 minutes on 2 CPU cores. The data source is set by
`python -m sdarts_jax.demo`."""
from sdarts_jax import defaults


def get_config(arg=None):
  return defaults.apply_search_args(defaults.demo_config(), arg)
