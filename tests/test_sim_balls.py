"""Physics, rendering, groups and collision flags of rnem_jax.sim.balls."""

import numpy as np
import pytest

from rnem_jax.sim import balls

CONFIG64 = balls.BallsConfig(image_size=64, num_frames=51)


@pytest.fixture(scope="module")
def sequences():
  return [balls.generate_sequence(CONFIG64, seed) for seed in range(6)]


def _kinetic_energy(seq):
  v = seq["velocities"].astype(np.float64)
  return 0.5 * (seq["masses"][None, :, None] * v**2).sum(axis=(1, 2))


def test_shapes_and_dtypes(sequences):
  seq = sequences[0]
  for key in ("features", "groups", "collisions"):
    assert seq[key].shape == (51, 64, 64, 1) and seq[key].dtype == np.uint8
  assert seq["positions"].shape == seq["velocities"].shape == (51, 4, 2)
  assert seq["positions"].dtype == np.float32
  assert seq["masses"].shape == seq["radii"].shape == (4,)


def test_deterministic_given_seed():
  a, b = balls.generate_sequence(CONFIG64, 7), balls.generate_sequence(CONFIG64, 7)
  c = balls.generate_sequence(CONFIG64, 8)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["positions"], c["positions"])


def test_kinetic_energy_conserved(sequences):
  for seq in sequences:
    ke = _kinetic_energy(seq)
    np.testing.assert_allclose(ke, ke[0], rtol=1e-2)


def test_momentum_conserved_between_wall_hits(sequences):
  checked_with_contact = 0
  for seq in sequences:
    pos, vel, m, r = seq["positions"], seq["velocities"], seq["masses"], seq["radii"]
    momentum = (m[None, :, None] * vel).sum(axis=1)
    scale = (m[None, :] * np.linalg.norm(vel, axis=-1)).sum(axis=1)
    # Walls are far enough at both ends of the interval: no ball can touch one in between.
    speed = np.linalg.norm(vel, axis=-1).max()
    clearance = np.minimum(pos, 64.0 - pos).min(axis=-1) - r[None]
    free = (clearance[:-1] > speed + 0.5) & (clearance[1:] > speed + 0.5)
    for t in np.nonzero(free.all(axis=1))[0]:
      np.testing.assert_allclose(momentum[t + 1], momentum[t], atol=1e-2 * scale[t])
      checked_with_contact += int(seq["collisions"][t].any())
  assert checked_with_contact > 0, "no ball-ball collision away from walls was checked"


def test_balls_inside_frame(sequences):
  # Contacts are resolved at sub-step resolution: a ball may overlap a wall by
  # at most one sub-step of motion before it bounces.
  for seq in sequences:
    pos, r = seq["positions"], seq["radii"][None, :, None]
    tol = np.linalg.norm(seq["velocities"], axis=-1).max() / CONFIG64.substeps + 0.05
    assert np.all(pos - r >= -tol) and np.all(pos + r <= 64.0 + tol)
    assert np.all(pos >= 0) and np.all(pos <= 64.0)


def test_two_ball_types():
  cfg = balls.BallsConfig(image_size=64, num_frames=2, min_balls=8, max_balls=8)
  seq = balls.generate_sequence(cfg, 0)
  assert set(seq["masses"].tolist()) == {1.0, 6.0}
  heavy = seq["masses"] == 6.0
  np.testing.assert_allclose(seq["radii"][heavy], 5.0)
  np.testing.assert_allclose(seq["radii"][~heavy], 4.0)
  cfg32 = balls.BallsConfig(image_size=32, num_frames=2, min_balls=8, max_balls=8)
  seq32 = balls.generate_sequence(cfg32, 0)
  assert set(seq32["radii"].tolist()) == {2.5, 2.5 * 1.25}


def test_rendered_discs_match_positions_and_radii(sequences):
  for seq in sequences:
    groups = seq["groups"][..., 0]
    for t in range(0, 51, 5):
      for i, (p, r) in enumerate(zip(seq["positions"][t], seq["radii"])):
        rows, cols = np.nonzero(groups[t] == i + 1)
        dist2 = (cols + 0.5 - p[0])**2 + (rows + 0.5 - p[1])**2
        assert np.all(dist2 < r**2)  # every labelled pixel lies in its disc
        others = np.delete(seq["positions"][t], i, axis=0)
        if np.linalg.norm(others - p, axis=-1).min() > 2 * 5.0:  # no overlap possible
          assert abs(len(rows) - np.pi * r**2) < 2 * np.pi * r  # the full disc
          np.testing.assert_allclose([cols.mean() + 0.5, rows.mean() + 0.5], p, atol=0.5)


def test_groups_agree_with_features(sequences):
  for seq in sequences:
    f, g = seq["features"], seq["groups"]
    assert set(np.unique(f)) <= {0, 1}
    assert np.all(f[g > 0] == 1)
    assert np.all(g[f == 0] == 0)
    assert g.max() <= 4


def test_overlapping_pixels_are_group_zero():
  pos = np.array([[[10.0, 10.0], [14.0, 10.0], [30.0, 30.0]]], np.float32)
  radii = np.array([4.0, 4.0, 4.0], np.float32)
  out = balls.render(pos, radii, np.zeros((0, 3), bool), 64)
  discs = balls.disc_masks(pos, radii, 64)[0]
  overlap = discs[0] & discs[1]
  assert overlap.any()
  assert np.all(out["features"][0, ..., 0][overlap] == 1)
  assert np.all(out["groups"][0, ..., 0][overlap] == 0)
  np.testing.assert_array_equal(out["groups"][0, ..., 0][discs[2]], 3)
  np.testing.assert_array_equal(out["features"][0, ..., 0], discs.any(axis=0))


def test_head_on_collision_flags_only_colliding_balls():
  # Balls 0 and 1 (equal mass) meet head-on around frame 5; ball 2 is far away.
  pos = np.array([[12.0, 32.0], [32.0, 32.0], [50.0, 10.0]])
  vel = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 0.5]])
  masses, radii = np.ones(3, np.float32), np.full(3, 4.0, np.float32)
  traj = balls.simulate(pos, vel, masses, radii, image_size=64, num_frames=11)
  collision_steps = np.nonzero(traj["contacts"].any(axis=1))[0]
  assert len(collision_steps) > 0 and np.all((collision_steps >= 2) & (collision_steps <= 4))
  assert not traj["contacts"][:, 2].any()
  # Equal masses exchange velocities.
  np.testing.assert_allclose(traj["velocities"][-1, :2], vel[::-1][1:], atol=1e-3)
  out = balls.render(traj["positions"], radii, traj["contacts"], 64)
  discs = balls.disc_masks(traj["positions"], radii, 64)
  col = out["collisions"][..., 0].astype(bool)
  assert not col[-1].any()
  for t in range(10):
    if t in collision_steps:
      assert col[t].any()
      assert not (col[t] & discs[t, 2]).any()
      assert np.all(col[t] <= (discs[t, :2].any(0) | discs[t + 1, :2].any(0)))
    else:
      assert not col[t].any()


def test_light_heavy_collision_conserves_momentum_and_energy():
  pos = np.array([[15.0, 32.0], [40.0, 32.0]])
  vel = np.array([[2.0, 0.0], [-1.0, 0.0]])
  masses, radii = np.array([1.0, 6.0], np.float32), np.array([4.0, 5.0], np.float32)
  traj = balls.simulate(pos, vel, masses, radii, image_size=64, num_frames=10)
  assert traj["contacts"].any()
  v_end = traj["velocities"][-1].astype(np.float64)
  p0, p1 = (masses[:, None] * vel).sum(0), (masses[:, None] * v_end).sum(0)
  np.testing.assert_allclose(p1, p0, atol=1e-3)
  e0, e1 = (masses[:, None] * vel**2).sum() / 2, (masses[:, None] * v_end**2).sum() / 2
  np.testing.assert_allclose(e1, e0, rtol=1e-3)
  # 1-D elastic collision formula for the light ball.
  expected = ((1 - 6) * 2.0 + 2 * 6 * -1.0) / 7
  np.testing.assert_allclose(v_end[0, 0], expected, atol=1e-3)


def test_collision_flags_near_close_balls(sequences):
  for seq in sequences:
    pos, r = seq["positions"], seq["radii"]
    dist = np.linalg.norm(pos[:, :, None] - pos[:, None], axis=-1) - (r[:, None] + r[None])
    for t in np.nonzero(seq["collisions"][:-1].any(axis=(1, 2, 3)))[0]:
      gap = np.minimum(dist[t], dist[t + 1])
      gap[np.eye(len(r), dtype=bool)] = np.inf
      # Balls move <= ~3 px per frame, so touching in (t, t+1] means they were close.
      assert gap.min() < 6.0


def test_config_validation():
  with pytest.raises(ValueError, match="substeps"):
    balls.BallsConfig(substeps=2)
  with pytest.raises(ValueError, match="cannot place"):
    balls.generate_sequence(balls.BallsConfig(image_size=8, min_balls=8, max_balls=8), 0)
