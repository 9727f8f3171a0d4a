"""Run directories that survive preemption, faults and concurrent use.

* ``Checkpoints``: orbax ``latest`` (the two newest kept) and ``best`` (by validation loss)
  managers. Every checkpoint's metadata records a SHA-256 fingerprint of its parameters and
  optimizer state and the whole config; a restore recomputes the fingerprint, so damaged bytes
  are found, not trained on. A damaged ``latest`` falls back to the one before it with a
  one-line warning; a damaged ``best`` is an error that says so. Saving a step that already
  exists replaces it (a run killed between its ``best`` and ``latest`` saves resumes).
* ``WorkdirLock``: one trainer per run directory (an advisory ``flock`` that the kernel releases
  when its holder dies, even by SIGKILL, so a stale lock never blocks).
* ``check_resume_config``: a resumed run must have the config it started with, except fields
  that may change (budgets, logging, evaluation, how the same maths is computed).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import gc
import hashlib
import json
import logging
import os
import socket
import sys
import threading
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint is missing or damaged. The message says what to do."""


class WorkdirBusyError(RuntimeError):
  """Another trainer holds the run directory."""


def workdir_path(workdir) -> epath.Path:
  """A run directory as an ``epath.Path``: a local path (made absolute) or ``gs://...``."""
  if "://" in str(workdir):
    return epath.Path(workdir)
  return epath.Path(os.path.abspath(os.path.expanduser(str(workdir))))


def write_atomic(path: epath.Path, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file renamed over it: a reader (or a run
  killed mid-write) sees the old file or the new one, never half of one, where the filesystem
  renames atomically (local disks; on gs:// the rename is a copy)."""
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def fingerprint(tree: Any) -> str:
  """SHA-256 of every leaf's dtype, shape and bytes (replicated arrays: this process's copy)."""
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(tree):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = leaf.addressable_data(0)
    a = np.asarray(jax.device_get(leaf))
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


@contextlib.contextmanager
def _quiet_unraisable():
  """Silences the "Exception ignored in <coroutine>" reports, and the tracebacks of orbax's
  reader threads, of the other reads of a damaged checkpoint (the first error is the one
  raised)."""
  old, old_thread = sys.unraisablehook, threading.excepthook
  sys.unraisablehook = lambda unraisable: None
  threading.excepthook = lambda args: None
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook, threading.excepthook = old, old_thread


class Checkpoints:
  """``workdir/checkpoints/{latest,best}``: the ``TrainState`` plus a JSON ``meta`` record.

  Orbax writes to a temporary directory and renames it when complete, so a killed run never
  leaves a half-written checkpoint. ``create=False`` (evaluation) creates no directories and
  raises CheckpointError when there is no checkpoint at all.
  """

  def __init__(self, workdir, create: bool = True):
    root = workdir_path(workdir) / "checkpoints"
    if not create and not root.exists():
      raise CheckpointError(f"no checkpoint in {root}: train first (--mode=train), or check "
                            "--workdir")
    self.root = root

    def manager(which: str, keep: int):
      # Each manager names its own multi-process barriers: "best" and "latest" often save the
      # same step, and barriers named after the step alone would collide.
      opts = ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=create,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=which))
      return ocp.CheckpointManager(root / which, options=opts)

    self.latest = manager("latest", 2)
    self.best = manager("best", 1)

  def _manager(self, which: str):
    if which not in ("latest", "best"):
      raise ValueError(f"checkpoint must be 'best' or 'latest', got {which!r}")
    return getattr(self, which)

  def steps(self, which: str) -> list[int]:
    return sorted(self._manager(which).all_steps())

  def save(self, which: str, step: int, state, meta: dict) -> None:
    """Saves ``state`` at ``step`` (replacing a checkpoint of that step, if any) with ``meta``
    and the state's fingerprint."""
    mngr = self._manager(which)
    if step in mngr.all_steps():
      mngr.wait_until_finished()
      mngr.delete(step)
    meta = dict(meta, fingerprint=fingerprint(state))
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)), force=True)

  def drop_after(self, which: str, step: int) -> list[int]:
    """Deletes ``which``'s checkpoints newer than ``step`` (a resume from ``step`` will make
    them again); returns their steps."""
    mngr = self._manager(which)
    newer = [s for s in mngr.all_steps() if s > step]
    for s in newer:
      mngr.delete(s)
    return newer

  def restore_meta(self, which: str) -> Optional[dict]:
    """The newest ``which`` checkpoint's meta record (None if there is none)."""
    mngr = self._manager(which)
    for step in sorted(mngr.all_steps(), reverse=True):
      try:
        return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      except Exception:  # a damaged one: restore() says so, or falls back
        continue
    return None

  def _restore_step(self, which: str, step: int, target):
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    try:
      with _quiet_unraisable():
        out = self._manager(which).restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:
      first = str(e).splitlines()[0] if str(e) else ""
      raise CheckpointError(f"cannot read {which} checkpoint {step} in {self.root}: its files "
                            f"are damaged or incomplete ({type(e).__name__}: "
                            f"{first.split(' See full')[0][:120]})") from e
    meta = out["meta"]
    want = meta.get("fingerprint")
    if want is not None and fingerprint(out["state"]) != want:
      raise CheckpointError(f"{which} checkpoint {step} in {self.root} is damaged: its arrays "
                            "do not match the fingerprint saved with them")
    return out["state"], meta

  def restore(self, which: str, target) -> tuple[Optional[Any], Optional[dict]]:
    """Restores the newest ``which`` checkpoint onto the shapes/shardings of ``target``.

    Returns (None, None) if there is none. A damaged ``latest`` falls back to the one before
    it (one warning line); a damaged ``best``, or no readable ``latest`` left, raises
    CheckpointError.
    """
    steps = sorted(self._manager(which).all_steps(), reverse=True)
    if not steps:
      return None, None
    errors = []
    for step in steps:
      try:
        state, meta = self._restore_step(which, step, target)
      except CheckpointError as e:
        if which == "best":
          raise CheckpointError(f"{e}; evaluate another with --config.eval.checkpoint=latest "
                                "or train again") from e
        errors.append(str(e))
        log.warning("%s; falling back to the one before it", e)
        continue
      return state, dict(meta, step=step)
    raise CheckpointError(f"no readable latest checkpoint in {self.root} ({'; '.join(errors)}): "
                          "move the directory away and train again")

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


class WorkdirLock:
  """Holds ``workdir/train.lock`` (host, PID, start time) while a trainer runs.

  ``flock`` is released by the kernel when the holder exits or dies, so a lock file left by a
  dead process is simply taken over. A second trainer is refused with one line naming the
  holder.
  """

  def __init__(self, workdir):
    self.path = workdir_path(workdir) / "train.lock"
    self._file = None

  def acquire(self) -> None:
    f = open(self.path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise WorkdirBusyError(f"{self.path.parent} is in use by a trainer ({holder}): stop it, or use "
                         "another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"host {socket.gethostname()}, pid {os.getpid()}, since "
            f"{datetime.datetime.now().isoformat(timespec='seconds')}")
    f.flush()
    self._file = f

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


# Config fields that may change when a run resumes: budgets, logging and checkpoint intervals,
# evaluation, where the data lives, and how the same maths is computed.
RESUMABLE_FIELDS = (
    "train.max_steps", "train.max_epochs", "train.max_minutes", "train.patience",
    "train.log_every", "train.checkpoint_every", "train.valid_batch_size", "train.unroll",
    "train.remat", "train.batch_splits", "model.conv_impl", "data_dir", "eval.", "rollout.",
    "extrapolation.")


# Fields added after checkpoints were first written, with the value that reproduces what runs
# saved without them did: a saved config lacking one of these had this value.
ADDED_FIELDS = {"em.train_sim_steps": 0, "em.sim_gradient": False}


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_changes(saved: dict, config) -> dict:
  """``{field: (saved, now)}`` for every field that differs from the saved config."""
  a, b = _flatten(saved), _flatten(json.loads(config.to_json_best_effort()))
  a = {**{k: v for k, v in ADDED_FIELDS.items() if k in b}, **a}
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume_config(saved: Optional[dict], config, workdir, allow: bool = False) -> dict:
  """Refuses a resume whose config changed a field outside ``RESUMABLE_FIELDS`` (one line with
  the differences) unless ``allow``; returns the changes (logged by the caller)."""
  if saved is None:
    return {}
  changes = config_changes(saved, config)
  fixed = {k: v for k, v in changes.items()
           if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESUMABLE_FIELDS)}
  if fixed and not allow:
    diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in fixed.items())
    raise ValueError(f"{workdir} was trained with another config ({diff}); resuming would mix "
                     "the two. Use another --workdir, or --allow_config_change to resume anyway")
  return changes
