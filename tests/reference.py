"""Plain reference layers that the model tests compare the supernets with: written with lax
and numpy directly, independent of `sdarts_jax.model.ops` and `sdarts_jax.model.kernels`.
Each returns numpy arrays for numpy inputs and JAX arrays for JAX inputs."""
import jax.numpy as jnp
import numpy as np
from jax import lax


def bn(y, scale=None, bias=None):
  """BatchNorm with batch statistics (train mode) over N, H, W of y [N, H, W, C]; affine
  with scale and bias [C], else not."""
  xp = np if isinstance(y, np.ndarray) else jnp
  mean, var = y.mean((0, 1, 2)), y.var((0, 1, 2))
  y = (y - mean) / xp.sqrt(var + 1e-5)
  return y if scale is None else y * scale + bias


def conv(x, kernel, stride: int = 1):
  """x [N, H, W, C] * kernel [k, k, C, D] -> [N, H', W', D], padding (k - 1) // 2."""
  pad = (kernel.shape[0] - 1) // 2
  y = lax.conv_general_dilated(x, kernel, (stride, stride), [(pad, pad)] * 2,
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return np.asarray(y) if isinstance(x, np.ndarray) else y
