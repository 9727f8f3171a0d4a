"""space_invaders: binarised Atari Space Invaders frames and actions (R-NEM appendix A.2).

Thin TFDS builder; the emulator rollouts live in ``rnem_jax.sim.atari``. Unlike
the paper (frames of a pre-trained DQN), the default policy is a seeded
scripted one (see README.md and docs/design.md#space-invaders). Build with
``python -m rnem_jax.data build space_invaders/<config>``.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from rnem_jax.sim import atari, builder_utils


@dataclasses.dataclass(eq=False)
class AtariBuilderConfig(tfds.core.BuilderConfig):
  """Sequence length and split sizes of one config."""

  num_frames: int = 26
  max_warmup_steps: int = 300
  split_sizes: tuple[tuple[str, int], ...] = ()
  seed: int = 0


class Builder(builder_utils.SimulatedBuilder):
  """84x84 binary frames (frame skip 4) with the action taken at each frame."""

  VERSION = tfds.core.Version("1.0.0")
  # Where TFDS finds this file, README.md and checksums.tsv; set explicitly because
  # TFDS's own lookup needs the `importlib_resources` backport (not a dependency).
  code_path = epath.Path(__file__)
  pkg_dir_path = code_path.parent
  RELEASE_NOTES = {"1.0.0": "First release: ale-py, scripted policy."}
  BUILDER_CONFIGS = [
      AtariBuilderConfig(name="atari",
                         description="Paper-like sizes.",
                         split_sizes=(("train", 50_000), ("validation", 10_000), ("test", 10_000))),
      AtariBuilderConfig(name="atari_small",
                         description="Small, for CPU work.",
                         split_sizes=(("train", 2_000), ("validation", 500), ("test", 500))),
      AtariBuilderConfig(name="atari_tiny",
                         description="For tests.",
                         max_warmup_steps=50,
                         split_sizes=(("train", 8), ("validation", 4), ("test", 4))),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    t = self.builder_config.num_frames
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "features": builder_utils.binary_video(t, atari.SCREEN_SIZE, atari.SCREEN_SIZE),
            "actions": tfds.features.Tensor(shape=(t,), dtype=np.int32),
        }),
        disable_shuffling=True,
        homepage="https://ale.farama.org/environments/space_invaders/",
    )

  def example_fn(self):
    cfg = self.builder_config
    return functools.partial(atari.generate_sequence,
                             num_frames=cfg.num_frames,
                             max_warmup_steps=cfg.max_warmup_steps)
