"""bouncing_balls: pymunk bouncing balls of two types (R-NEM, ICLR 2018, §4 and appendix A.1).

Our generator and its choices: docs/design.md#bouncing-balls.

Thin TFDS builder; the physics and rendering live in ``rnem_jax.sim.balls``.
Build with ``python -m rnem_jax.data build bouncing_balls/<config>``.
"""

from __future__ import annotations

import tensorflow_datasets as tfds
from etils import epath

from rnem_jax.sim import balls, builder_utils


def _config(name, image_size, num_frames, n_balls, splits, description, speed=None):
  # Speed scales with the ball radius so motion in radii per frame is size-independent,
  # unless given (px / frame).
  if speed is None:
    speed = 2.0 * balls.default_light_radius(image_size) / 4.0
  sim = balls.BallsConfig(image_size=image_size, num_frames=num_frames, min_balls=n_balls[0],
                          max_balls=n_balls[1], speed=speed)
  return builder_utils.BallsBuilderConfig(name=name, description=description, sim=sim,
                                          split_sizes=splits)


_FULL = (("train", 50_000), ("validation", 10_000), ("test", 10_000))
_SMALL = (("train", 2_000), ("validation", 500), ("test", 500))
_CPU = (("train", 5_000), ("validation", 500), ("test", 500))
_TINY = (("train", 32), ("validation", 16), ("test", 16))


class Builder(builder_utils.BallsBuilder):
  """Bouncing balls: 4 balls for training, 6-8 for the extrapolation test."""

  VERSION = tfds.core.Version("1.0.0")
  # Where TFDS finds this file, README.md and checksums.tsv; set explicitly because
  # TFDS's own lookup needs the `importlib_resources` backport (not a dependency).
  code_path = epath.Path(__file__)
  pkg_dir_path = code_path.parent
  RELEASE_NOTES = {"1.0.0": "First release: pymunk physics, our own generator."}
  BUILDER_CONFIGS = [
      _config("balls4mass64", 64, 51, (4, 4), _FULL, "4 balls, 64x64, paper sizes."),
      _config("balls678mass64", 64, 51, (6, 8), (("test", 10_000),),
              "6-8 balls, 64x64, extrapolation test set."),
      _config("balls4mass64_small", 64, 51, (4, 4), _SMALL, "4 balls, 64x64, small."),
      _config("balls678mass64_small", 64, 51, (6, 8), (("test", 500),), "6-8 balls, small."),
      _config("balls4mass32_small", 32, 51, (4, 4), _SMALL, "4 balls, 32x32 for CPU work."),
      _config("balls678mass32_small", 32, 51, (6, 8), (("test", 500),), "6-8 balls, 32x32."),
      # The CPU reproduction protocol: 2 px/frame at 32x32 so that collisions are frequent.
      _config("balls4mass32_cpu", 32, 31, (4, 4), _CPU,
              "4 balls, 32x32, 2 px/frame: the CPU reproduction set.", speed=2.0),
      _config("balls678mass32_cpu", 32, 31, (6, 8), (("test", 500),),
              "6-8 balls, 32x32, 2 px/frame: the CPU extrapolation test set.", speed=2.0),
      _config("balls4mass32_tiny", 32, 21, (4, 4), _TINY, "4 balls, 32x32, for tests."),
      _config("balls678mass32_tiny", 32, 21, (6, 8), (("test", 16),), "6-8 balls, tests."),
  ]
