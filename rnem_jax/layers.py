"""Layers with the TF-slim conventions the reference R-NEM code was trained with.

Every affine layer is ``linear (with bias) -> optional layer norm -> activation``
(REFERENCE §1.1): Glorot-uniform kernels, zero biases, layer norm over all
non-batch axes with a per-channel gain/shift and epsilon 1e-12, TF 'SAME'
padding, and decoder "deconvolutions" made of a nearest-neighbour resize with
the legacy TF index rule ``src = floor(i * in / out)`` followed by a stride-1
convolution.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

LN_EPSILON = 1e-12

glorot_uniform = nn.initializers.xavier_uniform()

ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "elu": nn.elu,
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
}


def activation(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """Returns the activation function called ``name`` (see ``ACTIVATIONS``)."""
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def layer_norm(x: jnp.ndarray, name: Optional[str] = None) -> jnp.ndarray:
  """slim.layer_norm: moments over every non-batch axis, affine per last axis.

  Must be called inside a compact Flax module. ``x: [N, ..., C]``.
  """
  return nn.LayerNorm(
      epsilon=LN_EPSILON,
      reduction_axes=tuple(range(1, x.ndim)),
      feature_axes=-1,
      name=name,
  )(x)


def nearest_resize_indices(size_in: int, size_out: int) -> list[int]:
  """Source index of each output row under TF1's legacy NEAREST rule."""
  return [(i * size_in) // size_out for i in range(size_out)]


def nearest_resize(x: jnp.ndarray, size: Sequence[int]) -> jnp.ndarray:
  """Nearest-neighbour resize of ``x: [N, H, W, C]`` to ``[N, size[0], size[1], C]``.

  Uses ``floor(i * in / out)`` source indices (TF1 ``resize_images`` method 1,
  ``align_corners=False``). Integer up-scaling is a ``repeat``, which is the
  same gather and much cheaper to differentiate.
  """
  out = x
  for axis, (n_in, n_out) in zip((1, 2), zip(x.shape[1:3], size)):
    if n_out == n_in:
      continue
    if n_out % n_in == 0:
      out = jnp.repeat(out, n_out // n_in, axis=axis)
    else:
      out = jnp.take(out, jnp.asarray(nearest_resize_indices(n_in, n_out)), axis=axis)
  return out


class DenseLN(nn.Module):
  """``act(LN(W x + b))``; ``use_ln=False`` drops the layer norm."""

  features: int
  act: str = "relu"
  use_ln: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """``x: [..., F_in] -> [..., features]``; LN over the last axis."""
    y = nn.Dense(self.features, kernel_init=glorot_uniform, bias_init=nn.initializers.zeros)(x)
    if self.use_ln:
      y = nn.LayerNorm(epsilon=LN_EPSILON)(y)
    return activation(self.act)(y)


class ConvLN(nn.Module):
  """``act(LN(conv(x)))`` with TF 'SAME' padding; optional nearest resize first.

  ``resize_to`` turns it into the reference decoder's "r_conv" layer: resize
  to ``resize_to`` then a stride-1 convolution.
  """

  features: int
  kernel: int
  stride: int = 1
  act: str = "relu"
  use_ln: bool = True
  resize_to: Optional[tuple[int, int]] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """``x: [N, H, W, C] -> [N, H', W', features]``."""
    if self.resize_to is not None:
      x = nearest_resize(x, self.resize_to)
    y = nn.Conv(
        self.features,
        (self.kernel, self.kernel),
        strides=(self.stride, self.stride),
        padding="SAME",
        kernel_init=glorot_uniform,
        bias_init=nn.initializers.zeros,
    )(x)
    if self.use_ln:
      y = layer_norm(y)
    return activation(self.act)(y)
