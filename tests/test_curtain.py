"""The curtain variant: an invisible occluder hides balls, which vanish and re-appear."""

import numpy as np

from rnem_jax.sim import balls

CONFIG = balls.BallsConfig(image_size=64,
                           num_frames=51,
                           min_balls=3,
                           max_balls=3,
                           heavy_probability=0.0,
                           curtain_size=20.0)


def test_everything_zero_under_the_curtain():
  for seed in range(5):
    seq = balls.generate_sequence(CONFIG, seed)
    hidden = balls.curtain_mask(seq["curtain"], 64)
    assert hidden.sum() == 400
    for key in ("features", "groups", "collisions"):
      assert not seq[key][:, hidden].any(), key
    np.testing.assert_array_equal(seq["masses"], 1.0)
    np.testing.assert_allclose(seq["curtain"][2:] - seq["curtain"][:2], 20.0, atol=1e-4)
    assert 0 <= seq["curtain"].min() and seq["curtain"].max() <= 64


def test_curtain_position_is_random_per_sequence():
  corners = {tuple(balls.generate_sequence(CONFIG, s)["curtain"][:2]) for s in range(4)}
  assert len(corners) == 4


def test_ball_vanishes_and_reappears():
  # One ball crosses the curtain [22, 42]² horizontally; another stays visible.
  pos = np.array([[6.0, 32.0], [32.0, 6.0]])
  vel = np.array([[2.0, 0.0], [0.0, 0.0]])
  radii = np.full(2, 4.0, np.float32)
  traj = balls.simulate(pos, vel, np.ones(2, np.float32), radii, image_size=64, num_frames=30)
  curtain = np.array([22.0, 22.0, 42.0, 42.0], np.float32)
  out = balls.render(traj["positions"], radii, traj["contacts"], 64, curtain)
  visible = (out["groups"][..., 0] == 1).sum(axis=(1, 2))
  assert visible[0] > 40 and visible[-1] > 40  # fully visible before and after
  hidden = np.nonzero(visible == 0)[0]
  assert len(hidden) >= 4  # centre x in [26, 38] -> fully behind for ~6 frames
  assert visible[:hidden[0]].min() > 0 and visible[hidden[-1] + 1:].min() > 0
  # The other ball is unaffected; the occluder itself is never drawn.
  assert np.all((out["groups"][..., 0] == 2).sum(axis=(1, 2)) > 40)
  assert out["features"].sum(axis=(1, 2, 3)).min() > 40
