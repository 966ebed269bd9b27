"""Train a found cell from scratch on CIFAR-100 (docs/method.md, section 7): 20 cells, 36 channels,
600 epochs, batch 96, cutout 16, drop-path 0.2, auxiliary weight 0.4.

Arguments (comma-separated): arch=NAME_OR_PATH (a published genotype such as c10_s5_pgd,
or a search's genotype.json), smoke. Example:
  python -m sdarts_jax.main --config=configs/cifar100_eval.py:arch=c10_s5_pgd --workdir=runs/e
RobustDARTS's S1-S4 setting: --config.model.layers=8 --config.model.channels=16.
"""
from sdarts_jax.evaluation import defaults


def get_config(arg=None):
  return defaults.apply_args(defaults.cifar_config("cifar100"), arg)
