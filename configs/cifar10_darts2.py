"""DARTS search with the second-order alpha step (config.alpha.order = 2: the validation
loss at the one-step unrolled weights, H v exact; config.alpha.hvp=finite_difference gives
the reference's central difference) on CIFAR-10 with the paper's settings.

Arguments (comma-separated): space=s5|darts|s1|s2|s3|s4, dataset=cifar10|cifar100|svhn,
order=1|2 (1: first order; the order of a darts2 search is 2), smoke.
Example: --config=configs/cifar10_darts2.py:space=s3,smoke
SDARTS with the second-order alpha step: --config=configs/cifar10_adv.py:order=2
"""
from sdarts_jax import defaults


def get_config(arg=None):
  return defaults.apply_search_args(defaults.search_config("darts2"), arg)
