"""Training state and the jitted training step.

One training step = ``value_and_grad`` of the mean EM loss over the T steps
(one ``lax.scan``) followed by an optax update, all inside one ``jax.jit``.

Rolled or unrolled: on XLA:CPU, differentiating a rolled ``lax.scan`` whose
body holds convolutions with XLA's own convolution gradients is many times
slower than the same graph unrolled. ``rnem_jax.layers`` gives the convolutions
gradients written as forward convolutions, which run as fast inside a rolled
scan; the remaining choice is the config's ``train.unroll`` (unrolled: somewhat
faster steps, much longer compiles) and ``train.remat`` (per-step
rematerialisation: a fraction of the memory at paper scale).

``train.batch_splits``: each EM step as that many independent sub-graphs, one
per slice of the batch (``em.rollout``; the same loss and gradients). On a
2-core CPU one step's ops use the two threads poorly; two independent slices
give XLA:CPU's executor work to run side by side.

The numbers behind these choices: docs/design.md#measured-choices.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from etils import epath
from flax.training.early_stopping import EarlyStopping
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tensorboardX import SummaryWriter

from rnem_jax import data, em
from rnem_jax.checkpoints import (Checkpoints, WorkdirLock, check_resume_config,
                                  workdir_path, write_atomic)
from rnem_jax.layers import resolve_conv_impl
from rnem_jax.model import build_network, init_params
from rnem_jax.provenance import provenance

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
  """Everything a training step updates."""

  step: jnp.ndarray
  params: Any
  opt_state: Any


def make_optimizer(learning_rate: float = 1e-3, clip_norm: Optional[float] = None):
  """Adam (TF defaults: b1 0.9, b2 0.999, eps 1e-8), no clipping unless asked."""
  tx = optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8)
  if clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
  return tx


def create_train_state(params, tx) -> TrainState:
  """Step 0 with ``tx``'s initial state for ``params`` (one jitted program, kept by the
  persistent compilation cache, instead of one small compilation per leaf shape)."""
  opt_state = jax.jit(tx.init)(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)


def train_step(state: TrainState, batch: dict, key: jax.Array, *, network, tx, K: int,
               noise_prob: float, unroll=True, remat: bool = False, axis_name=None,
               **loss_kwargs):
  """One Adam step on one batch.

  Args:
    state: the current ``TrainState``.
    batch: ``features [T+1, B, H, W, C]`` (and ``actions [T+1, B]`` for Atari):
      this device's shard when ``axis_name`` is given.
    key: PRNG key of this step; sequence b of the (global) batch draws its noise
      and gamma0 from ``fold_in(key, b)`` (``em.sequence_keys``), so the step
      does not depend on how the batch is split over devices.
    axis_name: inside ``shard_map`` over a mesh axis of this name, each device
      differentiates its shard over the whole EM scan and the gradients (and
      metrics) are averaged across devices once, after the scan.

  Returns:
    (new_state, metrics) with ``loss`` (mean over steps), ``loss_last``,
    ``intra``/``inter`` (means over steps), ``grad_norm`` and ``applied`` (0 where the
    update was withheld because the loss, gradients or new parameters were not finite).
  """
  B = batch["features"].shape[1]
  first = 0 if axis_name is None else jax.lax.axis_index(axis_name) * B
  keys = em.sequence_keys(key, first, B)

  def loss_fn(params):
    return em.training_loss(network, params, batch["features"], keys, K=K,
                            actions=batch.get("actions"), noise_prob=noise_prob,
                            unroll=unroll, remat=remat, **loss_kwargs)

  (loss, r), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = dict(loss=loss, loss_last=r.loss[-1], intra=jnp.mean(r.intra),
                 inter=jnp.mean(r.inter))
  if axis_name is not None:
    # Equal shards: the mean of the shards' means is the batch mean (one all-reduce per step).
    grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics["grad_norm"] = optax.tree.norm(grads)
  # A step whose loss, gradients or new parameters are not finite is not applied: the state
  # stays the last finite one (the loop stops on the loss and names the step). x * 0 is 0 for
  # finite x and NaN otherwise, so one sum per leaf tests every entry; one conditional picks
  # the state (an elementwise select over every leaf of params and optimizer state compiles to
  # fusions that take several times longer to compile than the optimizer itself).
  all_finite = jnp.isfinite(sum(jnp.sum(x * 0) for x in jax.tree_util.tree_leaves(params)))
  ok = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"]) & all_finite
  params, opt_state = jax.lax.cond(ok, lambda: (params, opt_state),
                                   lambda: (state.params, state.opt_state))
  metrics["applied"] = ok.astype(jnp.float32)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(network, tx, *, K: int, noise_prob: float, unroll=True, remat=False,
                    donate: bool = True, mesh: Optional[Mesh] = None, **loss_kwargs):
  """``train_step`` with the static arguments bound, jitted (state buffers donated).

  With a ``mesh`` (1-D, axis ``'data'``): data parallel with pmap semantics
  (``jax.shard_map``): params and optimizer state replicated, the batch split
  on B, one gradient mean across all devices and processes per step. Without:
  a single-device step.
  """
  fn = functools.partial(train_step, network=network, tx=tx, K=K, noise_prob=noise_prob,
                         unroll=unroll, remat=remat, **loss_kwargs)
  if mesh is not None:
    # check_vma off: the EM scan's zero initial carry is the same on every device while its
    # later values are not, which the checker refuses; the outputs are pmean'ed, hence equal.
    fn = jax.shard_map(functools.partial(fn, axis_name="data"), mesh=mesh,
                       in_specs=(P(), P(None, "data"), P()), out_specs=(P(), P()),
                       check_vma=False)
  return jax.jit(fn, donate_argnums=(0,) if donate else ())


# ---------------------------------------------------------------------------
# Devices: a 1-D ('data',) mesh; params replicated, batches sharded on B
# (docs/design.md#data-parallelism).


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named 'data' over ``devices`` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def replicate(tree, mesh: Mesh):
  """Places every array of ``tree`` on every device of ``mesh``. With several processes each
  passes the same host values (a device_put of a process's local device array would make
  arrays that checkpointing cannot read shard by shard)."""
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)),
      tree)


def shard_batch(batch: dict, mesh: Mesh, same_on_every_process: bool = False) -> dict:
  """Time-major host batch ``{k: [T+1, B_local, ...]}`` -> global arrays sharded on B.

  By default each process passes its own ``B_local`` sequences (multi-host
  training) and the global batch is their concatenation. With
  ``same_on_every_process=True`` every process passes the whole batch
  (evaluation reads every sequence in order) and each keeps its slice.
  """
  sharding = NamedSharding(mesh, P(None, "data"))
  return {k: jax.make_array_from_process_local_data(
              sharding, np.asarray(v), np.shape(v) if same_on_every_process else None)
          for k, v in batch.items()}


# Model fields that change how the parameters are computed with, not the parameters.
_COMPUTE_ONLY_FIELDS = ("conv_impl",)


def model_signature(config) -> dict:
  """What a checkpoint's parameters depend on (K does not: it is not here)."""
  model = json.loads(config.model.to_json())
  return {k: v for k, v in model.items() if k not in _COMPUTE_ONLY_FIELDS}


def check_compatible(meta: Optional[dict], config, workdir: str) -> None:
  """Refuses to resume a workdir holding a checkpoint of another architecture."""
  if meta is None:
    return
  saved, wanted = meta.get("model"), model_signature(config)
  saved = None if saved is None else {k: v for k, v in saved.items()
                                      if k not in _COMPUTE_ONLY_FIELDS}
  if saved != wanted:
    diff = sorted(k for k in set(saved or {}) | set(wanted)
                  if (saved or {}).get(k) != wanted.get(k))
    raise ValueError(
        f"{workdir} holds a checkpoint of a different model (fields differ: {diff}; "
        f"saved {[(k, (saved or {}).get(k)) for k in diff]}, "
        f"config {[(k, wanted.get(k)) for k in diff]}). Use another --workdir; nothing "
        "was changed.")


# ---------------------------------------------------------------------------
# The training loop.


def validate_config(config, num_devices: int, num_processes: int = 1) -> None:
  """Clear errors for configs that cannot run on ``num_devices`` devices in ``num_processes``
  processes (before anything is written)."""
  if config.em.K < 1:
    raise ValueError(f"em.K must be >= 1, got {config.em.K}")
  if config.em.T < 1:
    raise ValueError(f"em.T must be >= 1, got {config.em.T}")
  em.check_train_sim_steps(config.em.T, config.em.get("train_sim_steps", 0))
  if num_processes < 1 or num_devices % num_processes:
    raise ValueError(f"{num_devices} devices cannot be split evenly over {num_processes} "
                     "processes")
  b = config.train.batch_size
  if b < 1 or b % num_devices:
    raise ValueError(f"train.batch_size={b} must be a positive multiple of the number of "
                     f"devices ({num_devices}): set --config.train.batch_size to a multiple of "
                     f"{num_devices} or run on fewer devices")
  per_device = b // num_devices
  if config.train.batch_splits < 1 or per_device % config.train.batch_splits:
    raise ValueError(f"train.batch_splits={config.train.batch_splits} must divide each device's "
                     f"batch ({per_device} sequences)")
  for name in ("train.valid_size", "train.valid_batch_size", "train.log_every",
               "train.checkpoint_every", "eval.batch_size", "rollout.batch_size"):
    section, field = name.split(".")
    if config[section][field] < 1:
      raise ValueError(f"{name} must be >= 1, got {config[section][field]}")
  if not config.train.learning_rate > 0:
    raise ValueError(f"train.learning_rate must be > 0, got {config.train.learning_rate}")
  if not 0.0 <= config.em.noise_prob <= 1.0:
    raise ValueError(f"em.noise_prob must be in [0, 1], got {config.em.noise_prob}")
  if config.em.action_tiling not in em.ACTION_TILINGS:
    raise ValueError(f"em.action_tiling must be one of {em.ACTION_TILINGS}, got "
                     f"{config.em.action_tiling!r}")
  if config.em.action_tiling == "reference" and not config.model.get("num_actions", 0):
    raise ValueError("em.action_tiling='reference' tiles actions, but this model has none "
                     "(model.num_actions=0): use it with configs/atari.py")
  if config.em.e_step_target not in em.E_STEP_TARGETS:
    raise ValueError(f"em.e_step_target must be one of {em.E_STEP_TARGETS}, got "
                     f"{config.em.e_step_target!r}")
  resolve_conv_impl(config.model.get("conv_impl", "auto"))


# One measured paper-scale step (B=64, K=5, T=30, 64x64 balls, rolled + remat) on a 2-core CPU
# (docs/design.md#measured-choices). CPU cost scales about with B*K*T*pixels / cores.
_CPU_REFERENCE = dict(seconds=22.3, work=64 * 5 * 30 * 64 * 64, cores=2)


def expected_cpu_step_seconds(config) -> float:
  """Rough seconds per training step of ``config`` on this machine's CPU cores."""
  work = (config.train.batch_size * config.em.K * config.em.T * config.model.image_size ** 2)
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return (_CPU_REFERENCE["seconds"] * work / _CPU_REFERENCE["work"] *
          _CPU_REFERENCE["cores"] / max(cores or 1, 1))


def warn_if_slow_on_cpu(config, steps_per_epoch: Optional[int] = None) -> None:
  """On a CPU backend, says what a large config costs here before any data is built."""
  if jax.default_backend() != "cpu":
    return
  seconds = expected_cpu_step_seconds(config)
  if seconds < 5.0:
    return
  epoch = f", ~{seconds * steps_per_epoch / 3600:.0f} h per epoch" if steps_per_epoch else ""
  log.warning(
      "%s on a CPU backend: expect ~%.0f s per training step here%s. This scale is a GPU/TPU "
      "job; on a CPU use a small scale (the config file followed by ':small', e.g. "
      "--config=configs/balls.py:small). Proceeding.", config.name, seconds, epoch)


def check_data_fits_model(info, config) -> None:
  """The dataset's frames must be what the network takes, and long enough for T."""
  want = tuple(info.image_size)
  if want != (config.model.image_size, config.model.image_size):
    raise ValueError(
        f"dataset {info.name} has {want[0]}x{want[1]} frames but model.image_size is "
        f"{config.model.image_size}: the model cannot take this image size")
  if config.em.T + 1 > info.num_frames:
    raise ValueError(f"em.T={config.em.T} needs {config.em.T + 1} frames; {info.name} has "
                     f"{info.num_frames}")
  if config.model.num_actions and "actions" not in info.keys:
    raise ValueError(f"the model takes actions but {info.name} has none")


def model_keys(info) -> tuple[str, ...]:
  """The batch fields the model reads (the pipeline decodes no others in training)."""
  return tuple(k for k in ("features", "actions") if k in info.keys)


def _model_inputs(batch: dict) -> dict:
  return {k: batch[k] for k in ("features", "actions") if k in batch}


def pad_batch(batch: dict, multiple: int) -> tuple[dict, int]:
  """Pads the batch axis (1) of ``{k: [T+1, B, ...]}`` to a multiple of ``multiple`` by
  repeating the last sequence; returns the padded batch and the real B."""
  n = next(iter(batch.values())).shape[1]
  size = -(-n // multiple) * multiple
  if n == size:
    return batch, n
  pad = lambda v: np.concatenate([v, np.repeat(v[:, -1:], size - n, axis=1)], axis=1)
  return {k: pad(v) for k, v in batch.items()}, n


def _data_dir(config) -> Optional[str]:
  return config.data_dir or None


class _Logger:
  """JSONL + TensorBoard (tensorboardX) writer for scalar metrics (process 0 only).

  ``resume_step``: a resumed run drops the rows of later steps (a killed run had logged steps
  that it repeats now), in the JSONL file and in TensorBoard (``purge_step``).
  """

  def __init__(self, workdir: epath.Path, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      path = workdir / "train_log.jsonl"
      if path.exists():
        rows = [line for line in path.read_text().splitlines(keepends=True)
                if line.strip() and json.loads(line)["step"] <= resume_step]
        write_atomic(path, "".join(rows))
      self.jsonl = path.open("a")
      self.tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1)

  def write(self, step: int, kind: str, scalars: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "kind": kind, "time": time.time()}
    row.update({k: float(v) for k, v in scalars.items()})
    self.jsonl.write(json.dumps(row) + "\n")
    self.jsonl.flush()
    for k, v in scalars.items():
      self.tb.add_scalar(f"{kind}/{k}", float(v), int(step))

  def close(self) -> None:
    if self.enabled:
      self.jsonl.close()
      self.tb.close()


class Preempted(Exception):
  """Training stopped on a signal after saving ``latest`` at ``step``."""

  def __init__(self, signum: int, step: Optional[int]):
    self.signum, self.step = signum, step
    name = signal.Signals(signum).name
    where = f"stopped at step {step}, saved" if step is not None else "stopped"
    super().__init__(f"{name}: {where}; the same command resumes")


class StopSignals:
  """SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) handlers for a training process.

  Inside ``deferred()`` (the training loop) a signal is only recorded in ``received``: the loop
  finishes its step, saves and raises ``Preempted``. Elsewhere it raises ``Preempted`` at once.
  """

  def __init__(self):
    self.received: Optional[int] = None
    self._defer = False
    for signum in (signal.SIGTERM, signal.SIGINT):
      signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    if self.received is not None and not self._defer:
      return   # already stopping (a repeated signal, or the job's other processes agreed)
    self.received = signum
    if not self._defer:
      raise Preempted(signum, None)

  @contextlib.contextmanager
  def deferred(self):
    self._defer = True
    try:
      if self.received is not None:
        raise Preempted(self.received, None)
      yield
    finally:
      self._defer = False


class TrainingClock:
  """Seconds trained by this invocation: wall-clock time less the time the process spent
  stopped (SIGSTOP or SIGTSTP: ``scontrol suspend``, a shell's Ctrl-Z), so that a budget in
  minutes (train.max_minutes) buys training, not waiting in a suspended job.

  A stopped process runs none of its threads: a daemon thread that wakes every ``tick``
  seconds sees a stop as one long gap between two wake-ups. A gap longer than ``gap``
  seconds counts as stopped (less one tick) once the SIGCONT that ended it is seen, so a gap
  from another cause (the main thread holding the interpreter lock in a long C call) is
  training time. Monotonic time: a suspended machine (a closed laptop) does not count either.
  Built in the main thread (it installs the SIGCONT handler; elsewhere it never subtracts).
  """

  def __init__(self, tick: float = 0.5, gap: float = 5.0):
    self.tick, self.gap = tick, gap
    self._started = self._last = time.monotonic()
    self._stopped = 0.0
    self._suspect = 0.0             # the latest gap, until a SIGCONT confirms it
    self._conts = self._seen = 0    # SIGCONTs received / accounted for
    self._lock = threading.Lock()
    self._done = threading.Event()
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGCONT, self._on_cont)
    threading.Thread(target=self._watch, name="training-clock", daemon=True).start()

  def _on_cont(self, signum, frame) -> None:
    # Runs in the main thread, which may hold self._lock: no lock here (one writer).
    self._conts += 1
    if callable(self._previous):
      self._previous(signum, frame)

  def _watch(self) -> None:
    while not self._done.wait(self.tick):
      self._observe()

  def _observe(self) -> float:
    with self._lock:
      now = time.monotonic()
      if now - self._last > self.gap:
        self._suspect = now - self._last - self.tick
      self._last = now
      if self._conts != self._seen:
        self._seen = self._conts
        self._stopped += self._suspect
        self._suspect = 0.0
      return now - self._started - self._stopped

  def elapsed(self) -> float:
    """Seconds since the clock started, without the stops (the caller is a witness too: the
    main thread runs the SIGCONT handler first, so a call just after a stop counts it)."""
    return self._observe()

  @property
  def stopped(self) -> float:
    """Seconds the process has spent stopped so far."""
    with self._lock:
      return self._stopped

  def close(self) -> None:
    """Stops the watcher and puts the previous SIGCONT handler back."""
    self._done.set()
    if self._previous is not None and threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGCONT, self._previous)
      self._previous = None


class Progress:
  """One progress line every ``every`` seconds for logs that are not a terminal: step, steps/s,
  the last logged loss, training time (this and earlier invocations) and the time to the end
  of the budget (steps or minutes, whichever comes first). Times are training seconds of this
  invocation (``TrainingClock.elapsed``); ``budget`` is the whole run's, in seconds, or None."""

  def __init__(self, step: int, max_steps: int, budget: Optional[float], trained_before: float,
               every: float = 60.0):
    self.max_steps, self.budget, self.trained_before = max_steps, budget, trained_before
    self.every = every
    self.first_step, self.last_time, self.loss = step, 0.0, None

  def minutes(self, elapsed: float) -> str:
    return f"{(self.trained_before + elapsed) / 60:.1f}/{self.budget / 60:.0f}"

  def line(self, step: int, elapsed: float) -> str:
    rate = (step - self.first_step) / max(elapsed, 1e-9)
    left = (self.max_steps - step) / rate if rate > 0 else float("inf")
    if self.budget is not None:
      left = min(left, max(self.budget - self.trained_before - elapsed, 0.0))
    eta = "?" if left == float("inf") else str(datetime.timedelta(seconds=round(left)))
    trained = datetime.timedelta(seconds=round(self.trained_before + elapsed))
    loss = "" if self.loss is None else f", loss {self.loss:.1f}"
    return (f"step {step}/{self.max_steps}, {rate:.2f} steps/s{loss}, trained {trained}, "
            f"{'budget' if self.budget is not None else 'steps'} left ~{eta}")

  def maybe_log(self, step: int, elapsed: float) -> None:
    if elapsed - self.last_time >= self.every:
      self.last_time = elapsed
      log.info("%s", self.line(step, elapsed))


# Consecutive steps with exactly zero gradients after which training stops (saturated units:
# nothing will change any more).
STALL_STEPS = 20


def em_options(config, training: bool = False) -> dict:
  """The config's EM settings as keyword arguments of ``em.rollout``.

  ``training=True`` adds the training objective's own settings (``em.train_sim_steps``,
  ``em.sim_gradient``: the last S steps simulated, for the ``*_sim`` models); evaluation
  rollouts choose their real and simulated steps themselves.
  """
  opts = dict(noise_prob=config.em.noise_prob, e_step_distribution=config.em.e_step,
              prior=config.em.prior, inter_weight=config.em.inter_weight,
              e_step_target=config.em.e_step_target,
              action_tiling=config.em.action_tiling)
  if training and config.em.get("train_sim_steps", 0):
    opts.update(train_sim_steps=config.em.train_sim_steps,
                sim_gradient=config.em.get("sim_gradient", False))
  return opts


def make_sequence_loss_fn(network, config, K: int, mesh: Mesh):
  """Jitted ``(params, batch, key, first) -> [B]``: each sequence's mean EM loss (forward only;
  validation). Sequence b draws its noise and gamma0 from ``fold_in(key, first + b)``; the
  output is replicated, so every process reads every sequence's loss."""
  opts = em_options(config, training=True)

  def fn(params, batch, key, first):
    keys = em.sequence_keys(key, first, batch["features"].shape[1])
    actions = batch.get("actions")

    def one(x, a, k):  # x: [T+1, H, W, C] -> a batch of one sequence
      loss, _ = em.training_loss(network, params, x[:, None], k[None], K=K,
                                 actions=None if a is None else a[:, None], **opts)
      return loss

    return jax.vmap(one, in_axes=(1, None if actions is None else 1, 0))(
        batch["features"], actions, keys)

  return jax.jit(fn, out_shardings=NamedSharding(mesh, P()))


def validation_loss(loss_fn, params, config, mesh, key) -> float:
  """Mean training loss (noise and gamma0 per sequence, from ``key``) over the first
  ``train.valid_size`` validation sequences: the same fixed subset on every process."""
  n = config.train.valid_size
  info = data.dataset_info(config.dataset, _data_dir(config))
  batches = data.iterate_batches(
      config.dataset, "validation", config.train.valid_batch_size, seed=0,
      num_frames=config.em.T + 1, shuffle=False, num_epochs=1, drop_remainder=False,
      shard_index=0, shard_count=1, keys=model_keys(info), data_dir=_data_dir(config))
  total, count = 0.0, 0
  for batch in batches:
    if count >= n:
      break
    take = min(batch["features"].shape[1], n - count)
    padded, _ = pad_batch({k: v[:, :take] for k, v in batch.items()}, mesh.size)
    losses = loss_fn(params, shard_batch(padded, mesh, same_on_every_process=True), key,
                     jnp.int32(count))
    total += float(np.sum(np.asarray(losses)[:take], dtype=np.float64))
    count += take
  if count < n:
    raise ValueError(f"{config.dataset} has {count} validation sequences, fewer than "
                     f"train.valid_size={n}")
  return total / count


def make_forward_loss_fn(network, config, K: int):
  """Jitted ``(params, batch, key) -> loss`` of a (sharded) training batch, forward only, with
  the training step's per-sequence keys: checks that parameters about to be saved work."""
  def fn(params, batch, key):
    keys = em.sequence_keys(key, 0, batch["features"].shape[1])
    return em.training_loss(network, params, batch["features"], keys, K=K,
                            actions=batch.get("actions"), **em_options(config, training=True))[0]
  return jax.jit(fn)


def _any_process(flag: bool) -> bool:
  """Whether ``flag`` is set on any process (every process must call it at the same step)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def train_and_evaluate(config, workdir: str, *, allow_config_change: bool = False,
                       stop=None) -> dict:
  """Trains ``config`` in ``workdir``, resuming from its latest checkpoint if any.

  Args:
    allow_config_change: resume even if fields outside ``checkpoints.RESUMABLE_FIELDS``
      changed since the run started (they are listed in the log).
    stop: a ``StopSignals`` (or None): once it has ``received`` a signal (checked every step;
      multi-process: every ``log_every`` steps, all processes agreeing), the step in flight
      finishes, ``latest`` is saved at it, and ``Preempted`` is raised.

  Returns a summary dict (final step, best validation loss, why it stopped).
  Raises FloatingPointError on a non-finite loss or stalled gradients; the last checkpoint
  kept was saved from parameters that gave a finite loss.
  """
  mesh = make_mesh()
  validate_config(config, mesh.size, jax.process_count())
  network = build_network(config.model)
  info = data.dataset_info(config.dataset, _data_dir(config))
  check_data_fits_model(info, config)
  n_train = info.splits["train"]
  steps_per_epoch = config.train.steps_per_epoch or max(n_train // config.train.batch_size, 1)
  max_steps = config.train.max_steps or steps_per_epoch * config.train.max_epochs
  warn_if_slow_on_cpu(config, steps_per_epoch)
  data.ensure_built(config.dataset, _data_dir(config))
  workdir = workdir_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  lock = WorkdirLock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
  try:
    with (stop.deferred() if stop is not None else contextlib.nullcontext()):
      try:
        return _train(config, workdir, mesh, network, info, steps_per_epoch, max_steps,
                      allow_config_change, (lambda: stop.received) if stop else (lambda: None))
      except Preempted as e:
        if stop is not None and stop.received is None:
          stop.received = e.signum   # stopped with the other processes: a late signal is moot
        raise
  finally:
    lock.release()


def _train(config, workdir, mesh, network, info, steps_per_epoch, max_steps,
           allow_config_change, stop) -> dict:
  ckpts = Checkpoints(workdir)
  tx = make_optimizer(config.train.learning_rate)
  root_key = jax.random.key(config.seed)
  init_key, step_key, valid_key = jax.random.split(root_key, 3)
  state = replicate(create_train_state(init_params(network, init_key), tx), mesh)
  saved_meta = ckpts.restore_meta("latest")
  check_compatible(saved_meta, config, str(workdir))
  changes = check_resume_config((saved_meta or {}).get("config"), config, workdir,
                                allow_config_change)
  if changes:
    log.warning("resuming with changed config fields: %s",
                ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))
  restored, meta = ckpts.restore("latest", state)
  stopper = EarlyStopping(patience=max(config.train.patience - 1, 0))
  if restored is not None:
    state = restored
    stopper = stopper.replace(**meta["early_stopping"])
    step = int(state.step)
    dropped = ckpts.drop_after("best", step) + ckpts.drop_after("latest", step)
    log.info("resumed from step %d in %s%s", step, workdir,
             f" (dropped newer checkpoints {dropped})" if dropped else "")
  step = int(state.step)
  # Training time of the earlier invocations: the time budget counts the whole run.
  trained_before = float((meta or {}).get("train_seconds", 0.0))
  clock = TrainingClock()
  config_json = config.to_json_best_effort(indent=2)
  if jax.process_index() == 0:
    write_atomic(workdir / "config.json",
                 json.dumps({**json.loads(config_json), "provenance": provenance()}, indent=2))

  K, T = config.em.K, config.em.T
  train_step = make_train_step(network, tx, K=K, unroll=config.train.unroll,
                               remat=config.train.remat,
                               batch_splits=config.train.batch_splits, mesh=mesh,
                               **em_options(config, training=True))
  loss_fn = make_sequence_loss_fn(network, config, K, mesh)
  forward_loss = make_forward_loss_fn(network, config, K)
  logger = _Logger(workdir, resume_step=step)

  def meta_now(epoch: int) -> dict:
    return {"model": model_signature(config), "epoch": epoch,
            "config": json.loads(config_json),
            "train_seconds": trained_before + clock.elapsed(),
            "early_stopping": {"best_metric": float(stopper.best_metric),
                               "patience_count": int(stopper.patience_count),
                               "should_stop": bool(stopper.should_stop)}}

  if restored is None:
    # The initial parameters: a "last good" checkpoint even if the first steps diverge.
    ckpts.save("latest", 0, state, meta_now(0))

  # One global order of training sequences; each process reads its slice of every batch.
  batches = data.iterate_batches(
      config.dataset, "train", config.train.batch_size // jax.process_count(),
      seed=config.seed, num_frames=T + 1, shuffle=True, start_batch=step,
      keys=model_keys(info), data_dir=_data_dir(config))
  budget = 60.0 * config.train.max_minutes or None
  if budget is not None and trained_before >= budget:
    log.info("the time budget (train.max_minutes=%g) is spent (%.1f minutes trained): "
             "nothing to train; raise it to train on", config.train.max_minutes,
             trained_before / 60)
  reason = "max_steps"
  progress = Progress(step, max_steps, budget, trained_before)
  # With a time budget the step total is unknown: the bar counts steps and minutes.
  bar = tqdm.tqdm(total=None if budget is not None else max_steps, initial=step,
                  desc=config.name, dynamic_ncols=True, disable=not sys.stderr.isatty())
  # Metrics stay on the device until read here, every log_every steps and before every save:
  # no per-step host sync, so the host prepares the next batch while the device computes.
  pending: list[tuple[int, dict]] = []
  timer = {"time": clock.elapsed(), "step": step, "zero_grads": 0}

  def stopped_here(s: int) -> str:
    return (f"stopping. The last good checkpoint (step {ckpts.latest.latest_step()}) is kept "
            f"in {workdir / 'checkpoints'}; resuming repeats the same steps, so change the "
            f"config (e.g. a lower train.learning_rate) and use a new --workdir")

  def flush() -> None:
    """Reads the pending steps' metrics; raises on a non-finite loss or stalled gradients,
    logs the last one."""
    if not pending:
      return
    values = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, values):
      if not (math.isfinite(float(m["loss"])) and float(m["applied"])):
        raise FloatingPointError(f"training loss {float(m['loss'])}, gradient norm "
                                 f"{float(m['grad_norm'])} at step {s} (not applied); "
                                 + stopped_here(s))
      timer["zero_grads"] = timer["zero_grads"] + 1 if float(m["grad_norm"]) == 0.0 else 0
      if timer["zero_grads"] >= STALL_STEPS:
        raise FloatingPointError(f"gradients exactly zero for {STALL_STEPS} steps (to step {s}):"
                                 " the units saturated and nothing will change; "
                                 + stopped_here(s))
    s, m = pending[-1][0], values[-1]
    pending.clear()
    if s % config.train.log_every == 0 or s == max_steps:
      now = clock.elapsed()
      sps = (s - timer["step"]) / max(now - timer["time"], 1e-9)
      timer.update(time=now, step=s)
      scalars = {k: float(v) for k, v in m.items() if k != "applied"}
      scalars["steps_per_s"] = sps
      logger.write(s, "train", scalars)
      progress.loss = scalars["loss"]
      bar.set_postfix(loss=f"{scalars['loss']:.1f}", steps_per_s=f"{sps:.2f}",
                      **({"minutes": progress.minutes(clock.elapsed())}
                         if budget is not None else {}))

  def save(which: str, s: int, epoch: int, batch, key) -> None:
    """Saves after checking that the parameters give a finite loss on the last batch."""
    loss = 0.0 if batch is None else float(forward_loss(state.params, batch, key))
    if not math.isfinite(loss):
      raise FloatingPointError(f"the parameters after step {s} give a loss of {loss}; "
                               + stopped_here(s))
    ckpts.save(which, s, state, meta_now(epoch))

  def together(flag: bool) -> bool:
    """``flag``; with several processes, decided together at the log_every steps (any
    process's flag counts; between those steps, False), so that all stop at the same step."""
    if jax.process_count() == 1:
      return flag
    return not step % config.train.log_every and _any_process(flag)

  def check_stop() -> Optional[int]:
    signum = stop()
    return (signum or signal.SIGTERM) if together(signum is not None) else None

  def budget_spent() -> bool:
    """Whether train.max_minutes is spent (together: each process's clock may differ by the
    time a stopped peer kept the others waiting)."""
    return budget is not None and together(trained_before + clock.elapsed() >= budget)

  batch, key = None, None
  try:
    while step < max_steps:
      signum = check_stop()
      if signum is not None:
        flush()
        if ckpts.latest.latest_step() != step:
          save("latest", step, step // steps_per_epoch, batch, key)
        ckpts.wait()
        raise Preempted(signum, step)
      if stopper.should_stop:
        reason = "early_stopping"
        break
      if budget_spent():
        reason = "max_minutes"
        break
      batch = shard_batch(_model_inputs(next(batches)), mesh)
      key = jax.random.fold_in(step_key, step)
      state, metrics = train_step(state, batch, key)
      step += 1
      pending.append((step, metrics))
      bar.update(1)
      if bar.disable:
        progress.maybe_log(step, clock.elapsed())
      epoch_end = step % steps_per_epoch == 0
      if (step % config.train.log_every == 0 or step == max_steps or epoch_end
          or step % config.train.checkpoint_every == 0):
        flush()
      if epoch_end:
        epoch = step // steps_per_epoch
        val = validation_loss(loss_fn, state.params, config, mesh, valid_key)
        stopper = stopper.update(val)
        logger.write(step, "valid", {"loss": val, "epoch": epoch,
                                     "best_loss": stopper.best_metric})
        log.info("epoch %d (step %d): validation loss %.3f (best %.3f)", epoch, step, val,
                 stopper.best_metric)
        # latest first: a run killed between the two saves resumes from this step.
        save("latest", step, epoch, batch, key)
        if stopper.has_improved:
          ckpts.save("best", step, state, meta_now(epoch))
      elif step % config.train.checkpoint_every == 0:
        save("latest", step, step // steps_per_epoch, batch, key)
    flush()
    if ckpts.latest.latest_step() != step:
      save("latest", step, step // steps_per_epoch, batch, key)
    if ckpts.best.latest_step() is None:
      # No epoch finished yet: the latest state is the best we have.
      ckpts.save("best", step, state, meta_now(step // steps_per_epoch))
  finally:
    clock.close()
    bar.close()
    ckpts.wait()
    ckpts.close()
    logger.close()
  summary = {"step": step, "stop_reason": reason, "best_valid_loss": float(stopper.best_metric)}
  log.info("training stopped (%s) at step %d", reason, step)
  if clock.stopped:
    log.info("%.0f s spent stopped (SIGSTOP, SIGTSTP) are not counted as training",
             clock.stopped)
  return summary
