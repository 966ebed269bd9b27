"""SDARTS search, method "rs", on CIFAR-10 with the paper's settings.

Arguments (comma-separated): space=s5|darts|s1|s2|s3|s4, dataset=cifar10|cifar100|svhn,
order=1|2 (2: the second-order alpha step), smoke.
Example: --config=configs/cifar10_rs.py:space=s3,smoke
"""
from sdarts_jax import defaults


def get_config(arg=None):
  return defaults.apply_search_args(defaults.search_config("rs"), arg)
