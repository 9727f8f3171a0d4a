"""Layers with the TF-slim conventions the authors' R-NEM code was trained with.

Every affine layer is ``linear (with bias) -> optional layer norm -> activation``
(docs/design.md#layers-and-initialisation): Glorot-uniform kernels, zero biases,
layer norm over all non-batch axes with a per-channel gain/shift and epsilon
1e-12, TF 'SAME' padding, and decoder "deconvolutions" made of a nearest-neighbour
resize with the legacy TF index rule ``src = floor(i * in / out)`` followed by a
stride-1 convolution (paper appendix A.1).

Convolutions have two implementations with the same maths (``impl`` of ``conv2d`` and of
the modules; a config's ``model.conv_impl``, see ``resolve_conv_impl``):
``"xla"`` hands TF-SAME convolutions to ``lax.conv_general_dilated`` as written;
``"fast"`` (the default) rewrites them so that only stride-1 convolutions remain,
whose gradients XLA:CPU computes quickly (``rnem_jax/benchmark.py`` measures both;
docs/design.md#measured-choices):

* a stride-s convolution is a stride-1 convolution of the space-to-depth
  rearranged input (s*s*C channels) with the correspondingly rearranged kernel;
  XLA:CPU differentiates strided convolutions with an input-dilated
  convolution, which runs many times slower than a plain one;
* a nearest-neighbour up-scaling by an integer factor f followed by a k x k
  convolution is, per output phase (i mod f, j mod f), a small convolution of
  the low-resolution input whose taps are sums of kernel taps ("sub-pixel"
  convolution): the f*f phases are one convolution with f*f*C_out channels
  followed by depth-to-space. The up-scaled image is never built, and it costs
  about (ceil((k-1)/f)+1)^2 / k^2 of the multiply-adds (9/16 for k=4, f=2);
* the stride-1 convolutions have a hand-written VJP (``_conv_stride1``) so that
  a rolled ``lax.scan`` over EM steps differentiates as fast as an unrolled one:
  d/dx a forward convolution, d/dkernel one matrix product per kernel tap of the
  output gradient (channel-major) and the shifted input;
* convolutions with at most ``THIN_CHANNELS`` input or output channels (the
  encoder's one-channel frames, the decoder's last layer), which XLA:CPU's
  convolution kernels run slowly, are matrix products in both directions
  (``_conv_valid``, ``_thin_output_vjp``, ``_thin_input_dx``).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


CONV_IMPLEMENTATIONS = ("fast", "xla")


def resolve_conv_impl(name: str, backend: Optional[str] = None) -> str:
  """``"auto"`` -> ``"fast"`` on the CPU backend, ``"xla"`` on GPU/TPU; other names checked.

  The fast convolutions are written for XLA:CPU, whose own strided and
  transposed convolution gradients are slow; GPU and TPU compilers handle
  ``lax.conv_general_dilated`` and its gradients natively. ``backend`` defaults
  to ``jax.default_backend()``.
  """
  if name == "auto":
    return "fast" if (backend or jax.default_backend()) == "cpu" else "xla"
  if name not in CONV_IMPLEMENTATIONS:
    raise ValueError(f"unknown conv implementation {name!r}; choose 'auto' or one of "
                     f"{CONV_IMPLEMENTATIONS}")
  return name


_DIMS = ("NHWC", "HWIO", "NHWC")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF 'SAME' (low, high) padding of one spatial axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _conv(x: jnp.ndarray, kernel: jnp.ndarray, padding) -> jnp.ndarray:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DIMS)


# Channel counts at or below this are "thin": XLA:CPU's convolution kernels run
# them slowly, so such convolutions become matrix products instead
# (docs/design.md#measured-choices).
THIN_CHANNELS = 4


def _pad_spatial(x: jnp.ndarray, padding) -> jnp.ndarray:
  """``x: [N, H, W, C]`` padded (or, for negative entries, cropped) by ``((lo, hi), (lo, hi))``."""
  zero = jnp.zeros((), x.dtype)
  return jax.lax.pad(x, zero, ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))


def _tap_shifts(k: int, out_hw, padded_hw) -> list:
  """Per tap (a, b), row-major: the ``_pad_spatial`` padding that puts an output-sized
  ``[N, H', W', .]`` array at offset (a, b) of the padded input grid ``padded_hw``."""
  (h, w), (hp, wp) = out_hw, padded_hw
  return [((a, hp - h - a), (b, wp - w - b)) for a in range(k) for b in range(k)]


def _taps_matrix(kernel: jnp.ndarray) -> jnp.ndarray:
  """``[k, k, C, F] -> [C, k*k*F]``: column block ``a*k + b`` is tap ``(a, b)``."""
  k, _, c, f = kernel.shape
  return kernel.transpose(2, 0, 1, 3).reshape(c, k * k * f)


def _conv_valid(xp: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """Stride-1 VALID convolution of the padded ``xp: [N, Hp, Wp, C]`` with ``[k, k, C, F]``.

  Thin channels become one matrix product: with few input channels, of the k*k
  shifted views of the input concatenated on channels (im2col); with few output
  channels, of the input and every tap's weights at once, whose k*k shifted
  views are then summed.
  """
  k, _, c, f = kernel.shape
  h, w = xp.shape[1] - k + 1, xp.shape[2] - k + 1
  if c <= THIN_CHANNELS:
    cols = jnp.concatenate([xp[:, a:a + h, b:b + w, :] for a in range(k) for b in range(k)], -1)
    return jnp.einsum("nhwi,io->nhwo", cols, kernel.reshape(k * k * c, f))
  if f <= THIN_CHANNELS:
    z = jnp.einsum("nhwc,co->nhwo", xp, _taps_matrix(kernel))
    taps = [z[:, a:a + h, b:b + w, (a * k + b) * f:(a * k + b + 1) * f]
            for a in range(k) for b in range(k)]
    return functools.reduce(jnp.add, taps)
  return _conv(xp, kernel, "VALID")


def _thin_output_vjp(x, kernel, padding, dy):
  """Both gradients of a stride-1 convolution with few output channels, as matrix products.

  ``x: [N, H, W, C]``, ``kernel: [k, k, C, F]``, ``dy: [N, H', W', F]`` ->
  ``(dx [N, H, W, C], dW [k, k, C, F])``. The k*k shifted views of ``dy``
  stacked on channels (``dz``, k*k*F channels: few) give ``dx = dz W^T`` and
  ``dW = dz^T x``; the latter contracts over pixels with ``dz`` channel-major,
  the layout XLA:CPU multiplies fastest.
  """
  k, _, c, f = kernel.shape
  xp = _pad_spatial(x, padding)
  shifts = _tap_shifts(k, dy.shape[1:3], xp.shape[1:3])
  dz = jnp.concatenate([_pad_spatial(dy, s) for s in shifts], -1)
  dxp = jnp.einsum("nhwo,co->nhwc", dz, _taps_matrix(kernel))
  dyt = jax.lax.optimization_barrier(dy.transpose(3, 0, 1, 2))
  zero = jnp.zeros((), dy.dtype)
  dzt = jnp.concatenate([jax.lax.pad(dyt, zero, ((0, 0, 0), (0, 0, 0), (*s[0], 0), (*s[1], 0)))
                         for s in shifts])  # [k*k*F, N, Hp, Wp]
  dk = (dzt.reshape(k * k * f, -1) @ xp.reshape(-1, c)).reshape(k, k, f, c).transpose(0, 1, 3, 2)
  return _pad_spatial(dxp, [(-lo, -hi) for lo, hi in padding]), dk


def _thin_input_dx(x_shape, kernel, padding, dy):
  """Input gradient of a stride-1 convolution with few input channels (col2im).

  ``x_shape = (N, H, W, C)``, ``kernel: [k, k, C, F]``, ``dy: [N, H', W', F]`` ->
  ``dx [N, H, W, C]``. ``dy W^T`` gives every output pixel's k*k*C input shares
  at once (few channels); each tap's share is summed into the input at its offset.
  """
  k, _, c, f = kernel.shape
  padded_hw = [x_shape[i + 1] + sum(padding[i]) for i in (0, 1)]
  dcols = jnp.einsum("nhwo,io->nhwi", dy, kernel.reshape(k * k * c, f))
  parts = [_pad_spatial(dcols[..., i * c:(i + 1) * c], shift)
           for i, shift in enumerate(_tap_shifts(k, dy.shape[1:3], padded_hw))]
  return _pad_spatial(functools.reduce(jnp.add, parts), [(-lo, -hi) for lo, hi in padding])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_stride1(x: jnp.ndarray, kernel: jnp.ndarray, padding) -> jnp.ndarray:
  """Stride-1 convolution, ``padding = ((lo, hi), (lo, hi))``, with a loop-friendly VJP.

  JAX's own kernel-gradient convolution contracts over the batch through
  non-canonical dimension numbers; XLA:CPU re-lays it out well in straight-line
  code but not inside a ``while`` loop (a rolled ``lax.scan``), where it runs
  many times slower. Here d/dx is a forward convolution with the flipped kernel and
  d/dkernel a matrix product per tap (dy [F, N*H*W] times the shifted input
  [N*H*W, C]; faster per layer than one batch-contracting convolution); thin
  channels use matrix products throughout (see ``_conv_valid``). Measurements:
  docs/design.md#measured-choices.
  """
  return _conv_valid(_pad_spatial(x, padding), kernel)


def _conv_stride1_fwd(x, kernel, padding):
  return _conv_stride1(x, kernel, padding), (x, kernel)


def _conv_stride1_bwd(padding, res, dy):
  x, kernel = res
  if kernel.shape[-1] <= THIN_CHANNELS:
    return _thin_output_vjp(x, kernel, padding, dy)
  k = kernel.shape[:2]
  if kernel.shape[2] <= THIN_CHANNELS:
    dx = _thin_input_dx(x.shape, kernel, padding, dy)
  else:
    # d/dx: correlate dy with the flipped kernel, in/out channels swapped.
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    dx = _conv(dy, flipped, [(k[i] - 1 - padding[i][0], k[i] - 1 - padding[i][1]) for i in (0, 1)])
  # d/dkernel: per tap, one matrix product of the channel-major output gradient
  # [F, pixels] (one transposed copy of dy) and the input's view shifted by the tap
  # [pixels, C] (a slice of x as it is laid out); [F, C] per tap, transposed once at the end.
  # No slower than shifting either operand channel-major (docs/design.md#measured-choices).
  xp = _pad_spatial(x, padding)
  c = xp.shape[-1]
  h, w, f = dy.shape[1:]
  dyt = jax.lax.optimization_barrier(dy.transpose(3, 0, 1, 2)).reshape(f, -1)
  dk = [dyt @ xp[:, a:a + h, b:b + w, :].reshape(-1, c)
        for a in range(k[0]) for b in range(k[1])]
  dk = jnp.stack(dk).reshape(k[0], k[1], f, c).swapaxes(2, 3)
  return dx, dk


_conv_stride1.defvjp(_conv_stride1_fwd, _conv_stride1_bwd)


def _space_to_depth_conv(x: jnp.ndarray, kernel: jnp.ndarray, stride: int) -> jnp.ndarray:
  """TF-SAME stride-``stride`` convolution as a stride-1 one on space-to-depth blocks."""
  n, h, w, c = x.shape
  k = kernel.shape[0]
  kb = -(-k // stride)  # kernel size in blocks
  out = [-(-size // stride) for size in (h, w)]
  pads = []
  for size, o in zip((h, w), out):
    lo, _ = same_padding(size, k, stride)
    pads.append((lo, (o - 1 + kb) * stride - size - lo))
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  hb, wb = x.shape[1] // stride, x.shape[2] // stride
  x = x.reshape(n, hb, stride, wb, stride, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(n, hb, wb, stride * stride * c)
  kernel = jnp.pad(kernel, ((0, kb * stride - k), (0, kb * stride - k), (0, 0), (0, 0)))
  kernel = kernel.reshape(kb, stride, kb, stride, c, -1).transpose(0, 2, 1, 3, 4, 5)
  kernel = kernel.reshape(kb, kb, stride * stride * c, -1)
  return _conv_stride1(x, kernel, ((0, 0), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_strided(x: jnp.ndarray, kernel: jnp.ndarray, stride: int) -> jnp.ndarray:
  """TF-SAME strided convolution: XLA's own forward (its fastest) unless the
  space-to-depth form has thin channels, and a loop-friendly VJP.

  XLA differentiates a strided convolution with an input-dilated convolution
  (slow on XLA:CPU) and a batch-contracting one (slow inside a rolled scan).
  Here both gradients are those of the equivalent space-to-depth stride-1
  convolution (``_conv_stride1``).
  """
  if x.shape[-1] * stride * stride <= THIN_CHANNELS or kernel.shape[-1] <= THIN_CHANNELS:
    return _space_to_depth_conv(x, kernel, stride)
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                      dimension_numbers=_DIMS)


def _conv_strided_fwd(x, kernel, stride):
  return _conv_strided(x, kernel, stride), (x, kernel)


def _conv_strided_bwd(stride, res, dy):
  x, kernel = res
  return jax.vjp(lambda x, k: _space_to_depth_conv(x, k, stride), x, kernel)[1](dy)


_conv_strided.defvjp(_conv_strided_fwd, _conv_strided_bwd)


def _subpixel_taps(factor: int, k: int) -> tuple[np.ndarray, int, int]:
  """0/1 ``S[phase, tap, offset]``: kernel tap ``tap`` of output phase ``phase`` reads
  low-resolution offset ``offset + lo`` (TF-SAME padding at the high resolution)."""
  pad_lo = same_padding(factor, k, 1)[0]
  offset = [[(p + a - pad_lo) // factor for a in range(k)] for p in range(factor)]
  lo, hi = offset[0][0], offset[-1][-1]
  sel = np.zeros((factor, k, hi - lo + 1), np.float32)
  for p in range(factor):
    for a in range(k):
      sel[p, a, offset[p][a] - lo] = 1.0
  return sel, lo, hi


def _upscale_conv(x: jnp.ndarray, kernel: jnp.ndarray, factor: int) -> jnp.ndarray:
  """``conv_SAME(repeat(x, factor, axes 1, 2), kernel)`` as a sub-pixel convolution."""
  n, h, w, c = x.shape
  k, co = kernel.shape[0], kernel.shape[-1]
  sel, lo, hi = _subpixel_taps(factor, k)
  sel = jnp.asarray(sel, kernel.dtype)
  sub = jnp.einsum("pad,qbe,abio->deipqo", sel, sel, kernel)
  sub = sub.reshape(sub.shape[0], sub.shape[1], c, factor * factor * co)
  y = _conv_stride1(x, sub, ((-lo, hi), (-lo, hi)))
  y = y.reshape(n, h, w, factor, factor, co).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, h * factor, w * factor, co)


def conv2d(x: jnp.ndarray, kernel: jnp.ndarray, stride: int = 1,
           resize_to: Optional[tuple[int, int]] = None, impl: str = "fast") -> jnp.ndarray:
  """TF-SAME convolution of ``x: [N, H, W, C]`` with ``kernel: [k, k, C, F]``, no bias.

  ``resize_to`` first nearest-resizes ``x`` (``nearest_resize``). ``impl``:
  ``"fast"`` or ``"xla"`` (see the module docstring); both give the same result
  up to float rounding.
  """
  if kernel.shape[0] != kernel.shape[1]:
    raise ValueError(f"conv2d takes square kernels; got {kernel.shape}")
  if impl not in CONV_IMPLEMENTATIONS:
    raise ValueError(f"unknown conv implementation {impl!r}; choose one of {CONV_IMPLEMENTATIONS}")
  if impl == "fast":
    if resize_to is not None:
      h, w = x.shape[1:3]
      f = resize_to[0] // h
      if stride == 1 and resize_to[0] == f * h and resize_to[1] == f * w and f > 1:
        return _upscale_conv(x, kernel, f)
      x = nearest_resize(x, resize_to)
    if stride > 1:
      return _conv_strided(x, kernel, stride)
    k = kernel.shape[0]
    return _conv_stride1(x, kernel, tuple(same_padding(n, k, 1) for n in x.shape[1:3]))
  if resize_to is not None:
    x = nearest_resize(x, resize_to)
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                      dimension_numbers=_DIMS)


class Conv(nn.Module):
  """``conv2d(x) + b`` with parameters ``kernel [k, k, C, F]`` and ``bias [F]`` (as ``nn.Conv``)."""

  features: int
  kernel: int
  stride: int = 1
  resize_to: Optional[tuple[int, int]] = None
  impl: str = "fast"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kernel = self.param("kernel", glorot_uniform,
                        (self.kernel, self.kernel, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return conv2d(x, kernel, self.stride, self.resize_to, self.impl) + bias


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
  impl: str = "fast"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """``x: [N, H, W, C] -> [N, H', W', features]``."""
    y = Conv(self.features, self.kernel, self.stride, self.resize_to, self.impl)(x)
    if self.use_ln:
      y = layer_norm(y)
    return activation(self.act)(y)
