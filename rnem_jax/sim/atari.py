"""Space Invaders sequences from the Arcade Learning Environment (paper appendix A.2).

``ALE/SpaceInvaders-v5`` through gymnasium with frame skip 4 and the standard
Atari preprocessing (greyscale, 84×84, max over the last two raw frames), no
sticky actions, one recorded frame per agent step, binarised at intensity
> 0.0001 on the [0, 1] scale.

The paper recorded frames of a pre-trained DQN; that network is not available.
Our default policy is :class:`ScriptedPolicy`, seeded per sequence: it walks
left/right in random stretches and fires often, so aliens die, bullets fly and
the formation moves. Any callable with the :data:`Policy` signature can replace it.
See docs/design.md#space-invaders.

Per example (``T+1 = num_frames``):
  features (T+1, 84, 84, 1) uint8 in {0, 1};
  actions  (T+1,) int32 in [0, NUM_ACTIONS): ``actions[t]`` is the action taken
           after seeing frame t (it produced frame t+1; the last one is chosen
           but its outcome not recorded).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

ENV_ID = "ALE/SpaceInvaders-v5"
SCREEN_SIZE = 84
FRAME_SKIP = 4
THRESHOLD = 0.0001
# Minimal action set of Space Invaders: NOOP, FIRE, RIGHT, LEFT, RIGHTFIRE, LEFTFIRE.
NUM_ACTIONS = 6

# (observation [84, 84] float32 in [0, 1], step index) -> action in [0, NUM_ACTIONS).
Policy = Callable[[np.ndarray, int], int]
# Makes a fresh (stateful) policy for one sequence from that sequence's generator.
PolicyFactory = Callable[[np.random.Generator], Policy]


class ScriptedPolicy:
  """Seeded scripted play: random-length runs of one movement, firing with prob. 0.6."""

  _MOVES = {"none": (0, 1), "right": (2, 4), "left": (3, 5)}  # (no fire, fire)

  def __init__(self, rng: np.random.Generator, fire_probability: float = 0.6):
    self._rng = rng
    self._fire_probability = fire_probability
    self._move, self._steps_left = "none", 0

  def __call__(self, observation: np.ndarray, step: int) -> int:
    del observation, step
    if self._steps_left == 0:
      self._move = self._rng.choice(["right", "left", "none"], p=[0.4, 0.4, 0.2])
      self._steps_left = int(self._rng.integers(3, 16))
    self._steps_left -= 1
    fire = self._rng.random() < self._fire_probability
    return self._MOVES[self._move][int(fire)]


_ENV = None  # one emulator per process, re-seeded at every reset


def make_env():
  """The preprocessed environment (imports ale_py first so gymnasium knows ALE/*)."""
  try:
    import ale_py
    import cv2  # noqa: F401  (AtariPreprocessing resizes with it)
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing
  except ImportError as e:
    raise ImportError(f"the Atari datasets need the emulator ({e.name} is missing): "
                      "pip install -e \".[atari]\"") from e

  gym.register_envs(ale_py)
  env = gym.make(ENV_ID, frameskip=1, repeat_action_probability=0.0)
  if env.action_space.n != NUM_ACTIONS:
    raise RuntimeError(f"{ENV_ID} has {env.action_space.n} actions, expected {NUM_ACTIONS}")
  return AtariPreprocessing(env,
                            noop_max=30,
                            frame_skip=FRAME_SKIP,
                            screen_size=SCREEN_SIZE,
                            terminal_on_life_loss=False,
                            grayscale_obs=True,
                            scale_obs=True)


def _env():
  global _ENV
  if _ENV is None:
    _ENV = make_env()
  return _ENV


def binarize(observation: np.ndarray) -> np.ndarray:
  """[84, 84] float in [0, 1] -> [84, 84, 1] uint8 in {0, 1}."""
  return (observation > THRESHOLD).astype(np.uint8)[..., None]


def generate_sequence(seed: np.random.SeedSequence | int,
                      *,
                      num_frames: int = 26,
                      max_warmup_steps: int = 300,
                      policy_factory: Optional[PolicyFactory] = None,
                      max_attempts: int = 10) -> dict[str, np.ndarray]:
  """One example, a pure function of (seed, arguments).

    The game is reset with a seed drawn from ``seed``, played for a random
    number of warm-up steps (so sequences start at different game phases),
    then ``num_frames`` frames and actions are recorded. If the game ends
    early the attempt is redrawn (deterministically).
    """
  policy_factory = policy_factory or ScriptedPolicy
  env = _env()
  rng = np.random.default_rng(seed)
  for _ in range(max_attempts):
    policy = policy_factory(rng)
    observation, _ = env.reset(seed=int(rng.integers(2**31 - 1)))
    warmup = int(rng.integers(0, max_warmup_steps + 1))
    frames, actions, ended = [], [], False
    for step in range(warmup + num_frames):
      action = int(policy(observation, step))
      if not 0 <= action < NUM_ACTIONS:
        raise ValueError(f"policy returned action {action}, not in [0, {NUM_ACTIONS})")
      if step >= warmup:
        frames.append(binarize(observation))
        actions.append(action)
        if len(frames) == num_frames:
          break
      observation, _, terminated, truncated, _ = env.step(action)
      if terminated or truncated:
        ended = True
        break
    if not ended:
      return {"features": np.stack(frames), "actions": np.asarray(actions, np.int32)}
  raise RuntimeError(f"game ended early in {max_attempts} attempts; shorten the warm-up")
