"""The (R)NN-EM loop as pure functions (paper §2, Eqs. 2-4; docs/design.md#em-loop).

Layout: frames are time-major ``features: [T+1, B, H, W, C]``; per step the
predictions are ``psi: [B, K, H, W, C]`` and the soft assignments
``gamma: [B, K, H, W, 1]``. One EM iteration is one video frame: step t reads
the noisy frame x~_t, predicts frame t+1 (psi_t) and runs the E-step against the
clean frame x_{t+1}. The T steps are one ``jax.lax.scan``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from rnem_jax.metrics import clipped_bce

CLIP = 1e-6
E_STEP_EPS = 1e-6
E_STEP_TARGETS = ("clean", "noisy")
ACTION_TILINGS = ("per_sequence", "reference")


def bitflip(x: jnp.ndarray, flip: jnp.ndarray) -> jnp.ndarray:
  """Bit-flip noise: ``x`` where ``flip`` is 0, ``1 - x`` where it is 1 (also for real x)."""
  return x + flip * (1.0 - 2.0 * x)


def sample_flips(key: jax.Array, shape, prob: float, dtype=jnp.float32) -> jnp.ndarray:
  """i.i.d. Bernoulli(prob) flip mask of ``shape``."""
  return jax.random.bernoulli(key, prob, shape).astype(dtype)


def sample_gamma0(key: jax.Array, shape) -> jnp.ndarray:
  """Initial soft assignments ``[..., K, H, W, 1]``: |N(0, 1)| normalised over K (1 if K = 1)."""
  if shape[-4] == 1:
    return jnp.ones(shape, jnp.float32)
  g = jnp.abs(jax.random.normal(key, shape, jnp.float32))
  return g / jnp.sum(g, axis=-4, keepdims=True)


def sequence_keys(key: jax.Array, first: Union[int, jnp.ndarray], count: int) -> jax.Array:
  """Per-sequence keys ``[count]``: ``key`` folded with the indices ``first .. first+count-1``.

  A sequence's noise and gamma0 then depend on its index alone, not on the batch
  it is in, its position there, the batch size or the number of devices.
  """
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(first + jnp.arange(count))


def _is_per_sequence(key: jax.Array) -> bool:
  """A typed key array of shape [B] (one key per sequence), not one key."""
  return jnp.ndim(key) == 1 and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def draw_noise(key: jax.Array, features_shape, K: int, noise_prob: float, dtype,
               next_frame_flips: bool = False):
  """The random inputs of a rollout: bit flips of the T input frames and gamma0.

  Args:
    key: one key for the batch, or per-sequence keys ``[B]`` (``sequence_keys``):
      then sequence b's draws depend on ``key[b]`` alone.
    features_shape: ``[T+1, B, H, W, C]``.
    next_frame_flips: also the flips of frames 1..T (``e_step_target="noisy"``;
      frames 1..T-1 share the input flips, frame T's are drawn apart).

  Returns:
    ``(flips [T, B, H, W, C], next_flips [T, B, H, W, C] or None, gamma0 [B, K, H, W, 1])``.
  """
  T, B = features_shape[0] - 1, features_shape[1]
  frame, pixels = tuple(features_shape[2:]), tuple(features_shape[2:4]) + (1,)

  def draw(key, batch):
    k_noise, k_gamma = jax.random.split(key)
    flips = sample_flips(k_noise, (T,) + batch + frame, noise_prob, dtype)
    last = None
    if next_frame_flips:
      last = sample_flips(jax.random.fold_in(k_noise, 1), (1,) + batch + frame, noise_prob, dtype)
    return flips, last, sample_gamma0(k_gamma, batch + (K,) + pixels)

  if _is_per_sequence(key):
    if key.shape[0] != B:
      raise ValueError(f"got {key.shape[0]} per-sequence keys for a batch of {B}")
    flips, last, gamma0 = jax.vmap(lambda k: draw(k, ()), out_axes=(1, 1, 0))(key)
  else:
    flips, last, gamma0 = draw(key, (B,))
  next_flips = None if last is None else jnp.concatenate([flips[1:], last])
  return flips, next_flips, gamma0


def sum_components(v: jnp.ndarray) -> jnp.ndarray:
  """``v: [B, K, ...] -> [B, ...]``, the sum over K as K - 1 elementwise additions.

  The same sum as ``jnp.sum(v, axis=1)`` up to rounding order. XLA:CPU hands a
  reduction over a non-minor axis, fused with its elementwise producers, to a
  slow library kernel; the additions in the E-step and the loss make the whole
  training step faster (docs/design.md#measured-choices).
  """
  return functools.reduce(jnp.add, [v[:, k] for k in range(v.shape[1])])


def masked_input(x_noisy: jnp.ndarray, psi: jnp.ndarray, gamma: jnp.ndarray) -> jnp.ndarray:
  """Network input ``stop_grad(gamma) * (x~ - psi)``.

  Args:
    x_noisy: [B, H, W, C] noisy frame x~_t.
    psi: [B, K, H, W, C] previous predictions psi_{t-1} (gradients flow through them).
    gamma: [B, K, H, W, 1] previous soft assignments (no gradient).

  Returns:
    [B, K, H, W, C].
  """
  return jax.lax.stop_gradient(gamma) * (x_noisy[:, None] - psi)


def e_step(x_next: jnp.ndarray, psi: jnp.ndarray, distribution: str = "bernoulli",
           sigma: float = 0.25) -> jnp.ndarray:
  """Posterior over components per pixel (uniform prior), paper Eq. (2).

  Args:
    x_next: [B, H, W, C] target frame (the clean next frame).
    psi: [B, K, H, W, C] per-component predictions.
    distribution: 'bernoulli' (psi are Bernoulli means) or 'gaussian' (mean psi,
      fixed std ``sigma``).

  Returns:
    gamma: [B, K, H, W, 1], summing to 1 over K. Not differentiated through by
    the loss (callers stop its gradient).
  """
  x = x_next[:, None]
  if distribution == "bernoulli":
    lik = x * psi + (1.0 - x) * (1.0 - psi)
  elif distribution == "gaussian":
    lik = jnp.exp(-0.5 * ((x - psi) / sigma) ** 2) / (sigma * jnp.sqrt(2.0 * jnp.pi))
  else:
    raise ValueError(f"unknown E-step distribution {distribution!r}")
  # [B, K, H, W]: computed without the unit channel axis, which XLA:CPU's fused
  # kernels run one element per vector.
  lik = (lik[..., 0] if lik.shape[-1] == 1 else jnp.sum(lik, axis=-1)) + E_STEP_EPS
  return (lik / sum_components(lik)[:, None])[..., None]


def simulated_e_step(psi: jnp.ndarray, threshold: float = 0.1) -> jnp.ndarray:
  """E-step with no target (simulation): target = [max_k psi > threshold].

  Paper appendix A.1, "Simulation"; docs/design.md#simulation.
  """
  target = (jnp.max(psi, axis=1) > threshold).astype(psi.dtype)
  return e_step(target, psi)


def kl_to_prior(pred: jnp.ndarray, prior: float) -> jnp.ndarray:
  """KL(Bern(prior) || Bern(pred)) with the reference clipping; ``-log(max(1-psi, 1e-6))`` at prior 0."""
  def term(p, q):
    return p * jnp.log(jnp.clip(p / jnp.clip(q, CLIP, 1e6), CLIP, 1e6))
  out = term(1.0 - prior, 1.0 - pred)
  if prior > 0.0:
    out = out + term(prior, pred)
  return out


def em_loss(psi: jnp.ndarray, x_next: jnp.ndarray, gamma: jnp.ndarray, *, prior: float = 0.0,
            inter_weight: float = 1.0, mask: Optional[jnp.ndarray] = None):
  """Paper Eq. (3) as the reference computes it, for one step.

  ``sum_{pixels, K} [gamma * BCE(psi, x) + inter_weight * (1 - gamma) * KL(prior || psi)] / B``

  Args:
    psi: [B, K, H, W, C]; x_next: [B, H, W, C]; gamma: [B, K, H, W, 1] (its
      gradient is stopped here); mask: optional [B, H, W, 1] per-pixel weight
      (e.g. collisions for the relational loss).

  Returns:
    (total, intra, inter) scalars, each summed over pixels and K, mean over B.
  """
  gamma = jax.lax.stop_gradient(gamma)
  if psi.shape[-1] == 1:  # the same sums without the unit channel axis (see e_step)
    psi, x_next, gamma = psi[..., 0], x_next[..., 0], gamma[..., 0]
    mask = None if mask is None else mask[..., 0]
  intra = gamma * clipped_bce(psi, x_next[:, None])
  inter = (1.0 - gamma) * kl_to_prior(psi, prior)
  if mask is not None:
    intra, inter = intra * mask[:, None], inter * mask[:, None]
  B = psi.shape[0]
  intra, inter = jnp.sum(sum_components(intra)) / B, jnp.sum(sum_components(inter)) / B
  return intra + inter_weight * inter, intra, inter


class Rollout(NamedTuple):
  """Per-step outputs of ``rollout`` (leading axis = step t = 0..T-1).

  ``psi``/``gamma``/``alpha``/``inputs`` are ``None`` unless ``keep_outputs``.
  """

  loss: jnp.ndarray            # [T] total loss L_t
  intra: jnp.ndarray           # [T]
  inter: jnp.ndarray           # [T]
  psi: Any = None              # [T, B, K, H, W, C] predictions of frame t+1
  gamma: Any = None            # [T, B, K, H, W, 1] E-step on frame t+1
  alpha: Any = None            # [T, B, K, K] attention
  inputs: Any = None           # [T, B, H, W, C] noisy frames fed to the network
  gamma0: Any = None           # [B, K, H, W, 1] the random initial assignment


def tile_actions_like_reference(actions: jnp.ndarray, K: int) -> jnp.ndarray:
  """The authors' code's action tiling (bug A1, docs/design.md#a1-action-tiling), a diagnostic.

  ``actions: [T+1, B] -> [T+1, B, K]`` where component k of sequence b gets the
  action of sequence (b*K + k) mod B: the reference tiles the [B, A] embedding
  along the batch axis while its state rows are ordered b*K + k. For B > 1 the
  components of one sequence then see different actions, mostly other
  sequences' (an input that differs between components); for B = 1 it is the
  per-sequence action.
  """
  B = actions.shape[1]
  source = (jnp.arange(B)[:, None] * K + jnp.arange(K)[None, :]) % B   # [B, K]
  return actions[:, source]


def check_features(features, K: int, image_shape=None, actions=None, finite: bool = False) -> None:
  """Validates rollout inputs; raises ValueError naming the problem.

  ``finite=True`` also rejects NaN/Inf, which needs concrete (non-traced)
  arrays: call it before the jitted step.
  """
  if K < 1:
    raise ValueError(f"K must be >= 1, got {K}")
  if features.ndim != 5:
    raise ValueError(f"features must be [T+1, B, H, W, C]; got shape {features.shape}")
  if features.shape[0] < 2:
    raise ValueError(f"need at least 2 frames (T >= 1); got {features.shape[0]}")
  if image_shape is not None and tuple(features.shape[2:]) != tuple(image_shape):
    raise ValueError(
        f"frames are {tuple(features.shape[2:])} but the model expects {tuple(image_shape)}")
  if actions is not None and tuple(actions.shape) != tuple(features.shape[:2]):
    raise ValueError(
        f"actions must be [T+1, B] = {features.shape[:2]}; got {actions.shape}")
  if finite:
    if isinstance(features, jax.core.Tracer):
      raise ValueError("finite=True needs concrete arrays: check the batch before jit")
    if not bool(jnp.all(jnp.isfinite(features))):
      raise ValueError("features contain NaN or Inf")


def rollout(network, params, features: jnp.ndarray, key: jax.Array, *, K: int,
            noise_prob: float = 0.2, actions: Optional[jnp.ndarray] = None,
            num_real_steps: Optional[int] = None, e_step_distribution: str = "bernoulli",
            prior: float = 0.0, inter_weight: float = 1.0, keep_outputs: bool = False,
            unroll: Union[int, bool] = 1, remat: bool = False, simulate_input: bool = True,
            simulate_gamma: bool = True, e_step_target: str = "clean",
            action_tiling: str = "per_sequence", batch_splits: int = 1,
            train_sim_steps: int = 0, sim_gradient: bool = False) -> Rollout:
  """The full EM rollout over T = features.shape[0] - 1 steps as one ``lax.scan``.

  Args:
    network: a ``model.NEMNetwork`` (its ``apply`` is the M-step).
    params: its parameters.
    features: [T+1, B, H, W, C] clean binary frames.
    key: PRNG key for the bit-flip noise and gamma0: one for the batch, or one
      per sequence ``[B]`` (``sequence_keys``; training and evaluation use
      these, so results do not depend on how sequences are batched or sharded).
    K: number of components (any K >= 1, independent of the parameters).
    noise_prob: bit-flip probability on the network input (targets stay clean).
    e_step_target: which frame t+1 the E-step compares psi_t with. ``"clean"``
      (the reference): the clean x_{t+1}, so the gamma that masks the next
      input has seen the clean version of that frame. ``"noisy"`` (a variant):
      the noisy x~_{t+1} the network is fed at step t+1 (the same bit flips),
      so gamma uses nothing the network is not given. The loss target stays
      the clean frame either way.
    actions: [T+1, B] int actions, for networks built with actions.
    action_tiling: ``"per_sequence"`` (ours): every component of a sequence
      gets its action. ``"reference"`` (a diagnostic): the reference code's
      bug A1, see :func:`tile_actions_like_reference`.
    num_real_steps: simulation (paper §4 "Simulation", appendix A.1; docs/design.md#simulation):
      from step N on, the input is the model's own soft reconstruction
      sum_k gamma psi (bit-flip noise is applied to it as to a real frame) and
      gamma comes from the thresholded max of psi instead of the true frame; the
      loss still targets the true frame. ``None``: all real (or see
      ``train_sim_steps``). For evaluation rollouts.
    train_sim_steps: S, simulation-trained models: the last S of the T steps run
      as in simulation, i.e. ``num_real_steps = T - S`` (S = 0: all real, the
      reference). Must be in [0, T - 1] (at least one real step) and cannot be
      combined with ``num_real_steps``: one names the split for training (from
      the config, relative to the end of each training sequence), the other for
      an evaluation rollout (absolute).
    sim_gradient: whether gradients flow through the fed-back reconstruction
      sum_k gamma psi of the simulated steps into the steps that produced psi
      (gamma stays a constant, as everywhere: paper appendix A, "not
      back-propagating any gradients through gamma"). ``False`` (the evaluation
      behaviour) stops them. No effect without simulated steps.
    simulate_input, simulate_gamma: which half of the simulation to apply in the
      simulated steps (both by default, as the reference). Switching one off is
      a diagnostic: ``simulate_gamma=False`` keeps gamma from the true next
      frame; ``simulate_input=False`` keeps the true (noisy) frame as input.
    keep_outputs: also return psi, gamma, alpha and the inputs per step.
    unroll: ``lax.scan`` unroll factor (``True`` = fully unrolled); see
      ``train.py`` for why training unrolls.
    remat: rematerialise each step in the backward pass (saves memory).
    batch_splits: run each EM step as this many independent sub-graphs, one per
      equal slice of the batch (same noise, gamma0 and loss: the loss is a mean
      over B). The maths is unchanged; XLA:CPU runs the slices' ops side by side
      on its threads, which the batch's small ops alone do not fill (see
      ``train.py``). B must be divisible by it.

  Returns:
    a ``Rollout``.
  """
  check_features(features, K, None, actions)
  if e_step_target not in E_STEP_TARGETS:
    raise ValueError(f"e_step_target must be one of {E_STEP_TARGETS}, got {e_step_target!r}")
  if action_tiling not in ACTION_TILINGS:
    raise ValueError(f"action_tiling must be one of {ACTION_TILINGS}, got {action_tiling!r}")
  if actions is not None and action_tiling == "reference":
    actions = tile_actions_like_reference(actions, K)
  T = features.shape[0] - 1
  B = features.shape[1]
  num_real_steps = _real_steps(T, num_real_steps, train_sim_steps)
  if batch_splits < 1 or B % batch_splits:
    raise ValueError(f"batch_splits must be >= 1 and divide B = {B}; got {batch_splits}")
  flips, next_flips, gamma0 = draw_noise(key, features.shape, K, noise_prob, features.dtype,
                                         next_frame_flips=e_step_target == "noisy")
  psi0 = jnp.zeros((B, K) + features.shape[2:], features.dtype)
  state0 = network.initial_state(B, K)
  n_real = T if num_real_steps is None else int(num_real_steps)
  simulate = jnp.arange(T) >= n_real

  def step(carry, xs):
    state, psi, gamma = carry
    x_t, x_next, flip, next_flip, sim, a_t = xs
    if num_real_steps is not None and simulate_input:
      own = jnp.sum(jax.lax.stop_gradient(gamma) * psi, axis=1)
      x_t = jnp.where(sim, own if sim_gradient else jax.lax.stop_gradient(own), x_t)
    x_in = bitflip(x_t, flip)
    u = masked_input(x_in, psi, gamma)
    state, psi, alpha = network.apply(params, u, state, a_t)
    target = x_next if next_flip is None else bitflip(x_next, next_flip)
    gamma = e_step(target, psi, e_step_distribution)
    if num_real_steps is not None and simulate_gamma:
      gamma = jnp.where(sim, simulated_e_step(psi), gamma)
    total, intra, inter = em_loss(psi, x_next, gamma, prior=prior, inter_weight=inter_weight)
    out = (total, intra, inter)
    if keep_outputs:
      out += (psi, gamma, alpha, x_in)
    return (state, psi, gamma), out

  a_xs = None if actions is None else actions[:T]
  carry0 = (state0, psi0, gamma0)
  xs = (features[:T], features[1:], flips, next_flips, simulate, a_xs)
  if batch_splits > 1:
    step, carry0, xs = _split_batch(step, carry0, xs, batch_splits)
  if remat:
    step = jax.checkpoint(step)
  _, out = jax.lax.scan(step, carry0, xs, unroll=unroll)
  if keep_outputs:
    return Rollout(*out, gamma0=gamma0)
  return Rollout(*out)


def check_train_sim_steps(T: int, train_sim_steps: int) -> None:
  """Raises ValueError unless ``train_sim_steps`` is an integer in [0, T - 1] (a T-step
  training rollout keeps at least one real step). For config validation before training."""
  if isinstance(train_sim_steps, bool) or int(train_sim_steps) != train_sim_steps:
    raise ValueError(f"train_sim_steps must be an integer, got {train_sim_steps!r}")
  if not 0 <= train_sim_steps <= T - 1:
    raise ValueError(f"train_sim_steps must be in [0, T - 1] = [0, {T - 1}] (at least one real "
                     f"step) for T = {T} steps; got {train_sim_steps}")


def _real_steps(T: int, num_real_steps: Optional[int], train_sim_steps: int) -> Optional[int]:
  """The number of real steps N of a T-step rollout (``None``: all real) from ``rollout``'s
  ``num_real_steps`` or ``train_sim_steps`` (N = T - S); raises ValueError for a bad S."""
  check_train_sim_steps(T, train_sim_steps)
  if train_sim_steps == 0:
    return num_real_steps
  if num_real_steps is not None:
    raise ValueError(
        f"give num_real_steps (an evaluation rollout; got {num_real_steps}) or train_sim_steps "
        f"(simulation training; got {train_sim_steps}), not both")
  return T - int(train_sim_steps)


def _split_batch(step, carry0, xs, splits: int):
  """``(step, carry0, xs)`` of ``rollout``'s scan rewritten to run ``splits`` equal batch
  slices as independent sub-graphs of one scan step.

  The carry (``[B, ...]`` leaves) becomes a tuple of per-slice carries; the
  per-step inputs ``(x_t, x_next, flip, next_flip, sim, a_t)`` (``[T, B, ...]``,
  ``sim [T]`` shared) are sliced on B. Each slice's losses are means over its
  sequences, so their mean is the whole batch's; kept outputs are concatenated
  back on B.
  """
  B = carry0[1].shape[0]
  b = B // splits

  def part(tree, i, axis):
    return jax.tree_util.tree_map(lambda a: jax.lax.slice_in_dim(a, i * b, (i + 1) * b, axis=axis),
                                  tree)

  x_t, x_next, flip, next_flip, sim, a_t = xs
  batched = (x_t, x_next, flip, next_flip, a_t)
  split_xs = (tuple(part(batched, i, 1) for i in range(splits)), sim)
  split_carry = tuple(part(carry0, i, 0) for i in range(splits))

  def split_step(carries, xs):
    parts, sim = xs
    results = []
    for carry, (x_t, x_next, flip, next_flip, a_t) in zip(carries, parts):
      results.append(step(carry, (x_t, x_next, flip, next_flip, sim, a_t)))
    carries = tuple(r[0] for r in results)
    outs = [r[1] for r in results]
    losses = tuple(sum(o[j] for o in outs) / splits for j in range(3))
    kept = tuple(jnp.concatenate([o[j] for o in outs]) for j in range(3, len(outs[0])))
    return carries, losses + kept  # kept: psi, gamma, alpha, inputs when keep_outputs

  return split_step, split_carry, split_xs


def training_loss(network, params, features, key, *, K: int, actions=None, **kwargs):
  """Mean over the T steps of the EM loss (docs/design.md#loss), and the rollout's losses.

  With ``train_sim_steps=S`` (and ``sim_gradient``; see :func:`rollout`) the last S terms are
  the losses of simulated steps against the true frames: the objective of the ``*_sim`` models.
  """
  r = rollout(network, params, features, key, K=K, actions=actions, **kwargs)
  return jnp.mean(r.loss), r
