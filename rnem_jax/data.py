"""Datasets: the build command and the input pipeline (docs/design.md#datasets).

Every dataset is a TFDS builder in the repository's top-level ``datasets/``
folder (``bouncing_balls``, ``curtain``, ``space_invaders``), writing
``array_record`` files that are read with ``tfds.data_source`` and grain; no
TensorFlow is needed. This module loads those builder files itself, so
``ensure_built("bouncing_balls/balls4mass32_tiny")`` works from any directory
after ``pip install -e .``.

Build from the command line (the cores this process may use, progress bar)::

    python -m rnem_jax.data build bouncing_balls/balls4mass64_small \
        [--data_dir=DIR] [--num_workers=N]
    python -m rnem_jax.data info bouncing_balls/balls4mass64

Names are ``"<dataset>/<config>"``; configs are listed by ``info`` and in each
``datasets/<name>/README.md``. The data directory is ``--data_dir``, else
``$RNEM_DATA_DIR``, else ``~/tensorflow_datasets``.

Faults: Ctrl-C or SIGTERM stops a build at once (workers terminated, TFDS's temporary
folder removed; the command prints one line and exits 130 / 143), and generation workers die
with their parent even if it is SIGKILLed. Temporary folders that a killed build left behind
are removed by the next build of that config (under its build lock). An unwritable or full
data directory, and a damaged ``array_record`` file met while reading, raise
:class:`DatasetError` naming the directory or file and the fix.

Batches are time-major, as the EM rollout scans over time:
  features    float32 [T+1, B, H, W, 1] in {0, 1}
  groups      int32   [T+1, B, H, W, 1] (balls datasets only; 0 = background/overlap/occluded)
  collisions  float32 [T+1, B, H, W, 1] in {0, 1} (balls datasets only)
  actions     int32   [T+1, B]          (space_invaders only)
Per-ball fields (positions, velocities, masses, radii) have a variable ball
count and are read with :func:`load_source`, not batched. ``iterate_batches(...,
keys=("features",))`` decodes only the fields asked for (a training step needs
only ``features``, plus ``actions`` for Atari).

Noise is NOT applied here: the model applies the bitflip noise on device inside
the jitted step (one decision for train, validation and test alike), so the
pipeline only delivers clean frames.

Storage: frames are ``tfds.features.Tensor(..., encoding='zlib')`` uint8. Bit-packing
before zlib would be somewhat smaller but needs a custom feature class that every reader
must import, so the standard encoding wins; decoding only the fields a step reads is
what saves time (docs/design.md#measured-choices).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import errno
import fcntl
import importlib
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import time
import types
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from google.protobuf import message as protobuf_message
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
  """A dataset is missing, incomplete, corrupt or cannot be built. The message says what to do."""


class BuildInterrupted(KeyboardInterrupt):
  """A build stopped by SIGINT or SIGTERM (``python -m rnem_jax.data build``)."""

  def __init__(self, signum: int):
    self.signum = signum
    super().__init__(signal.Signals(signum).name)


# Why writing to the data directory failed, by errno (the rest are not the directory's fault).
_WRITE_ERRORS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "not a directory",
    errno.EEXIST: "not a directory",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}
_FULL_DISK_TEXTS = ("No space left on device", "Disk quota exceeded")  # C++ writers' messages


def _write_error(e: BaseException, data_dir: str) -> Optional[DatasetError]:
  """The DatasetError for ``e`` if it says that ``data_dir`` cannot be written, else None."""
  reason = _WRITE_ERRORS.get(e.errno) if isinstance(e, OSError) else None
  if reason is None:
    reason = next((t.lower() for t in _FULL_DISK_TEXTS if t in str(e)), None)
  if reason is None:
    return None
  where = "set --config.data_dir (python -m rnem_jax.data: --data_dir) or $RNEM_DATA_DIR to"
  if reason in ("no space left on device", "disk quota exceeded"):
    return DatasetError(f"{reason} in {data_dir} while building: free space there, or {where} "
                        "a directory with room")
  if reason == "not a directory":
    path = Path(data_dir)
    blocker = next((q for q in (path, *path.parents) if q.exists() and not q.is_dir()), None)
    reason = f"{blocker} is a file, not a directory" if blocker else reason
  return DatasetError(f"cannot write datasets to {data_dir} ({reason}): {where} a writable "
                      "directory")


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


# TFDS (4.9.x, file_utils.incomplete_dir) generates a dataset into
# <data_dir>/<dataset>/<config>/incomplete.<6 of A-Z0-9>_<version>/ and renames it to the version
# folder when complete; a killed build leaves it behind.
_TEMP_DIR_RE = r"incomplete\.[A-Z0-9]{{6}}_{version}"


def _stale_build_dirs(builder) -> list[Path]:
  """The temporary folders of builds of ``builder``'s config and version (none if none ran)."""
  path = Path(str(builder.data_path))
  pattern = re.compile(_TEMP_DIR_RE.format(version=re.escape(path.name)))
  if not path.parent.is_dir():
    return []
  return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir())


def _remove_stale_build_dirs(builder, name: str) -> None:
  """Removes what killed builds of this config left. Only while holding ``_build_lock``:
  then no build of this config runs, so every temporary folder of it is stale."""
  stale = _stale_build_dirs(builder)
  for p in stale:
    shutil.rmtree(p)
  if stale:
    logger.warning("Removed %d temporary folder(s) left by an interrupted build of %s: %s",
                   len(stale), name, ", ".join(map(str, stale)))


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

  ``num_workers``: generation processes; default ``$RNEM_BUILD_WORKERS`` if set, else
  the cores this process may use (``rnem_jax.sim.builder_utils.default_num_workers``).
  With ``beam_runner`` (e.g. ``"DirectRunner"``, ``"DataflowRunner"``) the examples
  are generated by an Apache Beam pipeline (``pip install apache-beam``) with the
  pipeline flags ``beam_options`` (e.g. ``"--direct_num_workers=8"``); the bytes
  are the same as a local build's.
  """
  data_dir = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
  if num_workers is not None and num_workers < 0:
    raise ValueError(f"num_workers must be >= 1 (or 0/None for the default), got {num_workers}")
  from rnem_jax.sim import builder_utils

  if not num_workers and beam_runner is None:
    num_workers = builder_utils.default_num_workers()  # a bad $RNEM_BUILD_WORKERS fails here
  try:
    builder = get_builder(name, data_dir, num_workers, beam=beam_runner is not None)
    if Path(str(builder.data_path)).exists():  # complete once there (TFDS renames it last)
      _check_complete(builder, name)  # no lock: a read-only data_dir of built datasets works
      return
    _build_locked(builder, name, data_dir, num_workers, beam_runner, beam_options)
  except BaseException as e:
    builder_utils.stop_workers()  # Ctrl-C, SIGTERM, a full disk: no worker outlives the build
    error = None if isinstance(e, DatasetError) else _write_error(e, data_dir)
    if error is None:
      raise
    raise error from e


def _build_locked(builder, name: str, data_dir: str, num_workers: Optional[int],
                  beam_runner: Optional[str], beam_options: str) -> None:
  """The body of :func:`build` once the dataset was found missing."""
  with _build_lock(data_dir, name):
    _remove_stale_build_dirs(builder, name)
    if Path(str(builder.data_path)).exists():  # another process built it while we waited
      _check_complete(builder, name)
      return
    sizes = dict(builder.builder_config.split_sizes)
    logger.warning(
        "Building dataset %s %s into %s with %s (all splits written to a temporary "
        "directory, renamed when complete).", name, sizes, builder.data_path,
        f"Beam runner {beam_runner}" if beam_runner else f"{num_workers} worker processes")
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
    A record that cannot be read (a damaged file) raises DatasetError naming the file.
    """
  source, builder = _open_source(name, split, data_dir)
  return _CheckedSource(source, _Shards(builder, name, split))


def _open_source(name: str, split: str, data_dir: Optional[str], **kwargs):
  """(``builder.as_data_source(split, **kwargs)``, builder) after the checks of load_source."""
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
    return builder.as_data_source(split=split, **kwargs), builder
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
  return DatasetSummary(name, (cfg.sim.image_size,) * 2, cfg.sim.num_frames,
                        dict(cfg.split_sizes), cfg.sim.max_balls, 0, _VIDEO_KEYS)


class _Shards:
  """Names the file of a record of a split, for the error of a record that cannot be read."""

  def __init__(self, builder, name: str, split: str):
    info = builder.info.splits[split]
    self.name, self.split, self.path = name, split, Path(str(builder.data_path))
    self.files = [str(f) for f in info.filepaths]
    lengths = [int(n) for n in info.shard_lengths]
    self.ends = list(np.cumsum(lengths)) if len(lengths) == len(self.files) else []

  def error(self, index: Any, e: Exception) -> DatasetError:
    where = ", ".join(self.files)  # every file of the split unless the record's is known
    if isinstance(index, (int, np.integer)) and self.ends and 0 <= index < self.ends[-1]:
      where = self.files[bisect.bisect_right(self.ends, int(index))]
    cause = " ".join(f"{type(e).__name__}: {e}".split())
    return DatasetError(f"{self.name}:{self.split} record {index} cannot be read from {where} "
                        f"({cause}): the file is damaged; delete {self.path} and build again "
                        f"(python -m rnem_jax.data build {self.name} "
                        f"--data_dir={self.path.parents[2]})")


# What reading or decoding a damaged record raises (array_record/Riegeli: RuntimeError; the
# tf.train.Example parser: protobuf's DecodeError; a zlib-encoded field: zlib.error).
_READ_ERRORS = (RuntimeError, OSError, ValueError, zlib.error, protobuf_message.DecodeError)


class _CheckedSource:
  """A ``tfds.data_source`` whose unreadable records raise DatasetError naming their file."""

  def __init__(self, source, shards: _Shards):
    self._source, self._shards = source, shards

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    try:
      return self._source[index]
    except (IndexError, DatasetError):
      raise
    except _READ_ERRORS as e:
      raise self._shards.error(index, e) from e

  def __getitems__(self, indices):
    try:
      return self._source.__getitems__(indices)
    except (IndexError, DatasetError):
      raise
    except _READ_ERRORS as e:
      raise self._shards.error(list(indices), e) from e

  def __iter__(self):
    for i in range(len(self)):
      yield self[i]

  def __getattr__(self, name: str):  # dataset_info, split, ... of the TFDS source
    if name.startswith("_"):  # e.g. while unpickling, before _source is set
      raise AttributeError(name)
    return getattr(self._source, name)

  def __repr__(self) -> str:
    return repr(self._source)


class _FieldsSource:
  """Random-access examples of a split with only some fields parsed and decoded.

  Reads the raw records and deserializes them with a ``FeaturesDict`` of just
  ``keys``: TFDS's NumPy parser skips the other fields of each ``tf.train.Example``,
  so they are neither converted nor zlib-decompressed (``SkipDecoding`` decoders
  would skip only the decompression, not the conversion of every field).
  """

  def __init__(self, raw, features: tfds.features.FeaturesDict, keys: tuple[str, ...],
               shards: _Shards):
    self._raw = raw  # as_data_source(deserialize_method=RAW_BYTES)
    self._features = tfds.features.FeaturesDict({k: features[k] for k in keys})
    self._shards = shards

  def __len__(self) -> int:
    return len(self._raw)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    # A DatasetError raised here reaches the caller of iterate_batches as it is: grain re-raises
    # a decoding thread's exception in the consuming thread.
    try:
      return self._features.deserialize_example_np(self._raw[index])
    except (IndexError, DatasetError):
      raise
    except _READ_ERRORS as e:
      raise self._shards.error(index, e) from e


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
                    start_batch: int = 0,
                    keys: Optional[Sequence[str]] = None) -> Iterator[dict[str, np.ndarray]]:
  """This process's time-major batches ``{key: [T+1, batch_size, ...]}`` of a built split.

    Keys, dtypes and shapes are those of the module docstring.

    There is one global order, whatever the number of processes: the split
    (shuffled with ``seed``, a new permutation each epoch, if ``shuffle``),
    repeated ``num_epochs`` times and cut into global batches of
    ``batch_size * shard_count`` sequences (batches may straddle an epoch
    boundary). Process ``shard_index`` yields the contiguous slice
    ``[shard_index * batch_size:(shard_index + 1) * batch_size]`` of each global
    batch, and reads and decodes only those sequences; concatenating the
    processes' batch j on the batch axis (in shard order) gives the batch j of
    one process with ``batch_size * shard_count``. With ``shard_count=1`` this is
    the order of earlier versions.

    Args:
      name, split: e.g. ``"bouncing_balls/balls4mass64"``, ``"train"``.
      batch_size: sequences per batch of this process (B).
      seed: shuffle seed; the order is a pure function of (seed, epoch).
      num_frames: keep the first ``num_frames`` frames of each sequence (T+1);
        default all stored frames.
      shuffle: reshuffle each epoch (a different permutation per epoch).
      num_epochs: passes over the data; ``None`` = forever.
      drop_remainder: drop a last partial global batch, so every process yields
        the same number of full batches. Without it the last global batch may
        be partial, and a process whose slice of it is empty yields one batch
        fewer. For evaluation use ``shuffle=False, num_epochs=1,
        drop_remainder=False, shard_index=0, shard_count=1``: every sequence
        once, in order, on every process, the last batch possibly smaller.
      shard_index, shard_count: this process and the number of processes
        sharing each global batch (default ``jax.process_index()`` /
        ``jax.process_count()``).
      num_threads: decoding threads (zlib releases the GIL), each decoding whole
        batches; at most ``max(2, num_threads)`` batches are read ahead.
      start_batch: skip the first ``start_batch`` global batches of this order
        without reading them (resuming a run at step ``start_batch``).
      keys: the fields to decode and yield, a subset of
        ``dataset_info(name).keys``; default all of them. The other stored
        fields of each record are not decoded.
    """
  import grain

  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
  if start_batch < 0:
    raise ValueError(f"start_batch must be >= 0, got {start_batch}")
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
  keys = _check_keys(info, keys)
  raw, builder = _open_source(name,
                              split,
                              data_dir,
                              deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  source = _FieldsSource(raw, builder.info.features, keys, _Shards(builder, name, split))
  global_batch = batch_size * shard_count
  if len(source) == 0 or (drop_remainder and num_epochs is not None and
                          len(source) * num_epochs < global_batch):
    raise ValueError(f"{name}:{split} has {len(source)} sequences: too few for a global batch "
                     f"of {global_batch} ({shard_count} processes x {batch_size})")
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  # Lazy: only the elements of the batches this process yields are ever read.
  ds = ds.map(lambda ex: _crop(ex, keys, num_frames))
  # Mini-batches of B; mini-batch i is slice i % S of global batch i // S.
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  stop = len(ds) - len(ds) % shard_count if drop_remainder else len(ds)
  ds = ds[start_batch * shard_count:stop][shard_index::shard_count].map(_time_major)
  # The buffer counts batches, each decoded by one thread: enough to keep the threads busy
  # (2 * batch_size batches would be gigabytes of read-ahead for 64x64 batches of 64).
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2, num_threads))
  yield from ds.to_iter_dataset(options)


def _check_keys(info: DatasetSummary, keys: Optional[Sequence[str]]) -> tuple[str, ...]:
  """``keys`` as a duplicate-free tuple of batch keys of ``info`` (default: all)."""
  if keys is None:
    return info.keys
  if isinstance(keys, str):
    raise ValueError(f"keys must be a sequence of key names, e.g. ({keys!r},), got {keys!r}")
  keys = tuple(dict.fromkeys(keys))
  unknown = [k for k in keys if k not in info.keys]
  if unknown or not keys:
    raise ValueError(f"keys must be a non-empty subset of {info.name}'s keys "
                     f"{', '.join(info.keys)}; got {', '.join(map(repr, keys)) or 'none'}")
  return keys


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
                         help="generation processes (default: $RNEM_BUILD_WORKERS if set, "
                         "else the cores this process may use)")
  build_cmd.add_argument("--beam_runner",
                         default=None,
                         help="generate with Apache Beam on this runner (e.g. DirectRunner)")
  build_cmd.add_argument("--beam_options", default="", help="Beam pipeline flags, one string")
  info_cmd = sub.add_parser("info", help="print a config's sizes")
  info_cmd.add_argument("name")
  info_cmd.add_argument("--data_dir", default=None)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  handlers = _stop_on_signals() if args.command == "build" else {}
  try:
    if args.command == "build":
      build(args.name, args.data_dir, args.num_workers, args.beam_runner, args.beam_options)
      print(f"{args.name} is ready in {get_builder(args.name, args.data_dir).data_path}")
    else:
      print(dataset_info(args.name, args.data_dir))
  except KeyboardInterrupt as e:  # BuildInterrupted (SIGINT/SIGTERM) or a plain Ctrl-C
    if args.command != "build":
      raise
    signum = e.signum if isinstance(e, BuildInterrupted) else signal.SIGINT
    print(_interrupted_message(args.name, args.data_dir, signum), file=sys.stderr, flush=True)
    sys.exit(128 + signum)
  except (ValueError, DatasetError) as e:
    sys.exit(f"error: {e}")
  finally:
    for signum, handler in handlers.items():
      signal.signal(signum, handler)


def _stop_on_signals() -> dict:
  """Makes SIGINT and SIGTERM raise BuildInterrupted (a second one exits at once).

  Returns the previous handlers. Outside the main thread (no handlers there) nothing changes.
  """

  def exit_now(signum, frame):
    del frame
    os._exit(128 + signum)  # workers die with this process (builder_utils)

  def interrupt(signum, frame):
    del frame
    for s in (signal.SIGINT, signal.SIGTERM):
      signal.signal(s, exit_now)  # a second signal during the clean-up ends the process
    raise BuildInterrupted(signum)

  try:
    return {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
  except ValueError:  # not the main thread
    return {}


def _interrupted_message(name: str, data_dir: Optional[str], signum: int) -> str:
  what = f"interrupted ({signal.Signals(signum).name}): build of {name} stopped"
  with contextlib.suppress(Exception):
    if Path(str(get_builder(name, data_dir).data_path)).exists():
      return f"{what} after it was written; the same command checks it"
  return f"{what}; nothing was kept, the same command starts it again"


if __name__ == "__main__":
  main()
