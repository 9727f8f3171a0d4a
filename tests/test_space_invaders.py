"""Space Invaders sequences from the ALE (rnem_jax.sim.atari)."""

import numpy as np
import pytest

from rnem_jax.sim import atari


@pytest.fixture(scope="module")
def sequence():
  return atari.generate_sequence(0, max_warmup_steps=60)


def test_binary_84x84_frames(sequence):
  f = sequence["features"]
  assert f.shape == (26, 84, 84, 1) and f.dtype == np.uint8
  assert set(np.unique(f)) == {0, 1}


def test_actions_valid(sequence):
  a = sequence["actions"]
  assert a.shape == (26,) and a.dtype == np.int32
  assert a.min() >= 0 and a.max() < atari.NUM_ACTIONS
  assert len(set(a.tolist())) >= 2  # the scripted policy moves and fires


def test_frames_change(sequence):
  changed = np.abs(np.diff(sequence["features"].astype(int), axis=0)).sum(axis=(1, 2, 3))
  assert np.count_nonzero(changed) >= 20


def test_deterministic_and_seed_dependent(sequence):
  again = atari.generate_sequence(0, max_warmup_steps=60)
  np.testing.assert_array_equal(again["features"], sequence["features"])
  np.testing.assert_array_equal(again["actions"], sequence["actions"])
  other = atari.generate_sequence(1, max_warmup_steps=60)
  assert not np.array_equal(other["features"], sequence["features"])


def test_policy_is_pluggable():
  seq = atari.generate_sequence(3,
                                num_frames=6,
                                max_warmup_steps=0,
                                policy_factory=lambda rng: (lambda obs, step: 3))
  np.testing.assert_array_equal(seq["actions"], 3)
  assert seq["features"].shape == (6, 84, 84, 1)
  with pytest.raises(ValueError, match="action 9"):
    atari.generate_sequence(3,
                            num_frames=4,
                            max_warmup_steps=0,
                            policy_factory=lambda rng: (lambda obs, step: 9))
