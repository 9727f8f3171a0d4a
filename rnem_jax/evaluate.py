"""Evaluation and simulation rollouts of a trained model (docs/design.md#metrics, #simulation).

Protocol (as the reference): bit-flip noise on the inputs and a random gamma0,
both from a fixed seed, so numbers are reproducible; targets are clean frames.
Every metric is computed per step t = 0..T-1 (predicting frame t+1) and per
sequence, averaged over all sequences of the split, then summarised:

* ``bce_*``: BCE of max_k psi (the "upper bound" BCE), summed over pixels;
  ``relational_bce_*`` counts only pixels flagged in ``collisions[t]``;
  ``baseline_*``: the copy-the-current-frame prediction on the same pixels;
  ``*_rel`` = model / baseline. ``_last`` = last step, ``_last10`` = mean of
  the last 10 steps.
* ``ari_seq`` (mean over steps) and ``ari_last``: foreground ARI of argmax_k
  gamma_t against the groups of frame t+1; ``confidence_*`` likewise.
* ``fg_confidence_*`` and ``components_used_*``: whether the components split
  the scene, measurable without ground truth (Space Invaders): over the on
  pixels of frame t+1, the mean of max_k gamma_t and the effective number of
  components sharing them (``metrics.components_used``). The symmetric state,
  every component rendering the whole frame, gives 1/K and K.
"""

from __future__ import annotations

import json
import logging
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rnem_jax import data, em, metrics, objects
from rnem_jax.checkpoints import CheckpointError, Checkpoints, workdir_path, write_atomic
from rnem_jax.model import build_network, init_params
from rnem_jax.provenance import provenance
from rnem_jax.train import (check_compatible, check_data_fits_model,
                            create_train_state, em_options, make_mesh, make_optimizer, pad_batch,
                            replicate, shard_batch)

log = logging.getLogger(__name__)

CURVES = ("bce", "baseline_bce", "relational_bce", "baseline_relational_bce", "ari",
          "confidence", "fg_confidence", "components_used")


def _protocol(config) -> dict:
  """How a record was computed: ``protocol``, the evaluation protocol in words (noise, gamma0,
  seed; the same for every model, so runs evaluated alike can be compared) and the model's
  ``e_step_target`` and ``action_tiling``."""
  return {"protocol": f"bit-flip noise p={config.em.noise_prob} on inputs, random gamma0, "
                      f"seed {config.eval.seed}",
          "e_step_target": config.em.e_step_target,
          "action_tiling": config.em.action_tiling}


def step_metrics(network, params, batch: dict, key, *, K: int,
                 num_real_steps: Optional[int] = None, num_groups: int = 16,
                 simulate_input: bool = True, simulate_gamma: bool = True, **em_kwargs) -> dict:
  """Per-step, per-sequence metrics of one batch: each value is ``[T, B]``.

  ``em_kwargs`` (``noise_prob``, ``e_step_distribution``, ``e_step_target``, ...)
  go to :func:`rnem_jax.em.rollout`; ``train.em_options(config)`` gives a config's.

  ``batch``: time-major ``features`` [T+1, B, H, W, 1] and optionally
  ``groups``, ``collisions`` (same shape) and ``actions`` [T+1, B].
  With ``num_real_steps`` (a rollout) two reference curves are added:
  ``held_bce``, the last real input frame (x_{N-1}) held for every later step, and
  ``blank_bce``, an empty frame (what a model that lost its balls scores).
  With the balls' ``positions`` [T+1, B, n, 2], ``radii`` and ``valid`` [1, B, n]
  (``ball_fields``), the object-level sums of :func:`object_sums` are added, for the model
  and (``held_*``, in a rollout) for the held frame.
  """
  x = batch["features"]
  r = em.rollout(network, params, x, key, K=K, actions=batch.get("actions"),
                 num_real_steps=num_real_steps, keep_outputs=True,
                 simulate_input=simulate_input, simulate_gamma=simulate_gamma, **em_kwargs)
  per_step = metrics.per_step
  out = {
      "bce": per_step(metrics.upper_bound_bce)(r.psi, x[1:]),
      "baseline_bce": per_step(metrics.copy_baseline_bce)(x[:-1], x[1:]),
  }
  if num_real_steps is not None:
    T = x.shape[0] - 1
    held = x[jnp.minimum(jnp.arange(T), max(num_real_steps - 1, 0))]
    out["held_bce"] = per_step(metrics.copy_baseline_bce)(held, x[1:])
    out["blank_bce"] = per_step(metrics.copy_baseline_bce)(jnp.zeros_like(x[1:]), x[1:])
  if "collisions" in batch:
    c = batch["collisions"][:-1]
    out["relational_bce"] = per_step(metrics.upper_bound_bce)(r.psi, x[1:], c)
    out["baseline_relational_bce"] = per_step(metrics.copy_baseline_bce)(x[:-1], x[1:], c)
  out["fg_confidence"] = per_step(metrics.confidence)(x[1:], r.gamma)
  out["components_used"] = per_step(metrics.components_used)(x[1:], r.gamma)
  if "groups" in batch:
    g = batch["groups"][1:]
    out["ari"] = per_step(metrics.adjusted_rand_index, num_groups=num_groups)(g, r.gamma)
    out["confidence"] = per_step(metrics.confidence)(g, r.gamma)
  if "positions" in batch:
    out.update(object_sums(r.psi, r.gamma, batch))
    if num_real_steps is not None:
      out.update({f"held_{k}": v for k, v in object_sums(held[:, :, None], None, batch).items()})
  return out


# Per-sequence object sums -> the per-step curves of a rollout record: name -> (num, den).
OBJECT_CURVES = {"balls_kept": ("balls_kept", "balls"), "ball_mass": ("ball_mass_sum", "balls"),
                 "position_error_px": ("position_error_sum", "position_error_count"),
                 "swap_rate": ("swaps", "tracked")}


def object_sums(psi, gamma, batch: dict) -> dict:
  """Per-step, per-sequence ``[T, B]`` counts and sums of the object-level metrics
  (``rnem_jax.objects``; ``OBJECT_CURVES`` turns their means into per-ball rates): valid balls,
  balls kept (still rendered: mean predicted intensity on the true disc > 0.5), the summed
  and counted position error (px) of the kept balls, and identity swaps among the balls kept
  at both t-1 and t, and the summed ball mass (mean predicted intensity on the true disc: a
  ball that fades shows here before it drops out of ``balls_kept``). ``psi``/``gamma``:
  [T, B, K, H, W, 1] (``gamma`` None: from psi)."""
  valid = batch["valid"][0] > 0
  o = objects.object_metrics(psi, gamma, batch["positions"], batch["radii"][0], valid,
                             tuple(psi.shape[3:5]))
  kept = o["kept"] & valid
  err_ok = kept & jnp.isfinite(o["position_error"])
  swaps = o["swap"] & o["tracked"]
  f32 = lambda v: jnp.sum(v, axis=-1).astype(jnp.float32)
  mass = jnp.where(valid, jnp.nan_to_num(o["mass"]), 0.0)
  return {"balls": jnp.broadcast_to(f32(valid), kept.shape[:2]), "balls_kept": f32(kept),
          "ball_mass_sum": f32(mass),
          "position_error_sum": f32(jnp.where(err_ok, o["position_error"], 0.0)),
          "position_error_count": f32(err_ok), "swaps": f32(swaps), "tracked": f32(o["tracked"])}


def ball_fields(examples: list[dict], num_frames: int, max_balls: int) -> dict:
  """``positions`` [T+1, B, max_balls, 2] and ``radii``/``valid`` [1, B, max_balls] of stored
  balls examples, padded to ``max_balls`` (time-major like a batch; padding: valid 0)."""
  B = len(examples)
  pos = np.zeros((num_frames, B, max_balls, 2), np.float32)
  radii = np.zeros((1, B, max_balls), np.float32)
  valid = np.zeros((1, B, max_balls), np.float32)
  for b, ex in enumerate(examples):
    n = len(ex["radii"])
    pos[:, b, :n] = ex["positions"][:num_frames]
    radii[0, b, :n] = ex["radii"]
    valid[0, b, :n] = 1.0
  return {"positions": pos, "radii": radii, "valid": valid}


def summarise(curves: dict[str, np.ndarray]) -> dict:
  """Per-step mean curves ``{name: [T]}`` -> the scalar metrics (docs/design.md#metrics)."""
  out = {}
  for name in ("bce", "relational_bce"):
    if name not in curves:
      continue
    model, base = curves[name], curves[f"baseline_{name}"]
    for suffix, sl in (("last", slice(-1, None)), ("last10", slice(-10, None))):
      m, b = float(np.mean(model[sl])), float(np.mean(base[sl]))
      out[f"{name}_{suffix}"] = m
      out[f"baseline_{name}_{suffix}"] = b
      out[f"{name}_{suffix}_rel"] = m / b if b > 0 else float("nan")
  for name in ("ari", "confidence", "fg_confidence", "components_used"):
    if name in curves:
      out[f"{name}_seq"] = float(np.mean(curves[name]))
      out[f"{name}_last"] = float(curves[name][-1])
  return out


def restore_params(config, workdir: str, network, mesh, which: str = ""):
  """Parameters of the ``which`` checkpoint in ``workdir`` (``""``: ``config.eval.checkpoint``,
  ``"best"`` by default); ``latest`` when there is no ``best`` one. Creates nothing.

  A trainer may replace checkpoints while this reads them: a checkpoint that vanished is read
  again from the newest one (up to three tries).
  """
  which = which or config.eval.checkpoint
  if which not in ("best", "latest"):
    raise ValueError(f"eval.checkpoint must be 'best' or 'latest', got {which!r}")
  tx = make_optimizer(config.train.learning_rate)
  target = replicate(create_train_state(init_params(network, jax.random.key(0)), tx), mesh)
  for attempt in range(3):
    ckpts = Checkpoints(workdir, create=False)
    try:
      source = which if ckpts.steps(which) else "latest"
      steps = ckpts.steps(source)
      if not steps:
        raise CheckpointError(f"no checkpoint in {ckpts.root}: train first (--mode=train)")
      check_compatible(ckpts.restore_meta(source), config, workdir)
      state, _ = ckpts.restore(source, target)
      return state.params, int(state.step)
    except CheckpointError:
      if attempt == 2 or ckpts.steps(source) == steps:
        raise
      log.info("checkpoints in %s changed while reading them; reading again", ckpts.root)
    finally:
      ckpts.close()


def _check_eval_data(config, mesh, dataset: str, T: int, batch_size: int):
  """Builds ``dataset`` if needed and checks it against the model and ``T``; returns its
  ``data.dataset_info``. Any batch size runs on any number of devices (batches are padded)."""
  if batch_size < 1:
    raise ValueError(f"eval batch size must be >= 1, got {batch_size}")
  data_dir = config.data_dir or None
  info = data.dataset_info(dataset, data_dir)   # from the builder's config: nothing built yet
  check_data_fits_model(info, config)
  data.ensure_built(dataset, data_dir)
  if T + 1 > info.num_frames:
    raise ValueError(f"{T} steps need {T + 1} frames; {dataset} has {info.num_frames}")
  return info


def run_metrics(config, params, network, mesh, *, dataset: str, split: str, K: int, T: int,
                batch_size: int, max_sequences: int, seed: int,
                num_real_steps: Optional[int] = None, simulate_input: bool = True,
                simulate_gamma: bool = True, metrics_fn=None,
                with_objects: bool = False) -> tuple[dict, int]:
  """Mean per-step curves over a whole split (every sequence exactly once).

  Sequence i of the split draws its noise and gamma0 from ``fold_in(key(seed), i)``
  (``em.sequence_keys``): the metrics do not depend on the batch size or the
  number of devices or processes. Batches are padded to a multiple of the
  devices; every process reads every sequence.

  ``metrics_fn`` (default :func:`step_metrics`) computes the ``{name: [T, B]}`` curves of one
  batch; it is called with ``step_metrics``'s arguments (``key``: per-sequence keys ``[B]``).
  ``with_objects``: batches also carry the balls' positions and radii (``ball_fields``), for
  the object-level metrics (datasets with balls only).
  """
  metrics_fn = metrics_fn or step_metrics
  info = _check_eval_data(config, mesh, dataset, T, batch_size)
  data_dir = config.data_dir or None
  key = jax.random.key(seed)
  # Replicated outputs: every process can read every sequence's metrics (multi-host).
  fn = jax.jit(lambda p, b, first: metrics_fn(
      network, p, b, em.sequence_keys(key, first, b["features"].shape[1]), K=K,
      num_real_steps=num_real_steps, num_groups=max(info.max_balls, 1),
      simulate_input=simulate_input, simulate_gamma=simulate_gamma, **em_options(config)),
      out_shardings=NamedSharding(mesh, P()))
  sums, count, source = None, 0, None
  if with_objects and not info.max_balls:
    raise ValueError(f"{dataset} has no balls: object-level metrics need a balls dataset")
  batches = data.iterate_batches(dataset, split, batch_size, seed=seed, num_frames=T + 1,
                                 shuffle=False, num_epochs=1, drop_remainder=False,
                                 shard_index=0, shard_count=1, data_dir=data_dir)
  for batch in batches:
    if max_sequences and count >= max_sequences:
      break
    n = batch["features"].shape[1]
    if max_sequences:
      n = min(n, max_sequences - count)
    batch = {k: v[:, :n] for k, v in batch.items()}
    if with_objects:
      source = source or data.load_source(dataset, split, data_dir)
      batch.update(ball_fields([source[i] for i in range(count, count + n)], T + 1,
                               info.max_balls))
    batch, _ = pad_batch(batch, mesh.size)
    out = fn(params, shard_batch(batch, mesh, same_on_every_process=True), jnp.int32(count))
    out = {k: np.asarray(v)[:, :n].astype(np.float64).sum(axis=1) for k, v in out.items()}
    sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
    count += n
  if not count:
    raise ValueError(f"{dataset}:{split} yielded no sequence")
  return {k: v / count for k, v in sums.items()}, count


def _write_json(path, record: dict) -> None:
  """Writes ``record`` to ``path`` (an ``epath.Path``, local or ``gs://``), atomically where the
  filesystem renames (process 0 only; every process computed the same numbers), with the
  code's provenance (git revision, package versions)."""
  record["provenance"] = provenance()   # the caller's record is the file's
  if jax.process_index() == 0:
    write_atomic(path, json.dumps(record, indent=2))
    log.info("wrote %s", path)


def evaluate(config, workdir: str, *, dataset: str = "", K: int = 0, split: str = "",
             output: str = "") -> dict:
  """Evaluates the best checkpoint; writes and returns the metrics JSON record.

  ``dataset``/``K``/``split`` default to ``config.eval`` (then to the training
  dataset and K); e.g. extrapolation: ``dataset="bouncing_balls/balls678mass64", K=8``.
  """
  mesh = make_mesh()
  network = build_network(config.model)
  dataset = dataset or config.eval.dataset or config.dataset
  K = K or config.eval.K or config.em.K
  if K < 1:
    raise ValueError(f"K must be >= 1, got {K}")
  split = split or config.eval.split
  T = config.eval.T or config.em.T
  params, step = restore_params(config, workdir, network, mesh)
  curves, count = run_metrics(config, params, network, mesh, dataset=dataset, split=split, K=K,
                              T=T, batch_size=config.eval.batch_size,
                              max_sequences=config.eval.max_sequences, seed=config.eval.seed)
  record = {
      "model": config.name, "checkpoint_step": step, "dataset": dataset, "split": split,
      "K": K, "T": T, "num_sequences": count,
      **_protocol(config),
      **summarise(curves),
      "curves": {k: [float(x) for x in v] for k, v in curves.items()},
  }
  if not output:
    same = dataset == config.dataset and K == config.em.K
    output = "metrics.json" if same else f"metrics_{dataset.split('/')[-1]}_K{K}.json"
  _write_json(workdir_path(workdir) / output, record)
  return record


def rollout(config, workdir: str, *, num_real_steps: int = 0, num_sim_steps: int = 0,
            dataset: str = "", output: str = "rollout.json", simulate_input: bool = True,
            simulate_gamma: bool = True) -> dict:
  """Simulation (paper §4, Fig. 4): N real steps, then the model feeds itself; per-step BCE and, on
  balls datasets, per-step object metrics: ``balls_kept_per_step`` (the fraction of balls the
  prediction still renders), ``position_error_px_per_step`` (of the kept balls' rendered
  centroid) and ``swap_rate_per_step`` (identity swaps between components), also for the held
  last real frame (``held_*``: a model whose balls stop). On curtain data, balls behind the
  curtain count as not rendered.

  ``simulate_input``/``simulate_gamma``: see :func:`rnem_jax.em.rollout` (both
  on = the reference protocol; the others are diagnostics, see
  :func:`rollout_ablation`). ``output=""``: return the record without writing it.
  """
  mesh = make_mesh()
  network = build_network(config.model)
  n_real = num_real_steps or config.rollout.num_real_steps
  n_sim = num_sim_steps or config.rollout.num_sim_steps
  dataset = dataset or config.rollout.dataset or config.dataset
  with_objects = data.dataset_info(dataset, config.data_dir or None).max_balls > 0
  params, step = restore_params(config, workdir, network, mesh)
  curves, count = run_metrics(config, params, network, mesh, dataset=dataset, split="test",
                              K=config.em.K, T=n_real + n_sim,
                              batch_size=config.rollout.batch_size,
                              max_sequences=config.rollout.max_sequences,
                              seed=config.rollout.seed, num_real_steps=n_real,
                              simulate_input=simulate_input, simulate_gamma=simulate_gamma,
                              with_objects=with_objects)
  record = {
      "model": config.name, "checkpoint_step": step, "dataset": dataset, "K": config.em.K,
      "num_real_steps": n_real, "num_sim_steps": n_sim, "num_sequences": count,
      "simulate_input": simulate_input, "simulate_gamma": simulate_gamma,
      "bce_per_step": [float(x) for x in curves["bce"]],
      "baseline_bce_per_step": [float(x) for x in curves["baseline_bce"]],
      "held_bce_per_step": [float(x) for x in curves["held_bce"]],
      "blank_bce_per_step": [float(x) for x in curves["blank_bce"]],
  }
  if "relational_bce" in curves:
    record["relational_bce_per_step"] = [float(x) for x in curves["relational_bce"]]
  for prefix in ("", "held_") if with_objects else ():
    for name, (num, den) in OBJECT_CURVES.items():
      record[f"{prefix}{name}_per_step"] = [
          float(a / b) if b > 0 else None  # None (JSON null): nothing to measure at this step
          for a, b in zip(curves[prefix + num], curves[prefix + den])]
  if output:
    _write_json(workdir_path(workdir) / output, record)
  return record


def sample_batch(config, num_sequences: int, num_frames: int) -> dict:
  """The first ``num_sequences`` test sequences of the rollout's dataset, as host arrays
  cropped to ``num_frames`` frames: ``features`` is [num_frames, B, H, W, C]."""
  data_dir = config.data_dir or None
  dataset = config.rollout.dataset or config.dataset
  data.ensure_built(dataset, data_dir)
  batches = data.iterate_batches(dataset, "test", num_sequences, seed=0, num_frames=num_frames,
                                 shuffle=False, num_epochs=1, drop_remainder=False,
                                 shard_index=0, shard_count=1, data_dir=data_dir)
  return next(iter(batches))


def model_outputs(config, network, params, batch: dict, seed: int,
                  num_real_steps: Optional[int] = None) -> em.Rollout:
  """``em.rollout`` on a host batch with every per-step output kept (psi, gamma, alpha,
  inputs), fetched to the host; ``num_real_steps`` real steps, then simulation (None: all
  real)."""
  fn = jax.jit(lambda p, x, a, k: em.rollout(
      network, p, x, k, K=config.em.K, actions=a, num_real_steps=num_real_steps,
      keep_outputs=True, **em_options(config)))
  actions = batch.get("actions")
  out = fn(params, jnp.asarray(batch["features"]),
           None if actions is None else jnp.asarray(actions), jax.random.key(seed))
  return jax.device_get(out)


def sample_outputs(config, workdir: str, num_sequences: int = 3) -> dict:
  """What the figures of a run show (``rnem_jax.visualize.render_run``): its best checkpoint
  run on the first ``num_sequences`` test sequences, every per-step output kept.

  Returns a dict: ``step`` (of the checkpoint), ``dataset``; ``panel``: (``em.Rollout``,
  features [T+1, B, H, W, C]) over ``em.T`` real steps (paper Fig. 2); ``rollout``: the same
  over ``rollout.num_real_steps`` real then ``rollout.num_sim_steps`` simulated steps (Fig. 4),
  both cut to the frames the dataset has; ``num_real_steps``.
  """
  network = build_network(config.model)
  params, step = restore_params(config, workdir, network, make_mesh())
  info = data.dataset_info(config.rollout.dataset or config.dataset, config.data_dir or None)
  n_real = config.rollout.num_real_steps
  T_roll = min(n_real + config.rollout.num_sim_steps, info.num_frames - 1)
  T = min(config.em.T, info.num_frames - 1)
  batch = sample_batch(config, num_sequences, max(T, T_roll) + 1)
  crop = lambda n: {k: v[:n + 1] for k, v in batch.items()}
  panel, roll = crop(T), crop(T_roll)
  return {
      "step": step, "dataset": info.name, "num_real_steps": n_real,
      "panel": (model_outputs(config, network, params, panel, config.eval.seed),
                np.asarray(panel["features"])),
      "rollout": (model_outputs(config, network, params, roll, config.rollout.seed, n_real),
                  np.asarray(roll["features"])),
  }


# name -> (simulate_input, simulate_gamma)
ROLLOUT_ABLATION = {
    "simulated": (True, True),        # the reference protocol
    "true_gamma": (True, False),      # own reconstruction as input, gamma from the true frame
    "true_input": (False, True),      # true noisy frame as input, gamma from the threshold
    "real": (False, False),           # no simulation: every step sees the data
}


def rollout_ablation(config, workdir: str, output: str = "rollout_ablation.json") -> dict:
  """Which half of the simulation makes a rollout fail: the four combinations.

  The reference simulation changes two things at once after the real steps:
  the input becomes the model's own soft reconstruction, and gamma comes from
  thresholding psi instead of the true next frame. Running each alone (same
  data, noise and gamma0 as :func:`rollout`) separates a model that cannot
  propagate its own predictions from one that relies on the true-frame gamma.
  Writes ``{variant: bce_per_step}`` plus the reference curves.
  """
  records = {name: rollout(config, workdir, output="", simulate_input=i, simulate_gamma=g)
             for name, (i, g) in ROLLOUT_ABLATION.items()}
  first = records["simulated"]
  record = {k: first[k] for k in ("model", "checkpoint_step", "dataset", "K", "num_real_steps",
                                  "num_sim_steps", "num_sequences", "baseline_bce_per_step",
                                  "held_bce_per_step", "blank_bce_per_step")}
  record["bce_per_step"] = {name: r["bce_per_step"] for name, r in records.items()}
  _write_json(workdir_path(workdir) / output, record)
  return record


# ---------------------------------------------------------------------------
# Object permanence on the occlusion (curtain) set (paper §4 "Hidden Factors", Figure 5).

OCCLUSION_MASKS = ("hidden_partial", "hidden_full", "reappearing", "empty_curtain")


def occlusion_step_sums(network, params, batch: dict, key, *, K: int, **em_kwargs) -> dict:
  """Per-sequence sums over steps ``[B]`` of the prediction ``max_k psi`` on each mask.

  ``batch``: time-major ``features`` [T+1, B, H, W, 1] and the masks of
  :func:`rnem_jax.sim.balls.occlusion_masks` (same shape). For every mask
  ``<name>_prob`` sums the predicted probability of the pixels of frame t+1 it
  flags and ``<name>_pixels`` counts them; ``visible`` are the frame's ``on``
  pixels; ``reappearing_bce`` / ``reappearing_baseline_bce`` are the upper-bound
  and copy-baseline BCE on the reappearing pixels.
  """
  x = batch["features"]
  r = em.rollout(network, params, x, key, K=K, keep_outputs=True, **em_kwargs)
  pred = jnp.max(r.psi, axis=2)  # [T, B, H, W, C]
  axes = (0, 2, 3, 4)
  out = {}
  for name, m in [(n, batch[n][1:]) for n in OCCLUSION_MASKS] + [("visible", x[1:])]:
    out[f"{name}_prob"] = jnp.sum(pred * m, axis=axes)
    out[f"{name}_pixels"] = jnp.sum(m, axis=axes)
  m = batch["reappearing"][1:]
  out["reappearing_bce"] = metrics.per_step(metrics.upper_bound_bce)(r.psi, x[1:], m).sum(0)
  out["reappearing_baseline_bce"] = metrics.per_step(metrics.copy_baseline_bce)(
      x[:-1], x[1:], m).sum(0)
  out["reappearing_frames"] = jnp.sum(jnp.any(m > 0, axis=(2, 3, 4)), axis=0).astype(jnp.float32)
  return out


def occlusion_batch(examples: list[dict], num_frames: int, image_size: int) -> dict:
  """Time-major ``features`` and occlusion masks of stored curtain examples."""
  from rnem_jax.sim import balls

  if any("curtain" not in ex for ex in examples):
    raise ValueError("occlusion metrics need a dataset with a curtain (curtain/...)")
  seqs = []
  for ex in examples:
    masks = balls.occlusion_masks(ex["positions"][:num_frames], ex["radii"], ex["curtain"],
                                  image_size)
    seqs.append({"features": ex["features"][:num_frames], **masks})
  return {k: np.ascontiguousarray(np.stack([s[k] for s in seqs], axis=1), dtype=np.float32)
          for k in seqs[0]}


def occlusion(config, workdir: str, *, dataset: str = "", output: str = "occlusion.json") -> dict:
  """Object permanence of the best checkpoint on the test split of a curtain dataset.

  Same inputs as :func:`evaluate` (noise, gamma0 and seed). Reports, as means
  over pixels of all steps and sequences: ``reappearing_prob``, the probability
  the model gives the pixels of a ball coming out from behind the curtain (it was
  entirely hidden in the frame before; a model that lost the ball predicts ~0,
  the copy baseline exactly 0) and their BCE per pixel; ``hidden_full_prob``,
  how much it draws balls that are entirely behind the curtain (0 in the data:
  drawing them costs BCE but shows the ball is still represented) and
  ``hidden_partial_prob`` the hidden parts of partly visible balls (completing
  the disc), against ``empty_curtain_prob`` (curtain pixels without a ball, the
  control) and ``visible_prob`` (the visible balls' pixels).
  """
  mesh = make_mesh()
  network = build_network(config.model)
  dataset = dataset or config.eval.dataset or config.dataset
  T = config.eval.T or config.em.T
  bs = config.eval.batch_size
  info = _check_eval_data(config, mesh, dataset, T, bs)
  source = data.load_source(dataset, "test", config.data_dir or None)
  n = len(source) if not config.eval.max_sequences else min(len(source),
                                                              config.eval.max_sequences)
  params, step = restore_params(config, workdir, network, mesh)
  key = jax.random.key(config.eval.seed)
  fn = jax.jit(lambda p, b, first: occlusion_step_sums(
      network, p, b, em.sequence_keys(key, first, b["features"].shape[1]), K=config.em.K,
      **em_options(config)), out_shardings=NamedSharding(mesh, P()))
  sums = None
  for start in range(0, n, bs):
    batch = occlusion_batch([source[j] for j in range(start, min(start + bs, n))], T + 1,
                            info.image_size[0])
    batch, m = pad_batch(batch, mesh.size)
    out = fn(params, shard_batch(batch, mesh, same_on_every_process=True), jnp.int32(start))
    out = {k: float(np.asarray(v)[:m].astype(np.float64).sum()) for k, v in out.items()}
    sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
  per_pixel = lambda num, den: sums[num] / sums[den] if sums[den] > 0 else float("nan")
  record = {
      "model": config.name, "checkpoint_step": step, "dataset": dataset, "K": config.em.K,
      "T": T, "num_sequences": n,
      **_protocol(config),
      **{f"{name}_prob": per_pixel(f"{name}_prob", f"{name}_pixels")
         for name in OCCLUSION_MASKS + ("visible",)},
      "reappearing_bce_per_pixel": per_pixel("reappearing_bce", "reappearing_pixels"),
      "reappearing_baseline_bce_per_pixel": per_pixel("reappearing_baseline_bce",
                                                      "reappearing_pixels"),
      **{f"{name}_pixels": int(sums[f"{name}_pixels"]) for name in OCCLUSION_MASKS},
      "reappearing_frames": int(sums["reappearing_frames"]),
  }
  if output:
    _write_json(workdir_path(workdir) / output, record)
  return record
