"""Shared plumbing for the thin TFDS builders in ``datasets/``.

Generation of a split fans the per-example simulator out over local cores
(a bounded process pool: ``fork``, or ``spawn`` when the parent already runs
JAX threads) and yields examples in index order, with a tqdm progress bar. Example i
of a split is a pure function of (config seed, split, i), so the bytes written
do not depend on the number of workers.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import multiprocessing
import os
import sys
from typing import Any, Callable, Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds
import tqdm

SPLIT_INDEX = {"train": 0, "validation": 1, "test": 2}
# Below this many examples the pool start-up costs more than it saves.
_MIN_EXAMPLES_FOR_POOL = 64


def _call_with_seeds(fn: Callable[[np.random.SeedSequence], dict],
                     entropies: list[tuple[int, ...]]) -> list[dict]:
    return [fn(np.random.SeedSequence(list(e))) for e in entropies]


def _mp_context():
    # fork is fast and needs no `if __name__ == "__main__"` guard in the caller's
    # script, but forking a process that runs JAX threads is unsafe: use spawn then.
    return multiprocessing.get_context("spawn" if "jax" in sys.modules else "fork")


def generate_split(fn: Callable[[np.random.SeedSequence], dict[str, Any]], *, num_examples: int,
                   split: str, seed: int, num_workers: Optional[int] = None,
                   desc: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(i, fn(SeedSequence([seed, split_index, i])))`` for i < num_examples, in order.

    ``fn`` must be picklable (a module-level function or a functools.partial of one).
    ``num_workers`` defaults to all local cores. At most a few chunks per worker
    are in flight, so memory stays bounded however slowly the writer consumes.
    """
    split_index = SPLIT_INDEX[split]
    entropies = [(seed, split_index, i) for i in range(num_examples)]
    num_workers = num_workers or os.cpu_count() or 1
    bar = tqdm.tqdm(total=num_examples, desc=f"{desc} {split}".strip(), unit="seq",
                    disable=num_examples < _MIN_EXAMPLES_FOR_POOL)
    with bar:
        if num_workers == 1 or num_examples < _MIN_EXAMPLES_FOR_POOL:
            for i, example in enumerate(_call_with_seeds(fn, [e])[0] for e in entropies):
                yield i, example
                bar.update()
            return
        chunk = max(1, min(32, num_examples // (8 * num_workers)))
        chunks = [entropies[i:i + chunk] for i in range(0, num_examples, chunk)]
        i = 0
        with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=_mp_context()) as pool:
            pending = collections.deque()
            for c in chunks:
                pending.append(pool.submit(_call_with_seeds, fn, c))
                while len(pending) >= 4 * num_workers or (c is chunks[-1] and pending):
                    try:
                        examples = pending.popleft().result()
                    except concurrent.futures.process.BrokenProcessPool as e:
                        raise RuntimeError(
                            "a dataset generation worker died. If you build from a script "
                            "that imports JAX, workers are spawned and the script needs an "
                            "`if __name__ == '__main__':` guard; or build first with "
                            "`python -m rnem_jax.data build NAME`.") from e
                    for example in examples:
                        yield i, example
                        i += 1
                        bar.update()


def binary_video(num_frames: int, height: int, width: int) -> tfds.features.Tensor:
    """(T+1, H, W, 1) uint8 video stored zlib-compressed (see rnem_jax/data.py for numbers)."""
    return tfds.features.Tensor(shape=(num_frames, height, width, 1), dtype=np.uint8,
                                encoding="zlib")


def ball_features(num_frames: int, image_size: int, *, curtain: bool = False
                  ) -> tfds.features.FeaturesDict:
    """Feature spec of bouncing-balls examples (rnem_jax.sim.balls docstring)."""
    video = functools.partial(binary_video, num_frames, image_size, image_size)
    spec = {
        "features": video(),
        "groups": video(),
        "collisions": video(),
        "positions": tfds.features.Tensor(shape=(num_frames, None, 2), dtype=np.float32),
        "velocities": tfds.features.Tensor(shape=(num_frames, None, 2), dtype=np.float32),
        "masses": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        "radii": tfds.features.Tensor(shape=(None,), dtype=np.float32),
    }
    if curtain:
        spec["curtain"] = tfds.features.Tensor(shape=(4,), dtype=np.float32)
    return tfds.features.FeaturesDict(spec)


class SimulatedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the ``datasets/`` builders: every split is generated by :func:`generate_split`.

    Subclasses set the TFDS class attributes (VERSION, BUILDER_CONFIGS, code_path, ...),
    ``_info`` and :meth:`example_fn`; their configs carry ``split_sizes`` and ``seed``.
    """

    def __init__(self, *, num_workers: Optional[int] = None, **kwargs):
        """``num_workers``: generation processes (default: all local cores)."""
        self._num_workers = num_workers
        super().__init__(**kwargs)

    def example_fn(self) -> Callable[[np.random.SeedSequence], dict[str, Any]]:
        """The picklable per-example generator of the current builder config."""
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager
        return {split: self._generate_examples(split, n) for split, n in
                self.builder_config.split_sizes}

    def _generate_examples(self, split: str, num_examples: int):
        cfg = self.builder_config
        yield from generate_split(self.example_fn(), num_examples=num_examples, split=split,
                                  seed=cfg.seed, num_workers=self._num_workers, desc=cfg.name)
