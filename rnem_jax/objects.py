"""Object-level rollout metrics: is each ball still drawn, where, and by which component.

Pixel metrics (BCE, ARI) say how good a rollout (paper §4, Figure 4: 5 real + 10 simulated
steps) is on average; these say what happens to each ball: whether the model still renders
it (`kept`), how far its predicted blob is from the true centre (`position_error`) and, for
mixture models, which component carries it and whether that changes (`swaps`). They use
the ground-truth ball states the bouncing-balls datasets store per sequence (``positions``
[T+1, n, 2] and ``radii`` [n], see :mod:`rnem_jax.sim.balls`), padded to a common ball count
with a validity mask.

Coordinates are the renderer's (:mod:`rnem_jax.sim.balls`): a position is ``(x, y)`` with
``x`` along image columns (the W axis) and ``y`` along rows (the H axis); pixel ``[row,
col]`` has its centre at ``(col + 0.5, row + 0.5)`` and belongs to a ball's disc iff that
centre is strictly within the radius, in float32. :func:`disc_masks` is that rasteriser, bit
for bit, so a perfect prediction renders exactly the discs measured here.

Definitions (per ball i, step t, with m = max_k psi_k the prediction of frame t+1; the
K-free quantities use only m, so they compare RNN/LSTM baselines (K=1) with R-NEM):

* mass: mean of m over the true disc of ball i in frame t+1, in [0, 1]; ``kept`` = mass >
  ``threshold`` (0.5). A rigidly shifted disc keeps more than half of its area on the true
  one for a shift below ~0.8 r (3.2 px at r = 4, 2 px at r = 2.5), so a ball drawn far off
  also counts as lost; a blurred ball loses mass as well.
* position error: distance (px) between the ball's true position and the centroid of m over
  a window: the true disc dilated by ``margin`` (default: the ball's radius, so the window
  has radius 2r), minus the pixels that lie in another valid ball's true disc but not in
  this one's (``exclude_other_balls``), with pixel weights m where m >= ``min_intensity``
  (0.1) and 0 below (background haze). The true position (``reference``) is by default the
  centroid of the ball's rendered true disc, not its stored centre: the rasterised disc's
  centroid misses the centre by up to ~0.3 px (median 0.06-0.14 px for r = 2.5-5), so
  against the disc centroid a perfect prediction errs by exactly 0 and the true rendering
  shifted by d whole pixels (d <= margin, away from the frame border) by exactly d;
  ``reference="centre"`` measures against the stored centre instead (and includes that
  bias). Limits: shifts beyond the margin are underestimated (the blob leaves the window);
  with the exclusion, a prediction shifted into a neighbour's true disc loses those pixels
  (biased towards the true position); without it (``exclude_other_balls=False``) a close
  neighbour's pixels enter the window (biased towards the neighbour: perfect predictions of
  real 6-8 ball sequences at 64 px then err by up to ~2.6 px); overlapping balls share their
  common pixels either way; a ball cut by the frame border is measured on its visible part.
  NaN where the window holds no weight (nothing predicted near the ball). As kept implies a
  rigid shift below ~0.8 r, the default window measures every kept ball's rigid shift.
* component: argmax_k of sum over the true disc of gamma_k psi_k (``use_gamma=True``, the
  component's share of the mixture prediction) or of psi_k; ties go to the lower k.
  Its ``share`` = that sum for the winner / the sum over k (1 for K=1; NaN for a ball with
  no predicted mass on its disc); ``main_component_share`` is its mean over kept balls.
* swap at step t: the ball is kept at steps t-1 and t ("tracked") and its component differs.
  Balls not kept at both steps are not tracked: the argmax over components of a ball nobody
  draws is noise. Step 0 has no previous step, so nothing is tracked there.

Everything is jax.numpy without Python control flow over values, so :func:`object_metrics`
can be called inside a jitted evaluation step (``image_size`` and the keyword options are
static). Pixel sums are einsums at ``Precision.HIGHEST`` (no TF32/bf16 passes on GPU/TPU).
Memory: a few [T, B, n, H, W] float32 arrays; nothing of size K x n x H x W per step.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST

ImageSize = Union[int, Sequence[int]]


def _hw(image_size: ImageSize) -> tuple[int, int]:
  """(H, W) from an int (square frames) or an (H, W) pair."""
  if isinstance(image_size, (int, np.integer)):
    size = (int(image_size), int(image_size))
  else:
    size = tuple(int(s) for s in image_size)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f"image_size must be a positive int or an (H, W) pair, got {image_size!r}.")
  return size


def _pixel_sum(image: jax.Array, masks: jax.Array) -> jax.Array:
  """sum over pixels of image [*L, H, W] * masks [*L, n, H, W] -> [*L, n]."""
  return jnp.einsum("...hw,...nhw->...n", image, masks, precision=_HIGHEST)


def _safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den, NaN where den <= 0 (no NaN in the untaken branch, so grads stay finite)."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), jnp.nan)


def _squared_distances(positions: jax.Array, image_size: ImageSize) -> jax.Array:
  """[*L, n, H, W] float32 squared distance from each ball centre to each pixel centre."""
  positions = jnp.asarray(positions, jnp.float32)
  if positions.ndim < 2 or positions.shape[-1] != 2:
    raise ValueError(f"positions must be [..., n, 2] (x, y), got shape {positions.shape}.")
  h, w = _hw(image_size)
  # Same float32 operations as rnem_jax.sim.balls.disc_masks, so the same pixels.
  cols = jnp.arange(w, dtype=jnp.float32) + 0.5
  rows = jnp.arange(h, dtype=jnp.float32) + 0.5
  dx = cols[None, :] - positions[..., 0, None, None]
  dy = rows[:, None] - positions[..., 1, None, None]
  return dx * dx + dy * dy


def _ball_axes(positions, radii, valid):
  """Broadcasts radii and valid ([*L', n], L' a suffix of L) against positions [*L, n, 2]."""
  lead = jnp.shape(positions)[:-1]
  radii = jnp.asarray(radii, jnp.float32)
  valid = jnp.ones(lead, bool) if valid is None else jnp.asarray(valid).astype(bool)
  for name, arr in (("radii", radii), ("valid", valid)):
    shape = jnp.shape(arr)
    if len(shape) < 1 or len(shape) > len(lead) or shape != lead[len(lead) - len(shape):]:
      raise ValueError(f"{name} must be [..., n] matching the trailing axes of positions "
                       f"[..., n, 2] = {tuple(lead)} + (2,), got shape {shape}.")
  return jnp.broadcast_to(radii, lead), jnp.broadcast_to(valid, lead)


def disc_masks(positions: jax.Array,
               radii: jax.Array,
               valid: Optional[jax.Array],
               image_size: ImageSize,
               margin: Union[float, jax.Array] = 0.0) -> jax.Array:
  """Each ball's true disc as the renderer draws it: [*L, n, H, W] bool.

  Pixel [row, col] is in ball i's disc iff its centre (col + 0.5, row + 0.5) is strictly
  within radii[i] (+ margin) of positions[i] = (x, y) (:func:`rnem_jax.sim.balls.disc_masks`,
  bit for bit when margin = 0).

  Args:
    positions: [*L, n, 2] ball centres (x = column, y = row), pixels.
    radii: [*L', n] radii in pixels, L' a suffix of L (e.g. [B, n] for [T, B, n, 2]).
    valid: [*L', n] bool, False for padded balls (their masks are all False); None = all valid.
    image_size: H = W, or an (H, W) pair.
    margin: pixels added to every radius (a dilated disc), scalar or broadcastable to [*L, n].

  Returns:
    [*L, n, H, W] bool.
  """
  radii, valid = _ball_axes(positions, radii, valid)
  reach = radii + jnp.asarray(margin, jnp.float32)
  inside = _squared_distances(positions, image_size) < (reach * reach)[..., None, None]
  return inside & valid[..., None, None]


def _check_pred_masks(pred, masks):
  """Float pred [*L, H, W] and masks [*L, n, H, W] (ValueError otherwise)."""
  pred = jnp.asarray(pred, jnp.promote_types(jnp.result_type(pred), jnp.float32))
  masks = jnp.asarray(masks, pred.dtype)
  p_shape, m_shape = pred.shape, masks.shape
  if len(p_shape) < 2 or len(m_shape) != len(p_shape) + 1 or \
      m_shape[:-3] + m_shape[-2:] != p_shape:
    raise ValueError(f"masks must be [*L, n, H, W] for a prediction [*L, H, W] = {p_shape}, got "
                     f"shape {m_shape}.")
  return pred, masks


def ball_mass(pred: jax.Array, discs: jax.Array) -> jax.Array:
  """Mean predicted intensity on each ball's disc: [*L, n], NaN for an empty disc.

  Args:
    pred: [*L, H, W] predicted frame (max_k psi), values in [0, 1].
    discs: [*L, n, H, W] bool/float disc masks (:func:`disc_masks`).
  """
  pred, discs = _check_pred_masks(pred, discs)
  return _safe_ratio(_pixel_sum(pred, discs), jnp.sum(discs, axis=(-2, -1)))


def kept(pred: jax.Array, discs: jax.Array, threshold: float = 0.5) -> tuple[jax.Array, jax.Array]:
  """Whether the model still renders each ball: (mass [*L, n], kept [*L, n] bool).

  ``mass`` is :func:`ball_mass` (mean of pred on the true disc), ``kept`` = mass > threshold
  (False for an empty disc, i.e. a padded ball).
  """
  mass = ball_mass(pred, discs)
  return mass, jnp.nan_to_num(mass, nan=-1.0) > threshold


def position_error(pred: jax.Array,
                   positions: jax.Array,
                   radii: jax.Array,
                   valid: Optional[jax.Array],
                   *,
                   margin: Optional[float] = None,
                   min_intensity: float = 0.1,
                   exclude_other_balls: bool = True,
                   reference: str = "disc") -> jax.Array:
  """Distance (px) from each ball's true position to the predicted blob's centroid: [*L, n].

  The centroid is the pred-weighted mean pixel centre over the window: the ball's true disc
  dilated by ``margin`` px, minus pixels of other valid balls' true discs that are not in
  its own (``exclude_other_balls``); pixels with pred < min_intensity weigh 0. See the module
  docstring for what this measures and where it is biased.

  Args:
    pred: [*L, H, W] predicted frame (max_k psi) in [0, 1].
    positions: [*L, n, 2] true centres (x, y) in the predicted frame.
    radii, valid: [*L', n] (L' a suffix of L), as in :func:`disc_masks`.
    margin: window margin in px; None = each ball's radius (window radius 2r).
    min_intensity: pixels below it carry no weight (0 = plain intensity weights).
    exclude_other_balls: drop other balls' true-disc pixels from the window.
    reference: the true position: ``"disc"``, the centroid of the ball's rendered true disc
      (a perfect prediction errs by exactly 0 and a d px shift by exactly d), or
      ``"centre"``, the stored centre (both err by the disc's rasterisation bias, up to
      ~0.3 px).

  Returns:
    [*L, n] float32, NaN for padded balls and where the window holds no weight.
  """
  if reference not in ("disc", "centre"):
    raise ValueError(f"reference must be 'disc' or 'centre', got {reference!r}.")
  pred = jnp.asarray(pred, jnp.promote_types(jnp.result_type(pred), jnp.float32))
  positions = jnp.asarray(positions, jnp.float32)
  if pred.ndim < 2 or positions.ndim != pred.ndim or positions.shape[:-2] != pred.shape[:-2] or \
      positions.shape[-1] != 2:
    raise ValueError(f"positions must be [*L, n, 2] for a prediction [*L, H, W] = {pred.shape}, "
                     f"got shape {positions.shape}.")
  image_size = pred.shape[-2:]
  radii, valid = _ball_axes(positions, radii, valid)
  d2 = _squared_distances(positions, image_size)
  own = (d2 < (radii * radii)[..., None, None]) & valid[..., None, None]
  reach = radii + (radii if margin is None else jnp.asarray(margin, jnp.float32))
  window = (d2 < (reach * reach)[..., None, None]) & valid[..., None, None]
  if exclude_other_balls:
    coverage = jnp.sum(own, axis=-3, dtype=jnp.int32)  # [*L, H, W]
    others = (coverage[..., None, :, :] - own) > 0
    window = window & ~(others & ~own)
  window = window.astype(pred.dtype)
  weight = jnp.where(pred >= min_intensity, pred, 0.0)
  h, w = image_size
  cols = jnp.arange(w, dtype=pred.dtype) + 0.5
  rows = jnp.arange(h, dtype=pred.dtype) + 0.5
  total = _pixel_sum(weight, window)
  cx = _safe_ratio(_pixel_sum(weight * cols[None, :], window), total)
  cy = _safe_ratio(_pixel_sum(weight * rows[:, None], window), total)
  if reference == "disc":
    own = own.astype(pred.dtype)
    area = jnp.sum(own, axis=(-2, -1))
    ref_x = _safe_ratio(jnp.sum(own * cols[None, :], axis=(-2, -1)), area)
    ref_y = _safe_ratio(jnp.sum(own * rows[:, None], axis=(-2, -1)), area)
  else:
    ref_x, ref_y = positions[..., 0], positions[..., 1]
  err = jnp.sqrt((cx - ref_x)**2 + (cy - ref_y)**2)
  return jnp.where(valid, err, jnp.nan)


def component_assignment(psi: jax.Array,
                         gamma: Optional[jax.Array],
                         discs: jax.Array,
                         use_gamma: bool = True) -> tuple[jax.Array, jax.Array]:
  """Which component holds each ball, and its share of the ball's predicted mass.

  Score s_k(i) = sum over ball i's true disc of gamma_k psi_k (``use_gamma`` and gamma given)
  or of psi_k. The holder is argmax_k s_k (ties: lowest k), the share s_holder / sum_k s_k.

  Args:
    psi: [*L, K, H, W] per-component predictions.
    gamma: [*L, K, H, W] soft assignments, or None (scores from psi alone).
    discs: [*L, n, H, W] bool/float disc masks.

  Returns:
    (component [*L, n] int32, share [*L, n] float32, NaN where sum_k s_k = 0).
  """
  psi = jnp.asarray(psi, jnp.promote_types(jnp.result_type(psi), jnp.float32))
  if psi.ndim < 3:
    raise ValueError(f"psi must be [*L, K, H, W], got shape {psi.shape}.")
  score_map = psi
  if use_gamma and gamma is not None:
    if jnp.shape(gamma) != psi.shape:
      raise ValueError(f"gamma must have psi's shape {psi.shape}, got {jnp.shape(gamma)}.")
    score_map = psi * jnp.asarray(gamma, psi.dtype)
  discs = jnp.asarray(discs, psi.dtype)
  if discs.ndim != psi.ndim or discs.shape[:-3] != psi.shape[:-3] or \
      discs.shape[-2:] != psi.shape[-2:]:
    raise ValueError(f"discs must be [*L, n, H, W] for psi [*L, K, H, W] = {psi.shape}, got "
                     f"shape {discs.shape}.")
  scores = jnp.einsum("...khw,...nhw->...kn", score_map, discs, precision=_HIGHEST)
  component = jnp.argmax(scores, axis=-2).astype(jnp.int32)
  share = _safe_ratio(jnp.max(scores, axis=-2), jnp.sum(scores, axis=-2))
  return component, share


def swaps(component: jax.Array, kept_: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Component changes between consecutive steps: (tracked, swap), both [T, *L, n] bool.

  tracked[t] = kept at t-1 and t (False at t = 0); swap[t] = tracked[t] and component[t] !=
  component[t-1].

  Args:
    component: [T, *L, n] int holder of each ball (:func:`component_assignment`).
    kept_: [T, *L, n] bool (:func:`kept`).
  """
  if jnp.shape(component) != jnp.shape(kept_) or jnp.ndim(component) < 2:
    raise ValueError(f"component and kept must both be [T, ..., n], got {jnp.shape(component)} "
                     f"and {jnp.shape(kept_)}.")
  kept_ = jnp.asarray(kept_).astype(bool)
  tracked = jnp.zeros_like(kept_).at[1:].set(kept_[1:] & kept_[:-1])
  changed = jnp.zeros_like(kept_).at[1:].set(component[1:] != component[:-1])
  return tracked, tracked & changed


def _masked_mean(x, mask, axes):
  mask = mask & jnp.isfinite(x)
  count = jnp.sum(mask, axis=axes)
  return _safe_ratio(jnp.sum(jnp.where(mask, x, 0.0), axis=axes), count), count


def object_metrics(psi: jax.Array,
                   gamma: Optional[jax.Array],
                   positions: jax.Array,
                   radii: jax.Array,
                   valid: Optional[jax.Array],
                   image_size: ImageSize,
                   *,
                   threshold: float = 0.5,
                   margin: Optional[float] = None,
                   min_intensity: float = 0.1,
                   exclude_other_balls: bool = True,
                   reference: str = "disc",
                   use_gamma: bool = True) -> dict[str, jax.Array]:
  """Per-ball, per-step rollout metrics and their per-step means (module docstring).

  Step t predicts frame t+1, so the targets are positions[1:]. Works for any K (K = 1: the
  RNN/LSTM baselines, component 0 / share 1 / no swaps).

  Args:
    psi: [T, B, K, H, W, 1] predictions in [0, 1], time-major (``em.rollout``'s ``psi``).
    gamma: [T, B, K, H, W, 1] soft assignments, or None (component scores from psi alone).
    positions: [T+1, B, n, 2] true centres (x, y) of frames 0..T, pixels.
    radii: [B, n] radii (pixels); valid: [B, n] bool (False = padding), None = all valid.
    image_size: H = W, or (H, W); must match psi.
    threshold: kept = mean of max_k psi on the true disc > threshold.
    margin, min_intensity, exclude_other_balls, reference: the position error
      (:func:`position_error`); margin None = the ball's radius.
    use_gamma: component scores from gamma_k psi_k (True) or psi_k.

  Returns:
    dict of per-ball [T, B, n] arrays (padded balls: NaN / False / -1):
      ``mass`` (mean max_k psi on the disc), ``kept`` (bool), ``position_error`` (px, NaN
      where no predicted mass in the window), ``component`` (int32 holder), ``share`` (the
      holder's share of the ball's mass), ``tracked`` (kept at t-1 and t), ``swap`` (bool);
    and per-step [T] means over the batch:
      ``balls_kept`` (fraction of valid balls kept), ``position_error_px`` (mean over kept
      balls), ``swaps`` (fraction of tracked balls whose component changed),
      ``main_component_share`` (mean over kept balls), each NaN where its denominator is 0,
      and for each of them ``<name>_count`` (int32 [T]): its denominator, the balls with a
      finite value among those it averages over, for exact means over several batches
      (sum of mean * count / sum of count); ``num_swaps`` (int32 [T]): swaps per step.
  """
  psi_shape = jnp.shape(psi)
  if len(psi_shape) != 6 or psi_shape[-1] != 1 or psi_shape[2] < 1:
    raise ValueError(f"psi must be [T, B, K, H, W, 1] with K >= 1, got shape {psi_shape}.")
  t_steps, batch, _, h, w, _ = psi_shape
  if gamma is not None and jnp.shape(gamma) != psi_shape:
    raise ValueError(f"gamma must have psi's shape [T, B, K, H, W, 1] = {psi_shape}, got "
                     f"{jnp.shape(gamma)}.")
  if _hw(image_size) != (h, w):
    raise ValueError(f"image_size {image_size!r} does not match psi's frames {(h, w)}.")
  pos_shape = jnp.shape(positions)
  if len(pos_shape) != 4 or pos_shape[:2] != (t_steps + 1, batch) or pos_shape[-1] != 2:
    raise ValueError(f"positions must be [T+1, B, n, 2] = ({t_steps + 1}, {batch}, n, 2) for psi "
                     f"{psi_shape}, got shape {pos_shape}.")
  n = pos_shape[2]
  if jnp.shape(radii) != (batch, n):
    raise ValueError(f"radii must be [B, n] = {(batch, n)}, got shape {jnp.shape(radii)}.")
  if valid is not None and jnp.shape(valid) != (batch, n):
    raise ValueError(f"valid must be [B, n] = {(batch, n)}, got shape {jnp.shape(valid)}.")

  psi = jnp.asarray(psi, jnp.promote_types(jnp.result_type(psi), jnp.float32))[..., 0]
  gamma = None if gamma is None else jnp.asarray(gamma, psi.dtype)[..., 0]
  target_pos = jnp.asarray(positions, jnp.float32)[1:]  # [T, B, n, 2]
  valid = jnp.ones((batch, n), bool) if valid is None else jnp.asarray(valid).astype(bool)
  valid_t = jnp.broadcast_to(valid, (t_steps, batch, n))

  pred = jnp.max(psi, axis=2)  # [T, B, H, W]
  discs = disc_masks(target_pos, radii, valid, (h, w))  # [T, B, n, H, W]
  mass, is_kept = kept(pred, discs, threshold)
  err = position_error(pred, target_pos, radii, valid, margin=margin,
                       min_intensity=min_intensity, exclude_other_balls=exclude_other_balls,
                       reference=reference)
  component, share = component_assignment(psi, gamma, discs, use_gamma=use_gamma)
  tracked, swap = swaps(component, is_kept)

  per_ball = {
      "mass": jnp.where(valid_t, mass, jnp.nan),
      "kept": is_kept & valid_t,
      "position_error": err,
      "component": jnp.where(valid_t, component, -1),
      "share": jnp.where(valid_t, share, jnp.nan),
      "tracked": tracked & valid_t,
      "swap": swap & valid_t,
  }
  axes = (1, 2)
  summaries = {}
  for name, values, over in (
      ("balls_kept", per_ball["kept"].astype(jnp.float32), valid_t),
      ("position_error_px", err, per_ball["kept"]),
      ("swaps", per_ball["swap"].astype(jnp.float32), per_ball["tracked"]),
      ("main_component_share", per_ball["share"], per_ball["kept"]),
  ):
    mean, count = _masked_mean(values, over, axes)
    summaries[name], summaries[name + "_count"] = mean, count.astype(jnp.int32)
  summaries["num_swaps"] = jnp.sum(per_ball["swap"], axis=axes, dtype=jnp.int32)
  return {**per_ball, **summaries}
