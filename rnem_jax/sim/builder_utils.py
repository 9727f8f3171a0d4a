"""Shared plumbing for the thin TFDS builders in ``datasets/``.

Generation of a split fans the per-example simulator out over the cores this
process may use (:func:`default_num_workers`) in a bounded process pool (``fork``,
or ``spawn`` when the parent already runs JAX threads) and yields examples in
index order, with a tqdm progress bar. Example i of a split is a pure function of
(config seed, split, i), so the bytes written do not depend on the number of
workers.

Workers never outlive a build: an exception in the consumer (Ctrl-C, SIGTERM turned into an
exception, a full disk) or closing the generator early cancels the pending chunks and
terminates the workers at once (:func:`stop_workers` does it for every live pool), and on
Linux each worker is killed by the kernel when its parent dies, even by SIGKILL
(``PR_SET_PDEATHSIG``; elsewhere a thread in the worker polls the parent). Workers ignore
SIGINT: a terminal's Ctrl-C reaches the whole process group, and the parent stops them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from rnem_jax.sim import balls

SPLIT_INDEX = {"train": 0, "validation": 1, "test": 2}
# Below this many examples the pool start-up costs more than it saves.
_MIN_EXAMPLES_FOR_POOL = 64
WORKERS_ENV = "RNEM_BUILD_WORKERS"


def default_num_workers() -> int:
  """Generation processes when none are given: ``$RNEM_BUILD_WORKERS`` if set (and not
  empty), else the cores this process may run on (its CPU affinity, which a SLURM job
  or a container may restrict), else ``os.cpu_count()``.

  Raises:
    ValueError: ``$RNEM_BUILD_WORKERS`` is set but not a positive integer.
  """
  value = os.environ.get(WORKERS_ENV, "").strip()
  if value:
    try:
      workers = int(value)
    except ValueError:
      workers = 0
    if workers < 1:
      raise ValueError(f"{WORKERS_ENV} must be a positive integer, got {value!r}")
    return workers
  try:
    return len(os.sched_getaffinity(0)) or 1
  except (AttributeError, OSError):  # not available on this platform (e.g. macOS)
    return os.cpu_count() or 1


# Pools of generate_split that are running (stop_workers terminates them).
_LIVE_POOLS: set = set()
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_worker_parent: Optional[int] = None  # in a worker: the pid of the process that started it


def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
  """Exits this process soon after ``parent_pid`` is no longer its parent (it died)."""

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(interval)
    os._exit(1)

  threading.Thread(target=watch, name="rnem-parent-watch", daemon=True).start()


def _setup_worker(parent_pid: int) -> None:
  """Makes this generation worker die with its parent and leave Ctrl-C to it (once).

  Runs at the worker's first task rather than as the pool's ``initializer`` so that any
  executor class can stand in for the process pool (tests use a thread pool); in the parent
  itself (serial generation, thread pools) it does nothing.
  """
  global _worker_parent
  if _worker_parent == parent_pid or os.getpid() == parent_pid:
    return
  _worker_parent = parent_pid
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops its workers on Ctrl-C
  signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not a handler forked from the parent
  # The kernel sends SIGKILL when the thread that started this worker ends: pools start their
  # workers in submit(), in the thread that consumes generate_split, which outlives them.
  armed = False
  if sys.platform.startswith("linux"):
    try:
      libc = ctypes.CDLL(None, use_errno=True)
      armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
      armed = False
  if not armed:
    _watch_parent(parent_pid)
  if os.getppid() != parent_pid:  # the parent died before the death signal was armed
    os._exit(1)


def _call_with_seeds(fn: Callable[[np.random.SeedSequence], dict],
                     entropies: list[tuple[int, ...]],
                     parent_pid: Optional[int] = None) -> list[dict]:
  if parent_pid is not None:
    _setup_worker(parent_pid)
  return [fn(np.random.SeedSequence(list(e))) for e in entropies]


def _wait_for_exit(processes: list, timeout: float) -> bool:
  """Waits until every process has exited; False on timeout. Reads their sentinels only: the
  pool's manager thread reaps (waitpid) them, and a second reaper would race it."""
  pending = {p.sentinel for p in processes}
  deadline = time.monotonic() + timeout
  while pending and time.monotonic() < deadline:
    pending -= set(multiprocessing.connection.wait(list(pending), deadline - time.monotonic()))
  return not pending


def _stop_pool(pool: concurrent.futures.Executor, timeout: float = 5.0) -> None:
  """Cancels the pending chunks of ``pool`` and terminates its worker processes now."""
  _LIVE_POOLS.discard(pool)
  processes = list((getattr(pool, "_processes", None) or {}).values())
  manager = getattr(pool, "_executor_manager_thread", None)
  results = getattr(pool, "_result_queue", None)
  pool.shutdown(wait=False, cancel_futures=True)
  for p in processes:
    p.terminate()
  if not _wait_for_exit(processes, timeout):
    for p in processes:
      p.kill()
    _wait_for_exit(processes, timeout)
  # A worker killed while sending its chunk leaves a partial message in the result pipe, and
  # the pool's manager thread (which the interpreter joins at exit) would wait for the rest
  # forever: closing this process's end, the pipe's last writer, turns that wait into an EOF,
  # which the thread handles as a broken pool, and ends.
  if results is not None and processes:
    with contextlib.suppress(AttributeError, OSError):
      results._writer.close()
  if manager is not None:
    manager.join(timeout)


def stop_workers() -> None:
  """Terminates the workers of every running :func:`generate_split` (an interrupted build).

  The generators are suspended inside TFDS when an exception passes them by; without this
  their pools would finish every pending chunk at interpreter exit before the process ends.
  """
  for pool in list(_LIVE_POOLS):
    _stop_pool(pool)


def _mp_context():
  # fork is fast and needs no `if __name__ == "__main__"` guard in the caller's
  # script, but forking a process that runs JAX threads is unsafe: use spawn then.
  return multiprocessing.get_context("spawn" if "jax" in sys.modules else "fork")


def generate_split(fn: Callable[[np.random.SeedSequence], dict[str, Any]],
                   *,
                   num_examples: int,
                   split: str,
                   seed: int,
                   num_workers: Optional[int] = None,
                   desc: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields ``(i, fn(SeedSequence([seed, split_index, i])))`` for i < num_examples, in order.

    ``fn`` must be picklable (a module-level function or a functools.partial of one).
    ``num_workers`` defaults to :func:`default_num_workers`. At most a few chunks per worker
    are in flight, so memory stays bounded however slowly the writer consumes.
    """
  split_index = SPLIT_INDEX[split]
  entropies = [(seed, split_index, i) for i in range(num_examples)]
  if num_workers is not None and num_workers < 0:
    raise ValueError(f"num_workers must be >= 1 (or 0/None for the default), got {num_workers}")
  num_workers = num_workers or default_num_workers()
  bar = tqdm.tqdm(total=num_examples,
                  desc=f"{desc} {split}".strip(),
                  unit="seq",
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
    pool = concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=_mp_context())
    _LIVE_POOLS.add(pool)
    try:
      pending = collections.deque()
      for c in chunks:
        pending.append(pool.submit(_call_with_seeds, fn, c, os.getpid()))
        while len(pending) >= 4 * num_workers or (c is chunks[-1] and pending):
          try:
            examples = pending.popleft().result()
          except concurrent.futures.process.BrokenProcessPool as e:
            from rnem_jax.data import DatasetError

            raise DatasetError(
                "a dataset generation worker died (killed, e.g. out of memory: try fewer "
                "--num_workers). If you build from a script that imports JAX, workers are "
                "spawned and the script needs an `if __name__ == '__main__':` guard; or build "
                "first with `python -m rnem_jax.data build NAME`.") from e
          for example in examples:
            yield i, example
            i += 1
            bar.update()
      pool.shutdown(wait=True)
    except BaseException:  # an error, an interruption or an early close: stop the workers now
      _stop_pool(pool)
      raise
    _LIVE_POOLS.discard(pool)


def binary_video(num_frames: int, height: int, width: int) -> tfds.features.Tensor:
  """(T+1, H, W, 1) uint8 video stored zlib-compressed (see rnem_jax/data.py for numbers)."""
  return tfds.features.Tensor(shape=(num_frames, height, width, 1), dtype=np.uint8, encoding="zlib")


def ball_features(num_frames: int,
                  image_size: int,
                  *,
                  curtain: bool = False) -> tfds.features.FeaturesDict:
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

  def __init__(self, *, num_workers: Optional[int] = None, beam: bool = False, **kwargs):
    """``num_workers``: generation processes (default: :func:`default_num_workers`).

    ``beam=True`` generates every split as an Apache Beam pipeline instead
    (cluster-scale generation; pass a ``beam_runner`` to ``download_and_prepare``'s
    download config). Example i gets the same seed, so the bytes are the same.
    """
    self._num_workers = num_workers
    self._beam = beam
    super().__init__(**kwargs)

  def example_fn(self) -> Callable[[np.random.SeedSequence], dict[str, Any]]:
    """The picklable per-example generator of the current builder config."""
    raise NotImplementedError

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    generate = self._beam_examples if self._beam else self._generate_examples
    return {split: generate(split, n) for split, n in self.builder_config.split_sizes}

  def _beam_examples(self, split: str, num_examples: int):
    """The split as a Beam PTransform yielding ``(i, example)`` (seeds as in generate_split)."""
    import apache_beam as beam  # optional dependency: pip install "rnem_jax[beam]"

    fn, seed, split_index = self.example_fn(), self.builder_config.seed, SPLIT_INDEX[split]

    def make(i):
      return i, fn(np.random.SeedSequence([seed, split_index, i]))

    return beam.Create(range(num_examples)) | beam.Map(make)

  def _generate_examples(self, split: str, num_examples: int):
    cfg = self.builder_config
    yield from generate_split(self.example_fn(),
                              num_examples=num_examples,
                              split=split,
                              seed=cfg.seed,
                              num_workers=self._num_workers,
                              desc=cfg.name)


@dataclasses.dataclass(eq=False)
class BallsBuilderConfig(tfds.core.BuilderConfig):
  """One bouncing-balls or curtain config: what its sequences look like (``sim``), how many
  of them each split has and the seed they are drawn from."""

  sim: balls.BallsConfig = balls.BallsConfig()
  split_sizes: tuple[tuple[str, int], ...] = ()
  seed: int = 0


class BallsBuilder(SimulatedBuilder, skip_registration=True):
  """Base of the bouncing-balls and curtain builders: pymunk sequences of ``BallsBuilderConfig``."""

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        features=ball_features(cfg.sim.num_frames, cfg.sim.image_size,
                               curtain=cfg.sim.curtain_size is not None),
        disable_shuffling=True,
        homepage="https://github.com/sjoerdvansteenkiste/Relational-NEM",
    )

  def example_fn(self):
    return functools.partial(balls.generate_sequence, self.builder_config.sim)
