"""space_invaders: binarised Atari Space Invaders frames and actions (R-NEM §4.2; SPEC D8).

Thin TFDS builder; the emulator rollouts live in ``rnem_jax.sim.atari``. Unlike
the paper (frames of a pre-trained DQN), the default policy is a seeded
scripted one (see README.md). Build with
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


class Builder(tfds.core.GeneratorBasedBuilder):
    """84x84 binary frames (frame skip 4) with the action taken at each frame."""

    VERSION = tfds.core.Version("1.0.0")
    # Where TFDS finds this file, README.md and checksums.tsv; set explicitly because
    # TFDS's own lookup needs the `importlib_resources` backport (not a dependency).
    code_path = epath.Path(__file__)
    pkg_dir_path = code_path.parent
    RELEASE_NOTES = {"1.0.0": "First release: ale-py, scripted policy."}
    BUILDER_CONFIGS = [
        AtariBuilderConfig(name="atari", description="Paper-like sizes.", split_sizes=(
            ("train", 50_000), ("validation", 10_000), ("test", 10_000))),
        AtariBuilderConfig(name="atari_small", description="Small, for CPU work.", split_sizes=(
            ("train", 2_000), ("validation", 500), ("test", 500))),
        AtariBuilderConfig(name="atari_tiny", description="For tests.", max_warmup_steps=50,
                           split_sizes=(("train", 8), ("validation", 4), ("test", 4))),
    ]

    def __init__(self, *, num_workers: int | None = None, **kwargs):
        """``num_workers``: generation processes (default: all local cores)."""
        self._num_workers = num_workers
        super().__init__(**kwargs)

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

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager
        return {split: self._generate_examples(split, n) for split, n in
                self.builder_config.split_sizes}

    def _generate_examples(self, split: str, num_examples: int):
        cfg = self.builder_config
        yield from builder_utils.generate_split(
            functools.partial(atari.generate_sequence, num_frames=cfg.num_frames,
                              max_warmup_steps=cfg.max_warmup_steps),
            num_examples=num_examples, split=split, seed=cfg.seed,
            num_workers=self._num_workers, desc=cfg.name)
