"""SDARTS search in a NAS-Bench-1Shot1 space with the official settings (default method adv,
space ss1 as the reference script).

The numbers of SmoothDARTS optimizers/darts/train_search.py, run as its README runs it
(the script's defaults): 100 epochs, batch 96, C=16, 9 cells, lambda_max every epoch
(Lanczos over all of alpha's dimensions), the one-shot model evaluated with a clean
batch's BN statistics; the optimisers, eps ramp, data split and seed are the shared base's
(`sdarts_jax.defaults.search_config`), which that script shares.

Arguments (comma-separated): space=ss1|ss2|ss3, method=darts|darts2|rs|adv, order=1|2 (2:
the second-order alpha step; darts2 is darts with order 2), smoke (1 cell per stack, C=4,
256 images, 2 epochs: a few minutes on CPU). Score the derived cell every epoch
with --config.nasbench101.file=PATH/nasbench_only108.tfrecord. Example:
  --config=configs/1shot1_search.py:space=ss3,method=rs
"""
import ml_collections

from sdarts_jax import defaults


def get_config(arg=None):
  c = defaults.search_config("adv")
  c.space = "1shot1_ss1"     # 1shot1_ss1 | 1shot1_ss2 | 1shot1_ss3
  c.epochs = 100
  c.data.batch_size = 96
  c.model = ml_collections.ConfigDict(dict(
      channels=16,           # C of the first stack (2C, 4C after the max-pool downsamplings)
      layers=9,              # cells, 3 per stack
      bn_momentum=0.003,     # conv-bn-relu BatchNorms: the reference's PyTorch momentum 0.997
      head_bn_momentum=0.9,  # the BatchNorm before the classifier: PyTorch's default 0.1
      impl="auto",           # convolutions: auto | fused | grouped (see sdarts_jax.model.ops)
  ))
  c.hessian.every_epochs = 1  # the reference computes the Hessian's eigenvalues every epoch
  # The reference's infer follows its Hessian pass, which runs the model in train mode with
  # clean alpha on a validation batch: with BN momentum 0.997 the one-shot model is then
  # evaluated with that batch's statistics, not with those of the last (for SDARTS,
  # perturbed) training step.
  c.eval_bn = "clean_batch"
  c.hessian.lanczos_iters = 35  # >= alpha's size (24, 26, 35): exact, as its dense Hessian
  c.nasbench101 = ml_collections.ConfigDict(dict(
      file="",               # nasbench_only108.tfrecord: score the derived cell every epoch
  ))
  c = defaults.apply_search_args(c, arg, ("space", "method", "order", "smoke"))
  if not c.space.startswith("1shot1_"):
    c.space = "1shot1_" + c.space
  return c
