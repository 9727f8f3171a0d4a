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


def test_occlusion_masks_by_hand():
  """One ball (r=1.5) in an 8x8 frame with the curtain x in [0, 4): visible, fully hidden,
  half out again; a second ball hidden from the start (never seen) then out."""
  r = np.array([1.5, 1.5], np.float32)
  pos = np.array([[[6.0, 2.0], [2.0, 6.0]],     # frame 0: ball 0 visible, ball 1 hidden
                  [[2.0, 2.0], [5.5, 6.0]],     # frame 1: ball 0 hidden, ball 1 out
                  [[4.0, 2.0], [5.5, 6.0]]],    # frame 2: ball 0 straddles the edge x = 4
                 np.float32)
  curtain = np.array([0.0, 0.0, 4.0, 8.0], np.float32)
  m = {k: v[..., 0].astype(bool) for k, v in balls.occlusion_masks(pos, r, curtain, 8).items()}
  disc = balls.disc_masks(pos, r, 8)  # [3, 2, 8, 8]
  cm = balls.curtain_mask(curtain, 8)
  assert set(m) == {"hidden_partial", "hidden_full", "reappearing", "empty_curtain"}
  assert disc[1, 0].sum() == 4 and (disc[1, 0] <= cm).all()   # ball 0 fully hidden in frame 1
  # Frame 0: ball 1 is hidden but was never seen: nothing counts.
  assert not m["hidden_full"][0].any() and not m["reappearing"][0].any()
  # Frame 1: ball 0 (seen in frame 0) entirely hidden; ball 1 comes out but was never seen.
  np.testing.assert_array_equal(m["hidden_full"][1], disc[1, 0])
  assert not m["reappearing"][1].any() and not m["hidden_partial"][1].any()
  # Frame 2: ball 0 is back, half of it still under the curtain.
  np.testing.assert_array_equal(m["reappearing"][2], disc[2, 0] & ~cm)
  np.testing.assert_array_equal(m["hidden_partial"][2], disc[2, 0] & cm)
  assert m["reappearing"][2].sum() == 2 and m["hidden_partial"][2].sum() == 2
  assert not m["hidden_full"][2].any()
  for t in range(3):
    np.testing.assert_array_equal(m["empty_curtain"][t], cm & ~disc[t].any(0))
