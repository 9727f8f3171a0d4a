"""Datasets: the build command and the input pipeline (SPEC D8).

Every dataset is a TFDS builder in the repository's top-level ``datasets/``
folder (``bouncing_balls``, ``curtain``, ``space_invaders``), writing
``array_record`` files that are read with ``tfds.data_source`` and grain; no
TensorFlow is needed. This module loads those builder files itself, so
``ensure_built("bouncing_balls/balls4mass32_tiny")`` works from any directory
after ``pip install -e .``.

Build from the command line (all local cores, progress bar)::

    python -m rnem_jax.data build bouncing_balls/balls4mass64_small \
        [--data_dir=DIR] [--num_workers=N]
    python -m rnem_jax.data info bouncing_balls/balls4mass64

Names are ``"<dataset>/<config>"``; configs are listed by ``info`` and in each
``datasets/<name>/README.md``. The data directory is ``--data_dir``, else
``$RNEM_DATA_DIR``, else ``~/tensorflow_datasets``.

Batches are time-major, as the EM rollout scans over time:
  features    float32 [T+1, B, H, W, 1] in {0, 1}
  groups      int32   [T+1, B, H, W, 1] (balls datasets only; 0 = background/overlap/occluded)
  collisions  float32 [T+1, B, H, W, 1] in {0, 1} (balls datasets only)
  actions     int32   [T+1, B]          (space_invaders only)
Per-ball fields (positions, velocities, masses, radii) have a variable ball
count and are read with :func:`load_source`, not batched.

Noise is NOT applied here: the model applies the bitflip noise on device inside
the jitted step (one decision for train, validation and test alike), so the
pipeline only delivers clean frames.

Storage: frames are ``tfds.features.Tensor(..., encoding='zlib')`` uint8.
Measured on 50 balls4mass64 sequences (3 videos of 51×64×64 bytes = 612 KiB raw):
zlib (TFDS default level) 3.3 KB + 3.3 KB + 0.4 KB, 1.4 ms to decode all three;
bit-packing + zlib would save another 27 % (5.2 KB, 0.4 ms) but needs a custom
feature class that every reader must import, so the standard encoding wins.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import importlib
import logging
import os
import shlex
import sys
import time
import types
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = os.environ.get("RNEM_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"
DATASET_NAMES = ("bouncing_balls", "curtain", "space_invaders")
_FILE_FORMAT = "array_record"
_VIDEO_KEYS = ("features", "groups", "collisions")
_BUILDER_CLASSES: dict[str, type] = {}
_PACKAGE = "rnem_jax_datasets"


class DatasetError(RuntimeError):
  """A dataset is missing, incomplete or corrupt. The message says what to do."""


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
  """What a dataset config contains (known from the builder, before building)."""

  name: str
  image_size: tuple[int, int]  # (H, W)
  num_frames: int  # T+1 stored frames per sequence
  splits: dict[str, int]  # split name -> number of sequences
  max_balls: int  # 0 for Atari
  num_actions: int  # 0 for balls datasets
  keys: tuple[str, ...]  # batch keys yielded by iterate_batches


def _parse_name(name: str) -> tuple[str, str]:
  dataset, _, config = name.partition("/")
  if dataset not in DATASET_NAMES or not config:
    raise ValueError(f"dataset name must be '<dataset>/<config>' with dataset in "
                     f"{DATASET_NAMES}, got {name!r}")
  return dataset, config


def builder_class(dataset: str) -> type:
  """The ``Builder`` class of ``datasets/<dataset>/<dataset>_dataset_builder.py``."""
  if dataset in _BUILDER_CLASSES:
    return _BUILDER_CLASSES[dataset]
  path = DATASETS_DIR / dataset / f"{dataset}_dataset_builder.py"
  if not path.is_file():
    raise DatasetError(f"builder file {path} not found: rnem_jax.data needs the repository "
                       "checkout (install with `pip install -e .` from the repository)")
  # Expose datasets/ as the namespace package `rnem_jax_datasets` (a name that
  # cannot clash with HuggingFace `datasets`); TFDS names each `Builder` after
  # its `<name>_dataset_builder` module and reads README/CITATIONS next to it.
  if _PACKAGE not in sys.modules:
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(DATASETS_DIR)]
    package.__file__ = str(DATASETS_DIR / "__init__.py")  # TFDS locates README via it
    sys.modules[_PACKAGE] = package
  module = importlib.import_module(f"{_PACKAGE}.{dataset}.{dataset}_dataset_builder")
  _BUILDER_CLASSES[dataset] = module.Builder
  return module.Builder


def get_builder(name: str,
                data_dir: Optional[str] = None,
                num_workers: Optional[int] = None,
                beam: bool = False):
  """The TFDS builder for ``name`` ("<dataset>/<config>") in ``data_dir``.

  ``beam=True``: the builder generates through Apache Beam (see :func:`build`).
  """
  dataset, config = _parse_name(name)
  cls = builder_class(dataset)
  known = [c.name for c in cls.BUILDER_CONFIGS]
  if config not in known:
    raise ValueError(f"unknown config {config!r} of {dataset}; known: {', '.join(known)}")
  data_dir = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
  try:
    return cls(config=config,
               data_dir=data_dir,
               file_format=_FILE_FORMAT,
               num_workers=num_workers,
               beam=beam)
  except Exception as e:  # e.g. an unreadable dataset_info.json
    if not (Path(data_dir) / dataset / config).exists():
      raise
    raise DatasetError(f"cannot open dataset {name} in {data_dir}: {e}. If a build was "
                       "interrupted, move that directory away and build again.") from e


def _check_complete(builder, name: str) -> None:
  """Raises DatasetError unless every split of the built dataset is fully readable."""
  path = Path(str(builder.data_path))
  advice = (f"Move or delete {path} yourself (it is never deleted automatically) and rerun "
            f"`python -m rnem_jax.data build {name}`.")
  if not (path / "dataset_info.json").is_file():
    raise DatasetError(f"{path} exists but has no dataset_info.json: an interrupted build "
                       f"or not a TFDS dataset. {advice}")
  expected = dict(builder.builder_config.split_sizes)
  found = {s: info.num_examples for s, info in builder.info.splits.items()}
  if found != expected:
    raise DatasetError(f"{path} holds splits {found}, expected {expected}. {advice}")
  for split, num in expected.items():
    for file in builder.info.splits[split].filepaths:
      if not Path(str(file)).is_file():
        raise DatasetError(f"{file} is missing. {advice}")
    try:
      source = builder.as_data_source(split=split)
      if len(source) != num:
        raise DatasetError(f"{name}:{split} has {len(source)} examples, expected {num}")
      source[0], source[num - 1]  # noqa: B018 — decoding both ends catches truncation
    except DatasetError:
      raise
    except Exception as e:
      raise DatasetError(f"{name}:{split} in {path} is unreadable ({type(e).__name__}: "
                         f"{e}). {advice}") from e


@contextlib.contextmanager
def _build_lock(data_dir: str, name: str):
  """Serialises builds of one config (e.g. several processes of a multi-host job)."""
  lock_dir = Path(data_dir) / ".rnem_locks"
  lock_dir.mkdir(parents=True, exist_ok=True)
  with open(lock_dir / (name.replace("/", ".") + ".lock"), "w") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logger.warning("Another process is building %s; waiting for it.", name)
      fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def build(name: str,
          data_dir: Optional[str] = None,
          num_workers: Optional[int] = None,
          beam_runner: Optional[str] = None,
          beam_options: str = "") -> None:
  """Generates ``name`` into ``data_dir`` unless it is already there (then checks it).

  With ``beam_runner`` (e.g. ``"DirectRunner"``, ``"DataflowRunner"``) the examples
  are generated by an Apache Beam pipeline (``pip install apache-beam``) with the
  pipeline flags ``beam_options`` (e.g. ``"--direct_num_workers=8"``); the bytes
  are the same as a local build's.
  """
  data_dir = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
  with _build_lock(data_dir, name):
    builder = get_builder(name, data_dir, num_workers, beam=beam_runner is not None)
    if Path(str(builder.data_path)).exists():
      _check_complete(builder, name)
      return
    sizes = dict(builder.builder_config.split_sizes)
    logger.warning(
        "Building dataset %s %s into %s (all splits written to a temporary "
        "directory, renamed when complete).", name, sizes, builder.data_path)
    start = time.time()
    download_config = None
    if beam_runner is not None:
      from apache_beam.options.pipeline_options import PipelineOptions

      download_config = tfds.download.DownloadConfig(
          beam_runner=beam_runner, beam_options=PipelineOptions(shlex.split(beam_options)))
    builder.download_and_prepare(file_format=_FILE_FORMAT, download_config=download_config)
    _check_complete(get_builder(name, data_dir), name)
    logger.warning("Built %s in %.1f s.", name, time.time() - start)


def ensure_built(name: str, data_dir: Optional[str] = None) -> None:
  """Builds ``name`` if it is missing; no-op if it is there and complete.

    Raises:
      ValueError: unknown dataset or config.
      DatasetError: the dataset directory exists but is incomplete or corrupt
        (nothing is deleted; the message says what to do).
    """
  builder = get_builder(name, data_dir)
  if Path(str(builder.data_path)).exists():
    _check_complete(builder, name)
    return
  build(name, data_dir)


def load_source(name: str, split: str, data_dir: Optional[str] = None):
  """Random-access source (``tfds.data_source``) of dict examples of a built dataset.

    Each example holds the stored fields with their stored shapes (see
    ``rnem_jax.sim.balls`` / ``rnem_jax.sim.atari``), e.g. ``features`` uint8 [T+1, H, W, 1].
    """
  builder = get_builder(name, data_dir)
  if not Path(str(builder.data_path)).exists():
    raise DatasetError(f"dataset {name} is not built in {builder.data_dir}: run "
                       f"`python -m rnem_jax.data build {name} --data_dir=...` or call "
                       "rnem_jax.data.ensure_built first")
  splits = [s for s, _ in builder.builder_config.split_sizes]
  if split not in splits:
    raise ValueError(f"{name} has splits {splits}, not {split!r}")
  if not (Path(str(builder.data_path)) / "dataset_info.json").is_file():
    _check_complete(builder, name)
  try:
    return builder.as_data_source(split=split)
  except Exception as e:
    raise DatasetError(f"cannot read {name}:{split} from {builder.data_path} "
                       f"({type(e).__name__}: {e})") from e


def dataset_info(name: str, data_dir: Optional[str] = None) -> DatasetSummary:
  """Image size, frames, split sizes, max balls and action count of a config."""
  cfg = get_builder(name, data_dir).builder_config
  if name.startswith("space_invaders/"):
    from rnem_jax.sim import atari

    return DatasetSummary(name, (atari.SCREEN_SIZE,) * 2, cfg.num_frames, dict(cfg.split_sizes), 0,
                          atari.NUM_ACTIONS, ("features", "actions"))
  max_balls = cfg.max_balls
  return DatasetSummary(name, (cfg.image_size,) * 2, cfg.num_frames, dict(cfg.split_sizes),
                        max_balls, 0, _VIDEO_KEYS)


def _crop(example: dict[str, np.ndarray], keys: tuple[str, ...],
          num_frames: int) -> dict[str, np.ndarray]:
  return {k: example[k][:num_frames] for k in keys}


def _time_major(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """[B, T+1, ...] -> [T+1, B, ...] with the dtypes documented in the module docstring."""
  dtypes = {
      "features": np.float32,
      "groups": np.int32,
      "collisions": np.float32,
      "actions": np.int32
  }
  return {k: np.ascontiguousarray(np.swapaxes(v, 0, 1), dtype=dtypes[k]) for k, v in batch.items()}


def iterate_batches(name: str,
                    split: str,
                    batch_size: int,
                    *,
                    seed: int,
                    num_frames: Optional[int] = None,
                    shuffle: bool = True,
                    num_epochs: Optional[int] = None,
                    drop_remainder: bool = True,
                    shard_index: Optional[int] = None,
                    shard_count: Optional[int] = None,
                    data_dir: Optional[str] = None,
                    num_threads: int = 4,
                    start_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Time-major batches of a built split (see the module docstring for keys/shapes).

    Args:
      name, split: e.g. ``"bouncing_balls/balls4mass64"``, ``"train"``.
      batch_size: sequences per batch (per process).
      seed: shuffle seed; the order is a pure function of (seed, shard, epoch).
      num_frames: keep the first ``num_frames`` frames of each sequence (T+1);
        default all stored frames.
      shuffle: reshuffle each epoch (a different permutation per epoch).
      num_epochs: passes over the data; ``None`` = forever.
      drop_remainder: drop a last partial batch. For evaluation use
        ``shuffle=False, num_epochs=1, drop_remainder=False``: every sequence
        once, in order, the last batch possibly smaller.
      shard_index, shard_count: this process reads examples
        ``shard_index::shard_count`` (default ``jax.process_index()`` /
        ``jax.process_count()``).
      num_threads: decoding threads (zlib releases the GIL).
      start_batch: skip the first ``start_batch`` batches of this order without
        reading them (resuming a run at step ``start_batch``).
    """
  import grain

  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if (shard_index is None) != (shard_count is None):
    raise ValueError("give both shard_index and shard_count, or neither")
  if shard_count is None:
    import jax

    shard_index, shard_count = jax.process_index(), jax.process_count()
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
  info = dataset_info(name, data_dir)
  num_frames = info.num_frames if num_frames is None else num_frames
  if not 2 <= num_frames <= info.num_frames:
    raise ValueError(f"num_frames must be in [2, {info.num_frames}] for {name}, "
                     f"got {num_frames}")
  source = load_source(name, split, data_dir)
  ds = grain.MapDataset.source(source)[shard_index::shard_count]
  if len(ds) == 0 or (drop_remainder and num_epochs is not None and
                      len(ds) * num_epochs < batch_size):
    raise ValueError(f"{name}:{split} shard {shard_index}/{shard_count} has {len(ds)} "
                     f"sequences: too few for a batch of {batch_size}")
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  keys = info.keys
  ds = ds.map(lambda ex: _crop(ex, keys, num_frames))
  ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(_time_major)
  if start_batch:
    ds = ds[start_batch:]
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size)
  yield from ds.to_iter_dataset(options)


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m rnem_jax.data",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  build_cmd = sub.add_parser("build", help="generate a dataset (no-op if present)")
  build_cmd.add_argument("name", help="<dataset>/<config>, e.g. bouncing_balls/balls4mass64")
  build_cmd.add_argument("--data_dir", default=None, help=f"default {DEFAULT_DATA_DIR}")
  build_cmd.add_argument("--num_workers",
                         type=int,
                         default=None,
                         help="generation processes (default: all cores)")
  build_cmd.add_argument("--beam_runner",
                         default=None,
                         help="generate with Apache Beam on this runner (e.g. DirectRunner)")
  build_cmd.add_argument("--beam_options", default="", help="Beam pipeline flags, one string")
  info_cmd = sub.add_parser("info", help="print a config's sizes")
  info_cmd.add_argument("name")
  info_cmd.add_argument("--data_dir", default=None)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  try:
    if args.command == "build":
      build(args.name, args.data_dir, args.num_workers, args.beam_runner, args.beam_options)
      print(f"{args.name} is ready in {get_builder(args.name, args.data_dir).data_path}")
    else:
      print(dataset_info(args.name, args.data_dir))
  except (ValueError, DatasetError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  main()
