"""curtain: 3 equal-mass bouncing balls behind an invisible occluder (R-NEM §4.1; SPEC D8).

Thin TFDS builder; the physics and rendering live in ``rnem_jax.sim.balls``.
Build with ``python -m rnem_jax.data build curtain/<config>``.
"""

from __future__ import annotations

import dataclasses
import functools

import tensorflow_datasets as tfds
from etils import epath

from rnem_jax.sim import balls, builder_utils


@dataclasses.dataclass(eq=False)
class CurtainBuilderConfig(tfds.core.BuilderConfig):
  """Image size, sequence length, speed, curtain side and split sizes of one config."""

  image_size: int = 64
  num_frames: int = 51
  num_balls: int = 3
  speed: float = 2.0
  curtain_size: float = 20.0
  split_sizes: tuple[tuple[str, int], ...] = ()
  seed: int = 0

  def sim_config(self) -> balls.BallsConfig:
    return balls.BallsConfig(image_size=self.image_size,
                             num_frames=self.num_frames,
                             min_balls=self.num_balls,
                             max_balls=self.num_balls,
                             heavy_probability=0.0,
                             speed=self.speed,
                             curtain_size=self.curtain_size)


def _config(name, image_size, num_frames, splits, description):
  # Curtain (20 px at 64x64) scales with the image, speed with the ball radius.
  return CurtainBuilderConfig(name=name,
                              description=description,
                              image_size=image_size,
                              num_frames=num_frames,
                              speed=2.0 * balls.default_light_radius(image_size) / 4.0,
                              curtain_size=20.0 * image_size / 64.0,
                              split_sizes=splits)


class Builder(builder_utils.SimulatedBuilder):
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
      _config("balls3curtain32_tiny", 32, 21, (("train", 32), ("validation", 16), ("test", 16)),
              "32x32, for tests."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        features=builder_utils.ball_features(cfg.num_frames, cfg.image_size, curtain=True),
        disable_shuffling=True,
        homepage="https://github.com/sjoerdvansteenkiste/Relational-NEM",
    )

  def example_fn(self):
    cfg = self.builder_config
    return functools.partial(balls.generate_sequence, cfg.sim_config())
