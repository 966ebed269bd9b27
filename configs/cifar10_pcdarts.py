"""PC-DARTS search (partial channel connections, K = 4, channel shuffle) on CIFAR-10, as the
official SDARTS code runs it (sota/cnn/train_search_pcdarts.py, model_search_pcdarts.py):
by default that script's method and space, DARTS's first-order step without perturbation
in space s1 (the published PC-DARTS cells are s1-s4); SDARTS-RS or SDARTS-ADV on top
(method=rs, method=adv: the perturbation and eps ramp of sota/cnn/train_search.py) go
beyond it. No edge normalisation; that script's other hyper-parameters (batch 64, weight lr
0.025 cosine to 0.001, momentum 0.9, weight decay 3e-4, alpha lr 3e-4 with decay 1e-3, 50
epochs, no warm-up, half the train split for alpha, C=16, 8 cells) are the shared base's
(`sdarts_jax.defaults.search_config`).

Arguments (comma-separated): method=darts|darts2|rs|adv, space=s1|s2|s3|s4|s5|darts,
dataset=cifar10|cifar100|svhn, order=1|2 (2: the second-order alpha step), smoke.
PC-DARTS's edge normalisation, which the official SDARTS code lacks:
--config.model.edge_norm=True. Example:
  --config=configs/cifar10_pcdarts.py:method=rs,space=s3,smoke
"""
from sdarts_jax import defaults


def get_config(arg=None):
  c = defaults.search_config("darts")
  c.space = "s1"
  c.model.partial_k = 4      # 1/K of each state's channels through the mixed ops
  return defaults.apply_search_args(c, arg, ("method", "space", "dataset", "order", "smoke"))
