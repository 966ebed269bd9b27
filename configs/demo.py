"""The `make demo` search: SDARTS-ADV on a small supernet and a subset of CIFAR-10, about 10
minutes on 2 CPU cores (the sizes: `SIZES["demo"]` in `sdarts_jax.defaults`, beside the
smoke runs'). The data source is set by `python -m sdarts_jax.demo`."""
from sdarts_jax import defaults


def get_config(arg=None):
  c = defaults.resize(defaults.search_config("adv"), "demo")
  return defaults.apply_search_args(c, arg)
