"""SDARTS search in a NAS-Bench-1Shot1 space with the official settings (default method adv,
space ss1 as the reference script).

Arguments (comma-separated): space=ss1|ss2|ss3, method=darts|darts2|rs|adv, order=1|2 (2:
the second-order alpha step; darts2 is darts with order 2), smoke (1 cell per stack, C=4,
256 images, 2 epochs: a few minutes on CPU). Score the derived cell every epoch
with --config.nasbench101.file=PATH/nasbench_only108.tfrecord. Example:
  --config=configs/1shot1_search.py:space=ss3,method=rs
"""
from sdarts_jax import defaults


def get_config(arg=None):
  c = defaults.apply_search_args(defaults.oneshot1_search_config("adv"), arg,
                                 ("space", "method", "order", "smoke"))
  if not c.space.startswith("1shot1_"):
    c.space = "1shot1_" + c.space
  return c
