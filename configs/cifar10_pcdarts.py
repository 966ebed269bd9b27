"""PC-DARTS search (partial channel connections, K = 4, channel shuffle) on CIFAR-10, as the
official SDARTS code runs it (sota/cnn/train_search_pcdarts.py): by default that script's
method and space, DARTS's first-order step without perturbation in space s1; SDARTS-RS or
SDARTS-ADV on top (method=rs, method=adv) go beyond it.

Arguments (comma-separated): method=darts|darts2|rs|adv, space=s1|s2|s3|s4|s5|darts,
dataset=cifar10|cifar100|svhn, order=1|2 (2: the second-order alpha step), smoke.
PC-DARTS's edge normalisation, which the official SDARTS code lacks:
--config.model.edge_norm=True. Example:
  --config=configs/cifar10_pcdarts.py:method=rs,space=s3,smoke
"""
from sdarts_jax import defaults


def get_config(arg=None):
  return defaults.apply_search_args(defaults.pcdarts_search_config("darts"), arg,
                                    ("method", "space", "dataset", "order", "smoke"))
