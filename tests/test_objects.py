"""Object-level rollout metrics (rnem_jax.objects) on hand-built and simulated predictions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnem_jax import objects
from rnem_jax.sim import balls

SIZE = 48
EPS = 1e-3  # background / foreground probabilities eps, 1 - eps: psi in (0, 1)


def _scene():
  """Two sequences, T = 4 steps, up to 4 balls; centres on pixel centres, far apart.

  Sequence 0: 3 balls and a padded slot whose garbage disc overlaps ball 0; sequence 1: 2
  balls and 2 zero padded slots. Returns positions [T+1, B, n, 2], radii [B, n], valid [B, n].
  """
  t = np.arange(5, dtype=np.float32)[:, None]
  seq0 = [(10.5, 10.5, 1, 0), (34.5, 12.5, 0, 1), (14.5, 36.5, 1, -1), (12.0, 13.0, 0, 0)]
  seq1 = [(24.5, 24.5, -1, 0), (38.5, 38.5, 0, -1), (0, 0, 0, 0), (0, 0, 0, 0)]
  positions = np.stack([
      np.stack([np.concatenate([x + vx * t, y + vy * t], axis=-1) for x, y, vx, vy in seq])
      for seq in (seq0, seq1)
  ])  # [B, n, T+1, 2]
  positions = np.transpose(positions, (2, 0, 1, 3)).astype(np.float32)
  radii = np.array([[4.0, 5.0, 4.0, 6.0], [4.0, 5.0, 0.0, 0.0]], np.float32)
  valid = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  return positions, radii, valid


def _discs(positions, radii, valid, size=SIZE):
  """[T, B, n, H, W] bool discs drawn by the dataset renderer (rnem_jax.sim.balls)."""
  out = np.stack([balls.disc_masks(positions[:, b], radii[b], size)
                  for b in range(positions.shape[1])], axis=1)
  return out & valid[None, :, :, None, None]


def _mixture(discs):
  """Component k <= n-1 draws ball k, the last one the background: psi, gamma [T, B, K, H, W, 1]."""
  d = discs.astype(np.float32)
  covered = d.sum(axis=2, keepdims=True)
  background = (covered == 0).astype(np.float32)
  psi = np.concatenate([d, np.zeros_like(background)], axis=2) * (1 - 2 * EPS) + EPS
  gamma = np.concatenate([d / np.maximum(covered, 1), background], axis=2)
  return psi[..., None], gamma[..., None]


def _prediction(shift=(0.0, 0.0)):
  """Targets of the scene and a mixture prediction of it with every ball moved by `shift`."""
  positions, radii, valid = _scene()
  psi, gamma = _mixture(_discs(positions[1:] + np.float32(shift), radii, valid))
  return psi, gamma, positions, radii, valid


def _metrics(psi, gamma, positions, radii, valid, **kwargs):
  out = objects.object_metrics(psi, gamma, positions, radii, valid, SIZE, **kwargs)
  return {k: np.asarray(v) for k, v in out.items()}


def test_disc_masks_match_the_renderer():
  positions, radii, valid = _scene()
  discs = np.asarray(objects.disc_masks(positions, radii, valid, SIZE))
  assert discs.shape == (5, 2, 4, SIZE, SIZE) and discs.dtype == bool
  np.testing.assert_array_equal(discs, _discs(positions, radii, valid))
  assert not discs[:, 0, 3].any() and not discs[:, 1, 2:].any()  # padded balls
  # The convention: x is the column, pixel centres at +0.5, strictly inside the radius.
  one = np.asarray(objects.disc_masks(np.array([[3.5, 1.5]]), np.array([1.0]), None, 8))[0]
  assert one[1, 3] and one.sum() == 1
  two = np.asarray(objects.disc_masks(np.array([[4.0, 1.5]]), np.array([0.5001]), None, 8))[0]
  np.testing.assert_array_equal(np.nonzero(two), ([1, 1], [3, 4]))


def test_perfect_prediction():
  psi, gamma, positions, radii, valid = _prediction()
  out = _metrics(psi, gamma, positions, radii, valid)
  v = np.broadcast_to(valid, (4,) + valid.shape)
  assert out["kept"].shape == (4, 2, 4)
  np.testing.assert_array_equal(out["kept"], v)
  np.testing.assert_allclose(out["mass"][v], 1 - EPS, atol=1e-6)
  np.testing.assert_allclose(out["position_error"][v], 0.0, atol=1e-4)
  # Centres on pixel centres: the disc is symmetric and both references agree.
  centre = _metrics(psi, gamma, positions, radii, valid, reference="centre")
  np.testing.assert_allclose(centre["position_error"][v], 0.0, atol=1e-4)
  np.testing.assert_array_equal(out["component"], np.where(v, np.arange(4), -1))
  np.testing.assert_allclose(out["share"][v], 1.0, atol=1e-2)  # eps from the other components
  assert not out["swap"].any()
  np.testing.assert_array_equal(out["tracked"][1:], v[1:])
  assert not out["tracked"][0].any()
  np.testing.assert_array_equal(out["balls_kept"], 1.0)
  np.testing.assert_array_equal(out["balls_kept_count"], 5)
  np.testing.assert_allclose(out["position_error_px"], 0.0, atol=1e-4)
  np.testing.assert_array_equal(out["swaps"][1:], 0.0)
  assert np.isnan(out["swaps"][0]) and out["swaps_count"][0] == 0
  np.testing.assert_array_equal(out["swaps_count"][1:], 5)
  np.testing.assert_array_equal(out["num_swaps"], 0)
  for key in ("mass", "position_error", "share"):
    assert np.isnan(out[key][~v]).all(), key


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("direction", [(1, 0), (0, -1)])
def test_shifted_prediction(d, direction):
  shift = (d * direction[0], d * direction[1])
  out = _metrics(*_prediction(shift))
  v = np.broadcast_to(_scene()[2], out["kept"].shape)
  np.testing.assert_allclose(out["position_error"][v], d, atol=0.1)
  np.testing.assert_allclose(out["position_error_px"][out["position_error_px_count"] > 0], d,
                             atol=0.1)
  assert out["kept"][v].all()  # a shift below ~0.8 r leaves over half of the true disc covered
  assert not out["swap"].any()


def test_shift_beyond_margin_is_underestimated():
  out = _metrics(*_prediction((3, 0)), margin=1.0)
  v = np.broadcast_to(_scene()[2], out["kept"].shape)
  assert (out["position_error"][v] < 2.9).all()
  # The stored centre as reference gives the same here (centres on pixel centres).
  centre = _metrics(*_prediction((3, 0)), reference="centre")
  np.testing.assert_allclose(centre["position_error"][v], 3.0, atol=1e-4)


def test_shift_is_exact_for_any_subpixel_centre():
  # Against the rendered disc's centroid, an integer shift gives exactly d wherever the ball
  # lies; against the stored centre, the disc's rasterisation bias (< 0.3 px) adds to it.
  rng = np.random.default_rng(0)
  positions = rng.uniform(16, 32, size=(2, 1, 1, 2)).astype(np.float32)
  radii, valid = np.array([[4.0]], np.float32), np.ones((1, 1), bool)
  for d in (0, 2):
    psi, gamma = _mixture(_discs(positions[1:] + np.float32([d, 0]), radii, valid))
    out = _metrics(psi, gamma, positions, radii, valid)
    np.testing.assert_allclose(out["position_error"], d, atol=1e-4)
    centre = _metrics(psi, gamma, positions, radii, valid, reference="centre")
    np.testing.assert_allclose(centre["position_error"], d, atol=0.3)


def test_vanished_ball():
  psi, gamma, positions, radii, valid = _prediction()
  base = _metrics(psi, gamma, positions, radii, valid)
  discs = _discs(positions[1:], radii, valid)
  psi = psi.copy()
  step, seq, ball = 2, 0, 1
  psi[step, seq][:, discs[step, seq, ball]] = 0.0  # zero the ball's disc in every component
  out = _metrics(psi, gamma, positions, radii, valid)
  assert not out["kept"][step, seq, ball] and out["mass"][step, seq, ball] == 0.0
  assert np.isnan(out["position_error"][step, seq, ball])
  assert np.isnan(out["share"][step, seq, ball])
  others = np.ones(out["kept"].shape, bool)
  others[step, seq, ball] = False
  for key in ("kept", "mass", "position_error", "component", "share"):
    np.testing.assert_array_equal(out[key][others], base[key][others], err_msg=key)
  assert not out["tracked"][step, seq, ball] and not out["tracked"][step + 1, seq, ball]
  # The vanished ball's holder changes (no component scores on an empty disc) but is not tracked
  # there, so no swap is counted.
  assert out["component"][step, seq, ball] != base["component"][step, seq, ball]
  assert not out["swap"].any()
  np.testing.assert_array_equal(out["num_swaps"], 0)
  np.testing.assert_allclose(out["balls_kept"], [1, 1, 0.8, 1])
  np.testing.assert_array_equal(out["position_error_px_count"], [5, 5, 4, 5])
  np.testing.assert_allclose(out["position_error_px"], 0.0, atol=1e-4)
  np.testing.assert_array_equal(out["swaps_count"], [0, 5, 4, 4])


@pytest.mark.parametrize("step", [1, 2, 3])
def test_swapped_components(step):
  psi, gamma, positions, radii, valid = _prediction()
  perm = np.array([1, 0, 2, 3, 4])  # components 0 and 1 exchange balls from `step` on
  psi, gamma = psi.copy(), gamma.copy()
  psi[step:, 0] = psi[step:, 0][:, perm]
  gamma[step:, 0] = gamma[step:, 0][:, perm]
  out = _metrics(psi, gamma, positions, radii, valid)
  expected = np.zeros(out["swap"].shape, bool)
  expected[step, 0, :2] = True
  np.testing.assert_array_equal(out["swap"], expected)
  np.testing.assert_array_equal(out["component"][step:, 0, :2], [[1, 0]] * (4 - step))
  np.testing.assert_array_equal(out["num_swaps"], expected.sum(axis=(1, 2)))
  np.testing.assert_allclose(out["swaps"][1:], expected.sum(axis=(1, 2))[1:] / 5)
  # Scores from psi alone find the same holders.
  no_gamma = _metrics(psi, gamma, positions, radii, valid, use_gamma=False)
  np.testing.assert_array_equal(no_gamma["swap"], expected)


def test_single_component_model_matches_mixture():
  psi, gamma, positions, radii, valid = _prediction((2, 0))
  psi[1, 1] = psi[1, 1] * 0.4  # a faded step: some balls lost
  mixture = _metrics(psi, gamma, positions, radii, valid)
  single_psi = psi.max(axis=2, keepdims=True)
  for single_gamma in (None, np.ones_like(single_psi)):
    single = _metrics(single_psi, single_gamma, positions, radii, valid)
    for key in ("kept", "mass", "position_error", "balls_kept", "position_error_px"):
      np.testing.assert_array_equal(single[key], mixture[key], err_msg=key)
    v = np.broadcast_to(valid, single["kept"].shape)
    np.testing.assert_array_equal(single["component"], np.where(v, 0, -1))
    np.testing.assert_allclose(single["share"][v & (single["mass"] > 0)], 1.0)
    assert not single["swap"].any()
    np.testing.assert_array_equal(single["num_swaps"], 0)
  assert not mixture["kept"][1, 1].any()
  np.testing.assert_array_equal(mixture["kept"][1, 0], valid[0])


def test_invariant_to_component_permutation():
  psi, gamma, positions, radii, valid = _prediction((1, 0))
  psi[2:, 0] = psi[2:, 0][:, [1, 0, 2, 3, 4]]  # include a swap
  gamma[2:, 0] = gamma[2:, 0][:, [1, 0, 2, 3, 4]]
  base = _metrics(psi, gamma, positions, radii, valid)
  perm = np.array([3, 4, 0, 2, 1])
  out = _metrics(psi[:, :, perm], gamma[:, :, perm], positions, radii, valid)
  for key in base:
    if key != "component":
      np.testing.assert_array_equal(out[key], base[key], err_msg=key)
  inverse = np.argsort(perm)
  v = base["component"] >= 0
  np.testing.assert_array_equal(out["component"][v], inverse[base["component"][v]])


def test_padded_balls_are_ignored():
  psi, gamma, positions, radii, valid = _prediction((1, 0))
  out = _metrics(psi, gamma, positions, radii, valid)
  # Other garbage in the padded slots changes nothing.
  garbage_pos, garbage_r = positions.copy(), radii.copy()
  garbage_pos[:, 1, 2:] = 25.0
  garbage_r[1, 2:] = 7.0
  garbage = _metrics(psi, gamma, garbage_pos, garbage_r, valid)
  for key in out:
    np.testing.assert_array_equal(garbage[key], out[key], err_msg=key)
  # Dropping the padded slot (n = 4 -> 3) changes nothing for the real balls: in particular
  # the garbage disc overlapping ball 0 is not cut out of its window.
  trimmed = _metrics(psi[:, :, [0, 1, 2, 4]], gamma[:, :, [0, 1, 2, 4]], positions[:, :, :3],
                     radii[:, :3], valid[:, :3])
  for key in trimmed:
    if out[key].ndim == 3:
      np.testing.assert_array_equal(trimmed[key], out[key][:, :, :3], err_msg=key)
    else:
      np.testing.assert_array_equal(trimmed[key], out[key], err_msg=key)
  assert np.isnan(out["position_error"][:, 0, 3]).all() and not out["kept"][:, 0, 3].any()
  assert (out["component"][:, 0, 3] == -1).all() and not out["swap"][:, 0, 3].any()


def test_neighbours_excluded_from_the_window():
  # Two touching balls predicted perfectly: with the exclusion each is measured on its own
  # disc (0 px); without it the neighbour's pixels pull the centroid towards it.
  positions = np.array([[[[20.5, 24.5], [28.5, 24.5]]]] * 2, np.float32)  # [2, 1, 2, 2]
  radii, valid = np.full((1, 2), 4.0, np.float32), np.ones((1, 2), bool)
  psi, gamma = _mixture(_discs(positions[1:], radii, valid))
  out = _metrics(psi, gamma, positions, radii, valid)
  np.testing.assert_allclose(out["position_error"], 0.0, atol=1e-4)
  leaky = _metrics(psi, gamma, positions, radii, valid, exclude_other_balls=False)
  assert (leaky["position_error"] > 1.0).all()


def test_jit_matches_eager():
  args = _prediction((2, 0))
  psi = args[0].copy()
  psi[2, 0, :, 5:20, 5:20] = 0.0  # some NaN errors and lost balls
  args = (psi,) + args[1:]
  fn = jax.jit(functools.partial(objects.object_metrics, image_size=SIZE, margin=3.0))
  jitted = {k: np.asarray(v) for k, v in fn(*args).items()}
  eager = _metrics(*args, margin=3.0)
  assert jitted.keys() == eager.keys()
  for key in eager:
    assert jitted[key].dtype == eager[key].dtype, key
    np.testing.assert_allclose(jitted[key], eager[key], atol=1e-5, equal_nan=True, err_msg=key)
  assert np.isnan(eager["position_error"]).any() and not eager["kept"].all()
  # gamma None and valid None trace too.
  fn = jax.jit(lambda p, x, r: objects.object_metrics(p, None, x, r, None, SIZE))
  assert fn(args[0], args[2], args[3])["kept"].shape == (4, 2, 4)


def test_wrong_shapes_raise():
  psi, gamma, positions, radii, valid = _prediction()
  good = dict(psi=psi, gamma=gamma, positions=positions, radii=radii, valid=valid,
              image_size=SIZE)
  bad = [
      ("psi", dict(psi=psi[..., 0], gamma=None)),
      ("psi", dict(psi=np.concatenate([psi, psi], -1), gamma=None)),
      ("gamma", dict(gamma=gamma[:, :, :2])),
      ("image_size", dict(image_size=SIZE + 1)),
      ("positions", dict(positions=positions[1:])),  # T instead of T+1 frames
      ("positions", dict(positions=positions[..., :1])),
      ("positions", dict(positions=positions[:, :1])),
      ("radii", dict(radii=radii[:, :3])),
      ("radii", dict(radii=radii[0])),
      ("valid", dict(valid=valid[None])),
  ]
  for match, override in bad:
    with pytest.raises(ValueError, match=match):
      objects.object_metrics(**{**good, **override})
  with pytest.raises(ValueError, match="reference"):
    objects.object_metrics(**good, reference="center")
  with pytest.raises(ValueError, match="radii"):
    objects.disc_masks(positions, radii[:, :2], None, SIZE)
  with pytest.raises(ValueError, match="positions"):
    objects.disc_masks(positions[..., :1], radii, valid, SIZE)
  with pytest.raises(ValueError, match="masks"):
    objects.ball_mass(psi[:, :, 0, ..., 0], np.ones((4, 2, 4, SIZE, SIZE - 1)))
  with pytest.raises(ValueError, match="component and kept"):
    objects.swaps(np.zeros((4, 2, 3), np.int32), np.zeros((4, 2, 4), bool))


def test_generated_sequences_as_their_own_prediction():
  """The dataset's own frames as a K=1 prediction of itself, on 6-8 balls at 64 px.

  Observed (seeds 0-3, 20 steps): disc_masks equals the renderer bit for bit; every ball is
  kept at every step (mass 1: a ball's whole true disc is lit in the frame, whoever else
  covers it); the error against the disc centroid is 0 and against the stored centre at
  most ~0.27 px (the rasterisation bias, also for balls touching each other or a wall). The
  physics keeps balls from overlapping (pymunk's slop is 0.01 px), so the "heavy overlap"
  case never occurs in real data; touching balls only matter without the exclusion of
  neighbours, where the error reaches ~2.6 px.
  """
  config = balls.BallsConfig(image_size=64, num_frames=21, min_balls=6, max_balls=8)
  for seed in range(4):
    seq = balls.generate_sequence(config, seed)
    n = len(seq["radii"])
    np.testing.assert_array_equal(
        np.asarray(objects.disc_masks(seq["positions"], seq["radii"], None, 64)),
        balls.disc_masks(seq["positions"], seq["radii"], 64))
    psi = seq["features"][1:, None, None].astype(np.float32)  # [T, 1, 1, H, W, 1]
    args = (psi, None, seq["positions"][:, None], seq["radii"][None], np.ones((1, n), bool), 64)
    out = {k: np.asarray(v) for k, v in objects.object_metrics(*args).items()}
    assert out["kept"].all() and (out["mass"] == 1.0).all()
    np.testing.assert_allclose(out["position_error"], 0.0, atol=1e-4)
    centre = np.asarray(objects.object_metrics(*args, reference="centre")["position_error"])
    assert np.isfinite(centre).all() and centre.max() < 0.5
    np.testing.assert_array_equal(out["balls_kept"], 1.0)
    assert not out["swap"].any() and (out["component"] == 0).all()


def test_rollout_object_sums_of_the_true_frames(data_dir):
  """evaluate's per-sequence sums on stored tiny sequences: the true next frames as a K=1
  prediction keep every ball at 0 px, the empty frame none; padded balls are not counted."""
  from rnem_jax import data, evaluate
  name = "bouncing_balls/balls678mass32_tiny"
  data.ensure_built(name, data_dir)
  source = data.load_source(name, "test", data_dir)
  examples = [source[i] for i in range(3)]
  T = 6
  batch = evaluate.ball_fields(examples, T + 1, 8)
  x = np.stack([ex["features"][:T + 1] for ex in examples], axis=1).astype(np.float32)
  n = [len(ex["radii"]) for ex in examples]
  assert batch["positions"].shape == (T + 1, 3, 8, 2) and batch["valid"].sum() == sum(n)
  perfect = evaluate.object_sums(jnp.asarray(x[1:, :, None]), None, batch)
  np.testing.assert_array_equal(perfect["balls"], np.broadcast_to(n, (T, 3)))
  np.testing.assert_array_equal(perfect["balls_kept"], perfect["balls"])
  assert float(jnp.max(perfect["position_error_sum"])) < 1e-4
  assert float(jnp.sum(perfect["swaps"])) == 0.0
  # the true frame covers each true disc (its mean intensity there: > 0.5 for every ball)
  assert np.all(perfect["ball_mass_sum"] > 0.5 * perfect["balls"])
  assert np.all(perfect["ball_mass_sum"] <= perfect["balls"] + 1e-6)
  empty = evaluate.object_sums(jnp.zeros_like(jnp.asarray(x[1:, :, None])), None, batch)
  assert float(jnp.sum(empty["balls_kept"])) == 0.0
  assert float(jnp.sum(empty["ball_mass_sum"])) == 0.0
  half = evaluate.object_sums(0.5 * jnp.asarray(x[1:, :, None]), None, batch)
  np.testing.assert_allclose(half["ball_mass_sum"], 0.5 * perfect["ball_mass_sum"], rtol=1e-5)
