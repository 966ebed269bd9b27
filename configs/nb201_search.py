"""SDARTS search in the NAS-Bench-201 space with the official settings (default method adv).

Arguments (comma-separated): method=darts|darts2|rs|adv, dataset=cifar10|cifar100|svhn,
order=1|2 (2: the second-order alpha step; darts2 is darts with order 2), smoke.
Query the benchmark every epoch with --config.nb201.table=PATH (docs/data.md: where to get
the table, or how to convert it from the official benchmark files). Example:
  --config=configs/nb201_search.py:method=rs,dataset=cifar100
  --config.nb201.table=../shared/data/nb201/nats_bench.csv
"""
from sdarts_jax import defaults


def get_config(arg=None):
  return defaults.apply_search_args(defaults.nb201_search_config("adv"), arg,
                                    ("method", "dataset", "order", "smoke"))
