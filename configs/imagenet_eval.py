"""Train a found cell from scratch on ImageNet, mobile setting (docs/method.md, section 7): 14 cells,
48 channels, 224 px, batch 1024, SGD lr 0.5 with a linear decay and 5 warm-up epochs (as
the official sota/cnn/train_imagenet.py), weight decay 3e-5, 250 epochs, label smoothing 0.1, auxiliary weight 0.4,
random-resized crop, flip, colour jitter.

Reads TFDS `imagenet2012` prepared in the array_record format (ImageNet must be
downloaded by hand; see README, "Evaluation"), streamed per host with grain.
Arguments (comma-separated): arch=NAME_OR_PATH, smoke. Example:
  python -m sdarts_jax.main --config=configs/imagenet_eval.py:arch=c10_s5_pgd --workdir=runs/in
"""
from sdarts_jax.evaluation import defaults


def get_config(arg=None):
  return defaults.apply_args(defaults.imagenet_config(), arg)
