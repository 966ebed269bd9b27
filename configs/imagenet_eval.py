"""Train a found cell from scratch on ImageNet, mobile setting (docs/method.md, section 7),
with the numbers of the official sota/cnn/train_imagenet.py: 14 cells, 48 channels, 224 px,
batch 1024, SGD lr 0.5 with a linear decay (PC-DARTS's `adjust_lr`) and 5 warm-up epochs
(that script warms up only for batches above 256), weight decay 3e-5, 250 epochs, label
smoothing 0.1, auxiliary weight 0.4, random-resized crop, flip, colour jitter.

Reads TFDS `imagenet2012` prepared in the array_record format (ImageNet must be
downloaded by hand; see README, "Evaluation"), streamed per host with grain.
Arguments (comma-separated): arch=NAME_OR_PATH, smoke. Example:
  python -m sdarts_jax.main --config=configs/imagenet_eval.py:arch=c10_s5_pgd --workdir=runs/in
"""
import ml_collections

from sdarts_jax.evaluation import defaults


def get_config(arg=None):
  c = defaults.common_config()
  c.epochs = 250
  c.drop_path = 0.0
  c.model = ml_collections.ConfigDict(dict(
      channels=48, layers=14, stem="imagenet", stem_multiplier=3, auxiliary=True,
      bn_momentum=0.9, impl="auto"))
  c.data = defaults.data_config("imagenet2012", 1024)
  c.data.image_size = 224    # train crop and test centre crop
  c.data.resize_ratio = 0.875  # test: resize the short side to image_size / ratio (256)
  c.data.min_area = 0.08     # random-resized crop: area fraction in [min_area, 1]
  c.data.color_jitter = (0.4, 0.4, 0.4, 0.2)  # brightness, contrast, saturation, hue
  c.data.workers = 16        # grain decoding processes per host (0 = threads only)
  c.data.threads = 16        # grain read threads per process
  c.optim = ml_collections.ConfigDict(dict(
      lr=0.5, lr_min=0.0, schedule="linear", lr_epoch_offset=0, warmup_epochs=5,
      linear_tail_epochs=5, momentum=0.9, weight_decay=3e-5, grad_clip=5.0))
  c.loss = ml_collections.ConfigDict(dict(aux_weight=0.4, label_smoothing=0.1))
  c.log_every_steps = 100
  return defaults.apply_args(c, arg)
