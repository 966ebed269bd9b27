"""SDARTS search in the NAS-Bench-201 space with the official settings (default method adv).

The numbers of SmoothDARTS nasbench201/train_search.py: 100 epochs, batch 64, C=16, N=5
cells per stage; the optimisers, eps ramp and data split are the shared base's
(`sdarts_jax.defaults.search_config`), which that script shares.

Arguments (comma-separated): method=darts|darts2|rs|adv, dataset=cifar10|cifar100|svhn,
order=1|2 (2: the second-order alpha step; darts2 is darts with order 2), smoke.
Query the benchmark every epoch with --config.nb201.table=PATH (docs/data.md: where to get
the table, or how to convert it from the official benchmark files). Example:
  --config=configs/nb201_search.py:method=rs,dataset=cifar100
  --config.nb201.table=../shared/data/nb201/nats_bench.csv
"""
import ml_collections

from sdarts_jax import defaults


def get_config(arg=None):
  c = defaults.search_config("adv")
  c.space = "nb201"
  c.epochs = 100
  c.model = ml_collections.ConfigDict(dict(
      channels=16,           # C of the first stage (2C, 4C after the ResNet reductions)
      cells_per_stage=5,     # N
      bn_momentum=0.9,
      impl="auto",           # convolutions: auto | fused | grouped (see sdarts_jax.model.ops)
  ))
  c.nb201 = ml_collections.ConfigDict(dict(
      table="",              # NAS-Bench-201 accuracy CSV: query the cell every epoch
      # its sha256, checked on loading: the published table's (nb201.TABLE_SHA256; a
      # table of your own: its digest, or "" for no check; docs/data.md)
      table_sha256="cb5d777ec3368be83c8f9b3aa4d520696051cb0eb8d94b8f85b519f9ea4afa3e",
  ))
  return defaults.apply_search_args(c, arg, ("method", "dataset", "order", "smoke"))
