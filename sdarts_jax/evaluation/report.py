"""Model report: parameters and multiply-adds of a genotype's evaluation network.

  python -m sdarts_jax.evaluation.report --arch=c10_s5_pgd
  python -m sdarts_jax.evaluation.report --arch=runs/adv/genotype.json --setting=imagenet

Counted as papers count them: parameters without the auxiliary head (BatchNorm scales
and biases included, running statistics not); multiply-adds (MACs) of the convolutions
and linear layers of one inference pass of one image, the auxiliary head excluded, a
depthwise kxk convolution as k*k*C*H*W (the network is traced with the "grouped"
implementation, which keeps depthwise convolutions depthwise). Nothing is compiled.
"""
from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
from absl import app, flags
from jax import extend

from sdarts_jax.evaluation import network
from sdarts_jax.search import genotype as genotype_lib

# name -> (channels, layers, stem, image size, classes): the paper settings.
SETTINGS = {
    "cifar": (36, 20, "cifar", 32, 10),
    "imagenet": (48, 14, "imagenet", 224, 1000),
}
MOBILE_MACS = 600e6  # the ImageNet mobile setting's limit


def count_macs(fn, *args) -> int:
  """Multiply-accumulates of fn(*args): every conv_general_dilated and dot_general in its
  jaxpr (scans counted `length` times). A convolution costs output size times
  (kernel window * input channels per group); a dot costs output size times the
  contracted size."""
  return _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      lhs_spec, rhs_spec, out_spec = eqn.params["dimension_numbers"]
      rhs = eqn.invars[1].aval.shape
      window = math.prod(rhs[d] for d in rhs_spec[2:]) * rhs[rhs_spec[1]]
      total += math.prod(eqn.outvars[0].aval.shape) * window
    elif name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
    repeat = eqn.params.get("length", 1) if name == "scan" else 1
    for sub in _sub_jaxprs(eqn.params):
      total += repeat * _jaxpr_macs(sub)
  return total


def _sub_jaxprs(params):
  for value in params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, extend.core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, extend.core.Jaxpr):
        yield v


def model_report(genotype, setting: str, num_classes: int | None = None) -> dict:
  """{"params", "params_with_aux", "macs", "channels", "layers", "image_size"} of a
  genotype's network in `setting` ("cifar" or "imagenet")."""
  channels, layers, stem, size, classes = SETTINGS[setting]
  model = network.build(genotype, num_classes or classes, channels, layers, stem,
                        auxiliary=True, impl="grouped")
  variables = jax.eval_shape(lambda: network.init(model, jax.random.PRNGKey(0),
                                                  (size, size, 3)))
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  macs = count_macs(lambda v, x: model.apply(v, x, False, rngs=network.rngs(jax.random.PRNGKey(0))),
                    variables, x)
  return {"params": network.count_params(variables["params"]),
          "params_with_aux": network.count_params(variables["params"], include_aux=True),
          "macs": macs, "channels": channels, "layers": layers, "image_size": size}


FLAGS = flags.FLAGS
flags.DEFINE_multi_string("arch", None, "Published genotype name or genotype JSON path "
                          "(repeat for several).")
flags.DEFINE_enum("setting", None, list(SETTINGS), "Only this setting (default: both).")


def main(argv):
  del argv
  if not FLAGS.arch:
    print("error: --arch is required (a published name such as darts_v2, or a genotype "
          "JSON file)", file=sys.stderr)
    sys.exit(2)
  settings = [FLAGS.setting] if FLAGS.setting else list(SETTINGS)
  print(f"{'arch':<28} {'setting':<9} {'cells':>5} {'C':>3} {'params':>12} "
        f"{'params+aux':>12} {'MACs':>14}")
  for arch in FLAGS.arch:
    try:
      geno = genotype_lib.resolve(arch)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    for setting in settings:
      r = model_report(geno, setting)
      note = ""
      if setting == "imagenet":
        note = "  (mobile: < 600M)" if r["macs"] < MOBILE_MACS else "  (over the 600M limit)"
      print(f"{arch:<28} {setting:<9} {r['layers']:>5} {r['channels']:>3} "
            f"{r['params']:>12,} {r['params_with_aux']:>12,} {r['macs']:>14,}{note}")


if __name__ == "__main__":
  app.run(main)
