"""Tests of rnem_jax.metrics: ARI against sklearn, the BCE family by hand."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from rnem_jax import metrics

MISS = -math.log(1e-6)  # Cost of a confident wrong pixel: 13.8155...


def sklearn_ari(groups, gamma):
  """Per-sequence reference ARI on the foreground pixels. groups [B, *S], gamma [B, K, *S]."""
  out = []
  for g, gam in zip(np.asarray(groups), np.asarray(gamma)):
    ids = np.rint(g).astype(int).ravel()
    pred = np.argmax(gam, axis=0).ravel()
    out.append(adjusted_rand_score(ids[ids > 0], pred[ids > 0]))
  return np.array(out)


def one_hot_gamma(assignment, k):
  """gamma [B, K, *S] putting each pixel fully on component assignment [B, *S]."""
  return np.moveaxis(np.eye(k, dtype=np.float32)[assignment], -1, 1)


def random_case(rng, shape):
  """Random groups [B, *S] and gamma [B, K, *S], from random to nearly perfect segmentations."""
  batch = shape[0]
  k = int(rng.integers(1, 9))
  num_ids = int(rng.integers(1, 9))
  groups = rng.integers(1, num_ids + 1, size=shape)
  groups[rng.random(shape) < rng.random()] = 0
  # Each true id goes to a random component, then a random fraction of pixels is reassigned.
  mapping = rng.integers(0, k, size=(batch, num_ids + 1))
  assignment = np.take_along_axis(mapping, groups.reshape(batch, -1), axis=1).reshape(shape)
  noisy = rng.random(shape) < rng.random() * 0.5
  assignment[noisy] = rng.integers(0, k, size=int(noisy.sum()))
  gamma = one_hot_gamma(assignment, k) + 0.1 * rng.random((batch, k) + shape[1:])
  return groups, gamma.astype(np.float32)


@pytest.mark.parametrize("shape", [(6, 8, 8, 1), (6, 5, 7), (6, 12)])
def test_ari_matches_sklearn_on_random_partitions(shape):
  rng = np.random.default_rng(0)
  aris = []
  for _ in range(12):
    groups, gamma = random_case(rng, shape)
    got = np.asarray(metrics.adjusted_rand_index(groups, gamma, num_groups=8))
    np.testing.assert_allclose(got, sklearn_ari(groups, gamma), atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (shape[0],)
    aris.append(got)
  assert np.ptp(np.concatenate(aris)) > 0.5  # The cases cover a wide range of ARIs.


def test_ari_under_jit_with_float_groups():
  rng = np.random.default_rng(1)
  groups, gamma = random_case(rng, (4, 8, 8, 1))
  jitted = jax.jit(metrics.adjusted_rand_index, static_argnames="num_groups")
  float_groups = groups.astype(np.float32) + rng.uniform(-0.3, 0.3, groups.shape).astype(np.float32)
  np.testing.assert_allclose(jitted(float_groups, gamma, num_groups=8),
                             sklearn_ari(groups, gamma), atol=1e-5)


def test_ari_hand_computed():
  # Truth {a,b,c},{d,e}; prediction {a,b},{c,d,e}: index 2, expected 16/10, max 4 => 1/6.
  groups = np.array([[1, 1, 1, 2, 2]])
  gamma = one_hot_gamma(np.array([[0, 0, 1, 1, 1]]), 2)
  np.testing.assert_allclose(metrics.adjusted_rand_index(groups, gamma), [1 / 6], atol=1e-6)


@pytest.mark.parametrize("size", [64, 84])
def test_ari_float32_precision_on_full_size_images(size):
  # Near-degenerate cases whose ARI is a small difference of ~1e7 pair counts, where
  # forming R - A B / N in float32 is off by ~4e-4 at 84x84.
  rng = np.random.default_rng(2)
  shape = (5, size, size, 1)
  groups = np.ones(shape, np.int64)
  assignment = np.zeros(shape, np.int64)
  groups[:3, 0, 0, 0] = 2  # One pixel of a second object...
  assignment[1, 0, 0, 0] = 1  # ...found exactly (ARI 1), ...
  assignment[2, -1, -1, 0] = 1  # ...or confused with another pixel (ARI slightly < 0).
  groups[3, :size // 2] = 2
  groups[3, :5] = 0
  assignment[3] = groups[3] == 2
  assignment[3, -1, -1, 0] = 1
  groups[4] = rng.integers(1, 5, size=shape[1:])
  assignment[4] = np.where(groups[4] > 2, groups[4] - 1, 0)
  assignment[4][rng.random(shape[1:]) < 0.01] = 3
  gamma = one_hot_gamma(assignment, 4)
  got = np.asarray(metrics.adjusted_rand_index(groups, gamma))
  np.testing.assert_allclose(got, sklearn_ari(groups, gamma), atol=1e-5)
  assert got[0] == 0.0 and got[1] == 1.0 and got[2] < 0


@pytest.mark.parametrize("groups, assignment, k, expected", [
    ([[3, 3, 3, 3]], [[1, 1, 1, 1]], 3, 1.0),  # One object, one component.
    ([[1, 2, 3, 4]], [[3, 0, 2, 1]], 4, 1.0),  # Every pixel its own cluster in both.
    ([[0, 0, 0, 0]], [[0, 1, 0, 1]], 2, 1.0),  # No foreground pixel.
    ([[0, 5, 0, 0]], [[0, 1, 0, 1]], 2, 1.0),  # A single foreground pixel.
    ([[1, 1, 2, 2]], [[0, 0, 0, 0]], 1, 0.0),  # Constant prediction, two objects.
    ([[1, 1, 1, 1]], [[0, 0, 1, 1]], 2, 0.0),  # One object split in two.
    ([[1, 2, 0, 0]], [[0, 0, 1, 1]], 2, 0.0),  # Two objects merged; background ignored.
])
def test_ari_degenerate_partitions_follow_sklearn(groups, assignment, k, expected):
  groups, assignment = np.array(groups), np.array(assignment)
  gamma = one_hot_gamma(assignment, k)
  got = metrics.adjusted_rand_index(groups, gamma, num_groups=8)
  np.testing.assert_allclose(got, [expected], atol=1e-6)
  np.testing.assert_allclose(got, sklearn_ari(groups, gamma), atol=1e-6)


def test_ari_is_invariant_to_component_permutation_and_per_sequence():
  rng = np.random.default_rng(3)
  groups, gamma = random_case(rng, (5, 6, 6, 1))
  k = gamma.shape[1]
  base = np.asarray(metrics.adjusted_rand_index(groups, gamma, num_groups=8))
  permuted = gamma[:, rng.permutation(k)]
  np.testing.assert_allclose(metrics.adjusted_rand_index(groups, permuted, num_groups=8), base,
                             atol=1e-6)
  for b in range(5):
    np.testing.assert_allclose(
        metrics.adjusted_rand_index(groups[b:b + 1], gamma[b:b + 1], num_groups=8), base[b:b + 1],
        atol=1e-6)


def test_ari_rejects_bad_ids_and_marks_them_nan_under_jit():
  groups = np.array([[1, 9, 0, 2]])
  gamma = one_hot_gamma(np.array([[0, 1, 0, 1]]), 2)
  with pytest.raises(ValueError, match="num_groups"):
    metrics.adjusted_rand_index(groups, gamma, num_groups=8)
  with pytest.raises(ValueError, match="num_groups"):
    metrics.adjusted_rand_index(-groups, gamma, num_groups=8)
  both = np.concatenate([groups, np.array([[1, 1, 2, 2]])])
  jitted = jax.jit(functools.partial(metrics.adjusted_rand_index, num_groups=8))
  got = np.asarray(jitted(both, np.concatenate([gamma, gamma])))
  assert np.isnan(got[0]) and got[1] == pytest.approx(-0.5)
  np.testing.assert_allclose(metrics.adjusted_rand_index(groups, gamma, num_groups=9),
                             sklearn_ari(groups, gamma), atol=1e-6)


def test_clipped_bce_hand_computed():
  pred = jnp.array([0.9, 0.9, 0.0, 1.0, 0.25])
  target = jnp.array([1.0, 0.0, 0.0, 0.0, 1.0])
  expected = [-math.log(0.9), -math.log(0.1), -math.log(1 - 1e-6), MISS, -math.log(0.25)]
  # float32 rounds 1 - 1e-6, so a confident hit costs ~1.01e-6 rather than 1.0e-6.
  np.testing.assert_allclose(metrics.clipped_bce(pred, target), expected, rtol=1e-5, atol=2e-8)


def test_upper_bound_bce_hand_computed_and_masked():
  # psi [B=2, K=2, 2, 1, 1]; m = max_k psi.
  psi = np.array([[[0.9, 0.2], [0.3, 0.6]],
                  [[0.5, 0.1], [0.5, 0.7]]], np.float32)[..., None, None]
  x_next = np.array([[1, 0], [0, 1]], np.float32)[..., None, None]
  # Sequence 0: m = (0.9, 0.6); sequence 1: m = (0.5, 0.7).
  per_pixel = np.array([[-math.log(0.9), -math.log(0.4)], [-math.log(0.5), -math.log(0.7)]])
  np.testing.assert_allclose(metrics.upper_bound_bce(psi, x_next), per_pixel.sum(1), rtol=1e-5)
  mask = np.array([[0, 1], [1, 0]], np.float32)[..., None, None]
  np.testing.assert_allclose(jax.jit(metrics.upper_bound_bce)(psi, x_next, mask),
                             [-math.log(0.4), -math.log(0.5)], rtol=1e-5)


def test_upper_bound_bce_mask_broadcasts_over_channels():
  psi = np.full((1, 2, 2, 2, 3), 0.5, np.float32)
  x_next = np.ones((1, 2, 2, 3), np.float32)
  mask = np.array([1, 0, 0, 1], np.float32).reshape(1, 2, 2, 1)
  np.testing.assert_allclose(metrics.upper_bound_bce(psi, x_next, mask), [6 * math.log(2)],
                             rtol=1e-5)


def test_copy_baseline_costs_minus_log_eps_per_changed_pixel():
  rng = np.random.default_rng(4)
  x_t = (rng.random((3, 16, 16, 1)) < 0.3).astype(np.float32)
  x_next = x_t.copy()
  flips = rng.random(x_t.shape) < 0.1
  x_next[flips] = 1 - x_next[flips]
  changed = flips.reshape(3, -1).sum(1)
  assert changed.min() > 0 and (x_t[flips] == 0).any() and (x_t[flips] == 1).any()
  got = np.asarray(metrics.copy_baseline_bce(x_t, x_next))
  np.testing.assert_allclose(got, changed * MISS, rtol=1e-5)
  as_uint8 = metrics.copy_baseline_bce(x_t.astype(np.uint8), x_next.astype(np.uint8))
  np.testing.assert_allclose(as_uint8, got, rtol=1e-6)
  assert np.all(np.asarray(metrics.copy_baseline_bce(x_t, x_t)) < 256 * 2e-6)
  mask = flips.astype(np.float32)
  mask[0] = 0
  np.testing.assert_allclose(metrics.copy_baseline_bce(x_t, x_next, mask),
                             [0, changed[1] * MISS, changed[2] * MISS], rtol=1e-5, atol=1e-6)
  # It is the upper-bound BCE of a single component that predicts the current frame.
  np.testing.assert_allclose(metrics.upper_bound_bce(x_t[:, None], x_next), got, rtol=1e-6)


def test_confidence_hand_computed():
  groups = np.array([[0, 1, 2, 2], [0, 0, 0, 0]], np.float32)
  gamma = np.array([[[0.9, 0.2, 0.6, 0.5], [0.1, 0.8, 0.4, 0.5]],
                    [[0.3, 0.3, 0.3, 0.3], [0.7, 0.7, 0.7, 0.7]]], np.float32)
  np.testing.assert_allclose(jax.jit(metrics.confidence)(groups, gamma),
                             [(0.8 + 0.6 + 0.5) / 3, 0.0], rtol=1e-6)


def test_components_used_hand_computed():
  frame = np.array([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]], np.float32)
  symmetric = np.full((4, 4), 0.25, np.float32)
  split = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
  one = np.array([[0, 0, 0, 1]] * 4, np.float32).T  # component 3 holds every pixel
  gamma = np.stack([split, symmetric, one])
  got = jax.jit(metrics.components_used)(frame, gamma)
  # shares: (1/3, 1/3, 1/3, 0) -> 3; none -> 0; (1, 0, 0, 0) -> 1
  np.testing.assert_allclose(got, [3.0, 0.0, 1.0], rtol=1e-6)
  # the symmetric state: K components, confidence 1/K on the frame's pixels
  frames = np.ones((2, 4), np.float32)
  np.testing.assert_allclose(metrics.components_used(frames, np.stack([symmetric] * 2)), [4, 4],
                             rtol=1e-6)
  np.testing.assert_allclose(metrics.confidence(frames, np.stack([symmetric] * 2)),
                             [0.25, 0.25], rtol=1e-6)
  # unequal shares (0.75, 0.25): exp of the entropy, by hand
  gamma2 = np.array([[[1, 1, 1, 0], [0, 0, 0, 1]]], np.float32)
  h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
  np.testing.assert_allclose(metrics.components_used(np.ones((1, 4), np.float32), gamma2),
                             [np.exp(h)], rtol=1e-6)
  # invariant to a permutation of the components
  perm = gamma[:, ::-1]
  np.testing.assert_allclose(metrics.components_used(frame, perm), got, rtol=1e-6)


def test_per_step_maps_over_a_leading_time_axis():
  rng = np.random.default_rng(5)
  cases = [random_case(rng, (2, 6, 6, 1)) for _ in range(3)]
  k = min(g.shape[1] for _, g in cases)
  groups = np.stack([g for g, _ in cases])
  gamma = np.stack([g[:, :k] for _, g in cases])
  got = metrics.per_step(metrics.adjusted_rand_index, num_groups=8)(groups, gamma)
  assert got.shape == (3, 2)
  for t in range(3):
    np.testing.assert_allclose(got[t], sklearn_ari(groups[t], gamma[t]), atol=1e-5)
  psi = rng.random((3, 2, 2, 4, 4, 1)).astype(np.float32)
  x = (rng.random((3, 2, 4, 4, 1)) < 0.5).astype(np.float32)
  np.testing.assert_allclose(metrics.per_step(metrics.upper_bound_bce)(psi, x, None)[1],
                             metrics.upper_bound_bce(psi[1], x[1]), rtol=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.adjusted_rand_index(np.ones((2, 4, 4)), np.ones((2, 3, 4, 4, 1))), "groups"),
    (lambda: metrics.adjusted_rand_index(np.ones((2, 4, 4, 1)), np.ones((2, 4, 4, 1))), "groups"),
    (lambda: metrics.adjusted_rand_index(np.ones((2, 4)), np.ones((2, 0, 4))), "K >= 1"),
    (lambda: metrics.confidence(np.ones((3, 4, 4, 1)), np.ones((2, 3, 4, 4, 1))), "groups"),
    (lambda: metrics.components_used(np.ones((2, 4, 5, 1)), np.ones((2, 3, 4, 4, 1))),
     "foreground"),
    (lambda: metrics.upper_bound_bce(np.ones((2, 3, 4, 4, 1)), np.ones((2, 4, 5, 1))), "x_next"),
    (lambda: metrics.upper_bound_bce(np.ones((2, 3, 4, 4, 1)), np.ones((2, 4, 4, 1)),
                                     np.ones((2, 4, 4))), "mask"),
    (lambda: metrics.upper_bound_bce(np.ones((2, 3, 4, 4, 1)), np.ones((2, 4, 4, 1)),
                                     np.ones((1, 4, 4, 2))), "mask"),
    (lambda: metrics.copy_baseline_bce(np.ones((2, 4, 4, 1)), np.ones((2, 4, 4))), "x_next"),
    (lambda: metrics.adjusted_rand_index(np.ones((1, 300, 300)), np.ones((1, 2, 300, 300))),
     "pixels"),
])
def test_bad_shapes_raise_clear_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
