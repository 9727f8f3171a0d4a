"""curtain: 3 equal-mass bouncing balls behind an invisible occluder (R-NEM §4 "Hidden Factors").

Our generator and its choices: docs/design.md#curtain.

Thin TFDS builder; the physics and rendering live in ``rnem_jax.sim.balls``.
Build with ``python -m rnem_jax.data build curtain/<config>``.
"""

from __future__ import annotations

import tensorflow_datasets as tfds
from etils import epath

from rnem_jax.sim import balls, builder_utils


def _config(name, image_size, num_frames, splits, description, speed=None):
  # Curtain (20 px at 64x64) scales with the image, speed with the ball radius.
  sim = balls.BallsConfig(image_size=image_size, num_frames=num_frames, min_balls=3,
                          max_balls=3, heavy_probability=0.0,
                          speed=speed or 2.0 * balls.default_light_radius(image_size) / 4.0,
                          curtain_size=20.0 * image_size / 64.0)
  return builder_utils.BallsBuilderConfig(name=name, description=description, sim=sim,
                                          split_sizes=splits)


class Builder(builder_utils.BallsBuilder):
  """Three light balls; everything under a random square per sequence is invisible."""

  VERSION = tfds.core.Version("1.0.0")
  # Where TFDS finds this file, README.md and checksums.tsv; set explicitly because
  # TFDS's own lookup needs the `importlib_resources` backport (not a dependency).
  code_path = epath.Path(__file__)
  pkg_dir_path = code_path.parent
  RELEASE_NOTES = {"1.0.0": "First release: pymunk physics, our own generator."}
  BUILDER_CONFIGS = [
      _config("balls3curtain64", 64, 51,
              (("train", 50_000), ("validation", 10_000), ("test", 10_000)), "Paper sizes."),
      _config("balls3curtain64_small", 64, 51,
              (("train", 2_000), ("validation", 500), ("test", 500)), "64x64, small."),
      _config("balls3curtain32_small", 32, 51,
              (("train", 2_000), ("validation", 500), ("test", 500)), "32x32 for CPU work."),
      _config("balls3curtain32_cpu", 32, 31,
              (("train", 5_000), ("validation", 500), ("test", 500)),
              "32x32, 2 px/frame: the CPU reproduction set.", speed=2.0),
      _config("balls3curtain32_tiny", 32, 21, (("train", 32), ("validation", 16), ("test", 16)),
              "32x32, for tests."),
  ]
