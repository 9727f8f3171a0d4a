"""Evaluation metrics: the BCE family and the foreground ARI (docs/design.md#metrics).

Every function is pure and jit-able and works for any number of pixel axes:
per-component tensors are ``[B, K, *S]`` and per-frame tensors ``[B, *S]``,
where ``S`` is e.g. ``(H, W, C)`` (64x64x1 balls, 84x84x1 Atari). Every metric
returns one value per sequence, ``[B]``; averaging over sequences and steps is
left to the caller (see :func:`per_step`). Shapes are checked when a function
is called or traced and mismatches raise ``ValueError``.
"""

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

# Clipping constant of the authors' BCE (docs/design.md#loss): a confident miss costs
# -log(1e-6) ≈ 13.8155 nats.
BCE_EPS = 1e-6

# Largest foreground-pixel count for which the int32 pair counts of the ARI
# cannot overflow: n (n - 1) / 2 < 2**31 for n <= 65536.
_MAX_ARI_PIXELS = 65536


def _check_per_component(name_c, per_component, name_f, per_frame):
  """Checks `per_component` is [B, K, *S] and `per_frame` is [B, *S]."""
  c_shape, f_shape = jnp.shape(per_component), jnp.shape(per_frame)
  if len(c_shape) < 3:
    raise ValueError(f"{name_c} must be [B, K, *S] with at least one pixel axis, got shape "
                     f"{c_shape}.")
  if c_shape[1] < 1:
    raise ValueError(f"{name_c} needs K >= 1 components on axis 1, got shape {c_shape}.")
  expected = (c_shape[0],) + tuple(c_shape[2:])
  if tuple(f_shape) != expected:
    raise ValueError(f"{name_f} must be [B, *S] = {expected} to match {name_c} of shape "
                     f"[B, K, *S] = {c_shape}, got shape {f_shape}.")


def clipped_bce(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Elementwise -[x log p̄ + (1 - x) log(1 - p̄)], p̄ = clip(p, 1e-6, 1 - 1e-6).

  docs/design.md#loss. ``1 - p`` is clipped on its own rather than formed from the
  clipped ``p``, which is the same in exact arithmetic but keeps float32 from
  rounding ``1 - 1e-6``: a confident miss costs -log(1e-6) in both directions.

  Args:
    pred: probabilities p in [0, 1], any shape broadcastable with `target`.
    target: x in [0, 1] (binary frames in practice). Integer inputs are cast
      to float32.

  Returns:
    The broadcast shape of `pred` and `target`, float.
  """
  # Integer inputs (uint8 frames) would otherwise clip against rounded bounds.
  pred = jnp.asarray(pred, jnp.promote_types(jnp.result_type(pred), jnp.float32))
  target = jnp.asarray(target, pred.dtype)
  log_p = jnp.log(jnp.clip(pred, BCE_EPS, 1.0 - BCE_EPS))
  log_not_p = jnp.log(jnp.clip(1.0 - pred, BCE_EPS, 1.0 - BCE_EPS))
  return -(target * log_p + (1.0 - target) * log_not_p)


def _summed_bce(pred, target, mask):
  """clipped_bce(pred [B, *S], target [B, *S]) * mask, summed to [B]."""
  bce = clipped_bce(pred, target)
  if mask is not None:
    mask_shape, target_shape = jnp.shape(mask), jnp.shape(target)
    try:
      broadcast = np.broadcast_shapes(mask_shape, target_shape)
    except ValueError:
      broadcast = None
    if len(mask_shape) != len(target_shape) or broadcast != tuple(target_shape):
      raise ValueError(f"mask must be [B, *S] = {target_shape} (size-1 axes allowed), got "
                       f"shape {mask_shape}.")
    bce = bce * mask
  return jnp.sum(bce, axis=tuple(range(1, bce.ndim)))


def upper_bound_bce(psi: jax.Array, x_next: jax.Array,
                    mask: Optional[jax.Array] = None) -> jax.Array:
  """"Upper-bound" BCE of the paper (footnote 4; docs/design.md#bce).

  The BCE of m = max_k psi_k against the next frame, summed over pixels and
  channels. Needs no gamma, so it is comparable across models and K.

  Args:
    psi: [B, K, *S] predicted pixel probabilities of each component.
    x_next: [B, *S] the frame being predicted.
    mask: optional [B, *S] per-pixel weights (size-1 axes broadcast); the
      `collisions` flags give the relational BCE.

  Returns:
    [B] summed BCE per sequence.
  """
  _check_per_component("psi", psi, "x_next", x_next)
  return _summed_bce(jnp.max(psi, axis=1), x_next, mask)


def copy_baseline_bce(x_t: jax.Array, x_next: jax.Array,
                      mask: Optional[jax.Array] = None) -> jax.Array:
  """BCE of the baseline that predicts frame t+1 = frame t (paper Fig. 3).

  Scored with :func:`clipped_bce`, so with binary frames each changed pixel
  costs -log(1e-6) ≈ 13.8155 nats and each unchanged pixel ≈ 1e-6
  (docs/design.md#copy-frame-baseline).

  Args:
    x_t: [B, *S] the current frame, used as the prediction.
    x_next: [B, *S] the frame being predicted.
    mask: optional [B, *S] per-pixel weights, as in :func:`upper_bound_bce`.

  Returns:
    [B] summed BCE per sequence.
  """
  if jnp.ndim(x_t) < 2 or jnp.shape(x_t) != jnp.shape(x_next):
    raise ValueError(f"x_t and x_next must both be [B, *S] of the same shape, got "
                     f"{jnp.shape(x_t)} and {jnp.shape(x_next)}.")
  return _summed_bce(x_t, x_next, mask)


def _pairs(counts):
  """n (n - 1) / 2 elementwise for int32 counts, without overflowing n (n - 1)."""
  return jnp.where(counts % 2 == 0, (counts // 2) * (counts - 1), counts * ((counts - 1) // 2))


def adjusted_rand_index(groups: jax.Array, gamma: jax.Array, num_groups: int = 255) -> jax.Array:
  """Foreground ARI of argmax_k gamma against the ground-truth groups (paper appendix A).

  Equals ``sklearn.metrics.adjusted_rand_score`` on the pixels whose group id
  is > 0, including its special case: ARI = 1 whenever the two partitions
  agree on every pair, which covers both partitions being one cluster, both
  being all singletons, and 0 or 1 foreground pixels. (The authors' float32
  code gives 0 in these cases; docs/design.md#foreground-ari.) Pair counts are
  exact int32 (at most 65536 pixels per image) and the final ratio, formed as
  in sklearn from the four pair counts, is accurate to ~1e-7 in float32.

  Args:
    groups: [B, *S] ground-truth ids, 0 = ignored (background, overlap,
      occluded), 1..num_groups = objects; floats are rounded to integers.
    gamma: [B, K, *S] soft assignments (or any scores); argmax over K wins,
      ties go to the lowest k.
    num_groups: static largest possible id (255 covers uint8 data). Ids
      outside [0, num_groups] raise ValueError for concrete inputs; under
      tracing they cannot be checked and those sequences get NaN.

  Returns:
    [B] float32 ARI per sequence.
  """
  _check_per_component("gamma", gamma, "groups", groups)
  num_pixels = int(np.prod(jnp.shape(groups)[1:]))
  if num_pixels > _MAX_ARI_PIXELS:
    raise ValueError(f"adjusted_rand_index supports at most {_MAX_ARI_PIXELS} pixels per "
                     f"image (int32 pair counts), got {num_pixels}.")
  if not isinstance(groups, jax.core.Tracer) and np.size(groups):
    ids = np.rint(np.asarray(groups, np.float64))
    if ids.min() < 0 or ids.max() > num_groups:
      raise ValueError(f"group ids must lie in [0, num_groups={num_groups}], got ids in "
                       f"[{ids.min():g}, {ids.max():g}]; pass a larger num_groups.")
  return _ari(jnp.asarray(groups), jnp.asarray(gamma), num_groups)


@functools.partial(jax.jit, static_argnames=("num_groups",))
def _ari(groups, gamma, num_groups):
  """adjusted_rand_index once its inputs are validated."""
  batch, k = gamma.shape[:2]
  num_pixels = int(np.prod(groups.shape[1:]))
  if jnp.issubdtype(groups.dtype, jnp.floating):
    groups = jnp.round(groups)
  ids = groups.astype(jnp.int32).reshape(batch, num_pixels)
  invalid = jnp.any((ids < 0) | (ids > num_groups), axis=1)
  ids = jnp.clip(ids, 0, num_groups)
  pred = jnp.argmax(gamma, axis=1).reshape(batch, num_pixels).astype(jnp.int32)

  # Contingency table n_ij of (true id i, component j), counted exactly.
  cells = (num_groups + 1) * k
  flat = (jnp.arange(batch, dtype=jnp.int32)[:, None] * cells + ids * k + pred).reshape(-1)
  table = jax.ops.segment_sum(jnp.ones_like(flat), flat, num_segments=batch * cells)
  table = table.reshape(batch, num_groups + 1, k)[:, 1:]  # Drop id 0: not foreground.

  # Unordered pair counts: together in both, in the prediction, in the truth, in all.
  both = jnp.sum(_pairs(table), axis=(1, 2))
  same_pred = jnp.sum(_pairs(jnp.sum(table, axis=1)), axis=1)
  same_true = jnp.sum(_pairs(jnp.sum(table, axis=2)), axis=1)
  total = _pairs(jnp.sum(table, axis=(1, 2)))
  tp, fp, fn = both, same_pred - both, same_true - both
  tn = (total - same_pred) - fn
  f = lambda a: a.astype(jnp.float32)
  # Both products are non-negative and their sum is at most half the
  # denominator, so the float32 rounding error of the ratio stays ~1e-7.
  numerator = f(tp) * f(tn) - f(fn) * f(fp)
  denominator = f(same_true) * f(total - same_pred) + f(same_pred) * f(total - same_true)
  agree = (fp == 0) & (fn == 0)  # sklearn's special case; the only way den = 0.
  ari = jnp.where(agree, 1.0, 2.0 * numerator / jnp.where(agree, 1.0, denominator))
  return jnp.where(invalid, jnp.nan, ari)


def confidence(groups: jax.Array, gamma: jax.Array) -> jax.Array:
  """Mean over foreground pixels (group id > 0) of max_k gamma (docs/design.md#foreground-ari).

  Args:
    groups: [B, *S] ground-truth ids, 0 = ignored; floats are rounded.
    gamma: [B, K, *S] soft assignments.

  Returns:
    [B] mean confidence per sequence; 0 for a sequence with no foreground pixel.
  """
  _check_per_component("gamma", gamma, "groups", groups)
  foreground = (jnp.round(groups) > 0).astype(gamma.dtype)
  axes = tuple(range(1, foreground.ndim))
  count = jnp.sum(foreground, axis=axes)
  summed = jnp.sum(foreground * jnp.max(gamma, axis=1), axis=axes)
  return jnp.where(count > 0, summed / jnp.maximum(count, 1), 0.0)


def components_used(foreground: jax.Array, gamma: jax.Array) -> jax.Array:
  """Effective number of components sharing the foreground: exp(entropy of their shares).

  Where no ground truth exists (Space Invaders) this, beside ``confidence``
  with the frame itself as the foreground, tells a split scene from the
  symmetric solution in which every component renders everything: the
  symmetric state has ``confidence`` 1/K and ``components_used`` K; one
  component holding every pixel gives 1 and 1; K components with a pixel set
  each give 1 and up to K.

  Args:
    foreground: [B, *S] pixels to count (> 0.5 counts; e.g. the target frame).
    gamma: [B, K, *S] soft assignments.

  Returns:
    [B] exp(-sum_k s_k log s_k) with s_k = sum_fg gamma_k / #fg, in [1, K]; 0
    for a sequence with no foreground pixel.
  """
  _check_per_component("gamma", gamma, "foreground", foreground)
  fg = (foreground > 0.5).astype(gamma.dtype)[:, None]
  axes = tuple(range(2, gamma.ndim))
  mass = jnp.sum(fg * gamma, axis=axes)                         # [B, K]
  count = jnp.sum(mass, axis=1, keepdims=True)
  share = mass / jnp.maximum(count, 1e-12)
  entropy = -jnp.sum(jnp.where(share > 0, share * jnp.log(jnp.where(share > 0, share, 1.0)),
                               0.0), axis=1)
  return jnp.where(count[:, 0] > 0, jnp.exp(entropy), 0.0)


def per_step(metric: Callable[..., jax.Array], **static) -> Callable[..., jax.Array]:
  """Maps a metric over a leading step axis: [T, B, ...] inputs -> [T, B].

  Keyword arguments are bound unmapped (e.g. ``num_groups=8``); positional
  arguments (``None`` allowed, e.g. no mask) are all mapped over axis 0.
  Example: ``per_step(upper_bound_bce)(psi[T, B, K, *S], x[1:])``.
  """
  return jax.vmap(functools.partial(metric, **static))
