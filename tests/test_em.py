"""Tests of the E-step, the loss and the scanned EM rollout (rnem_jax.em)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnem_jax import em


def test_e_step_hand_computation_and_normalisation():
  x_next = jnp.array([1.0, 0.0]).reshape(1, 1, 2, 1)            # [B, H, W, C]
  psi = jnp.array([[0.9, 0.2], [0.3, 0.6]]).reshape(1, 2, 1, 2, 1)  # [B, K, H, W, C]
  gamma = em.e_step(x_next, psi)
  eps = 1e-6
  want_pix0 = np.array([0.9 + eps, 0.3 + eps]) / (1.2 + 2 * eps)     # x=1: p = psi
  want_pix1 = np.array([0.8 + eps, 0.4 + eps]) / (1.2 + 2 * eps)     # x=0: p = 1 - psi
  np.testing.assert_allclose(gamma[0, :, 0, 0, 0], want_pix0, rtol=1e-6)
  np.testing.assert_allclose(gamma[0, :, 0, 1, 0], want_pix1, rtol=1e-6)
  big = jax.random.uniform(jax.random.key(0), (3, 5, 8, 8, 1))
  g = em.e_step((big[:, 0] > 0.5).astype(jnp.float32), big)
  np.testing.assert_allclose(jnp.sum(g, axis=1), 1.0, rtol=1e-6)
  gg = em.e_step((big[:, 0] > 0.5).astype(jnp.float32), big, "gaussian")
  np.testing.assert_allclose(jnp.sum(gg, axis=1), 1.0, rtol=1e-6)


def test_gaussian_e_step_hand_computation():
  x_next = jnp.array([0.5]).reshape(1, 1, 1, 1)
  psi = jnp.array([0.5, 0.75]).reshape(1, 2, 1, 1, 1)
  g = em.e_step(x_next, psi, "gaussian", sigma=0.25)
  n = lambda d: math.exp(-0.5 * (d / 0.25) ** 2) / (0.25 * math.sqrt(2 * math.pi)) + 1e-6
  np.testing.assert_allclose(g[0, :, 0, 0, 0], np.array([n(0), n(0.25)]) / (n(0) + n(0.25)),
                             rtol=1e-5)


def test_gamma0_normalised_and_k1():
  g = em.sample_gamma0(jax.random.key(0), (4, 5, 6, 6, 1))
  np.testing.assert_allclose(jnp.sum(g, 1), 1.0, rtol=1e-6)
  assert float(jnp.std(g)) > 0.05
  np.testing.assert_array_equal(em.sample_gamma0(jax.random.key(0), (4, 1, 6, 6, 1)), 1.0)


def test_loss_hand_computation():
  x_next = jnp.array([1.0]).reshape(1, 1, 1, 1)
  psi = jnp.array([0.9, 0.3]).reshape(1, 2, 1, 1, 1)
  gamma = jnp.array([0.75, 0.25]).reshape(1, 2, 1, 1, 1)
  total, intra, inter = em.em_loss(psi, x_next, gamma)
  want_intra = 0.75 * -math.log(0.9) + 0.25 * -math.log(0.3)
  want_inter = 0.25 * -math.log(1 - 0.9) + 0.75 * -math.log(1 - 0.3)
  np.testing.assert_allclose(intra, want_intra, rtol=1e-5)
  np.testing.assert_allclose(inter, want_inter, rtol=1e-5)
  np.testing.assert_allclose(total, want_intra + want_inter, rtol=1e-5)
  # mean over the batch, sum over pixels and K
  x2 = jnp.concatenate([x_next, x_next]).reshape(1, 1, 2, 1)
  t2, _, _ = em.em_loss(jnp.concatenate([psi, psi], 3), x2, jnp.concatenate([gamma, gamma], 3))
  np.testing.assert_allclose(t2, 2 * total, rtol=1e-5)
  tb, _, _ = em.em_loss(jnp.concatenate([psi, psi]), jnp.concatenate([x_next, x_next]),
                        jnp.concatenate([gamma, gamma]))
  np.testing.assert_allclose(tb, total, rtol=1e-5)


def test_no_gradient_through_gamma():
  x_next = jnp.ones((1, 2, 2, 1))
  psi = jnp.full((1, 3, 2, 2, 1), 0.4)
  gamma = jnp.full((1, 3, 2, 2, 1), 1 / 3)
  g = jax.grad(lambda gm: em.em_loss(psi, x_next, gm)[0])(gamma)
  np.testing.assert_array_equal(g, 0.0)
  gi = jax.grad(lambda gm: jnp.sum(em.masked_input(x_next[:, 0], psi, gm)))(gamma)
  np.testing.assert_array_equal(gi, 0.0)
  gp = jax.grad(lambda p: jnp.sum(em.masked_input(x_next[:, 0], p, gamma)))(psi)
  np.testing.assert_allclose(gp, -gamma)


class ToyNetwork:
  """psi = sigmoid(b + w * u); theta accumulates u. Duck-types model.NEMNetwork."""

  def initial_state(self, batch, K):
    return jnp.zeros((batch, K))

  def apply(self, params, u, state, actions=None, mask=None):
    psi = jax.nn.sigmoid(params["b"] + params["w"] * u)
    return state + jnp.mean(u, axis=(2, 3, 4)), psi, jnp.zeros(u.shape[:2] + (u.shape[1],))


def _toy_features(T=4, B=2, S=4, seed=0):
  return (jax.random.uniform(jax.random.key(seed), (T + 1, B, S, S, 1)) < 0.4).astype(jnp.float32)


def test_gradient_flows_through_previous_prediction(monkeypatch):
  net, feats, key = ToyNetwork(), _toy_features(), jax.random.key(3)
  params = {"b": jnp.float32(0.3), "w": jnp.float32(2.0)}

  def step1_loss(b):
    return em.rollout(net, {"b": b, "w": params["w"]}, feats, key, K=3, noise_prob=0.1).loss[1]

  g = jax.grad(step1_loss)(params["b"])
  h = 1e-2
  fd = (step1_loss(params["b"] + h) - step1_loss(params["b"] - h)) / (2 * h)
  np.testing.assert_allclose(g, fd, rtol=2e-2)
  # cutting the path psi_{t-1} -> input of step t changes the gradient: the path exists
  real = em.masked_input
  monkeypatch.setattr(em, "masked_input",
                      lambda x, psi, gm: real(x, jax.lax.stop_gradient(psi), gm))
  g_cut = jax.grad(step1_loss)(params["b"])
  assert abs(float(g - g_cut)) > 0.05 * abs(float(g))


def test_rollout_outputs_and_simulation():
  net, feats = ToyNetwork(), _toy_features(T=6)
  params = {"b": jnp.float32(-0.5), "w": jnp.float32(1.0)}
  r = em.rollout(net, params, feats, jax.random.key(0), K=3, keep_outputs=True)
  assert r.loss.shape == (6,) and r.psi.shape == (6, 2, 3, 4, 4, 1)
  assert r.gamma.shape == (6, 2, 3, 4, 4, 1) and r.alpha.shape == (6, 2, 3, 3)
  np.testing.assert_allclose(r.gamma, em.e_step(feats[1:].reshape(-1, 4, 4, 1),
                                                r.psi.reshape(-1, 3, 4, 4, 1)).reshape(r.gamma.shape),
                             rtol=1e-6)
  # with noise 0 the inputs are the frames
  r0 = em.rollout(net, params, feats, jax.random.key(0), K=3, noise_prob=0.0, keep_outputs=True)
  np.testing.assert_array_equal(r0.inputs, feats[:6])
  # simulation: identical up to step N, then fed with its own reconstruction
  s = em.rollout(net, params, feats, jax.random.key(0), K=3, noise_prob=0.0, num_real_steps=2,
                 keep_outputs=True)
  np.testing.assert_allclose(s.psi[:2], r0.psi[:2], rtol=1e-6)
  np.testing.assert_allclose(s.inputs[2], jnp.sum(s.gamma[1] * s.psi[1], axis=1), rtol=1e-6)
  np.testing.assert_allclose(s.gamma[3], em.simulated_e_step(s.psi[3]), rtol=1e-6)
  assert not np.allclose(s.inputs[3], feats[3])
  # each half of the simulation alone (the rollout-ablation diagnostic)
  tg = em.rollout(net, params, feats, jax.random.key(0), K=3, noise_prob=0.0, num_real_steps=2,
                  keep_outputs=True, simulate_gamma=False)
  np.testing.assert_allclose(tg.inputs[3], jnp.sum(tg.gamma[2] * tg.psi[2], axis=1), rtol=1e-6)
  np.testing.assert_allclose(tg.gamma[3], em.e_step(feats[4], tg.psi[3]), rtol=1e-6)
  ti = em.rollout(net, params, feats, jax.random.key(0), K=3, noise_prob=0.0, num_real_steps=2,
                  keep_outputs=True, simulate_input=False)
  np.testing.assert_array_equal(ti.inputs, feats[:6])
  np.testing.assert_allclose(ti.gamma[3], em.simulated_e_step(ti.psi[3]), rtol=1e-6)
  neither = em.rollout(net, params, feats, jax.random.key(0), K=3, noise_prob=0.0,
                       num_real_steps=2, keep_outputs=True, simulate_input=False,
                       simulate_gamma=False)
  np.testing.assert_allclose(neither.psi, r0.psi, rtol=1e-6)


@pytest.mark.parametrize("target", ["clean", "noisy"])
def test_per_sequence_keys_make_each_sequence_independent_of_its_batch(target):
  """With ``sequence_keys``, a sequence's noise, gamma0 and outputs are the same alone, in
  another batch or at another position; one key for the batch gives other draws."""
  net, feats = ToyNetwork(), _toy_features(T=4, B=5)
  params = {"b": jnp.float32(-0.5), "w": jnp.float32(1.0)}
  keys = em.sequence_keys(jax.random.key(7), 10, 5)       # sequences 10..14
  run = lambda x, k: em.rollout(net, params, x, k, K=3, keep_outputs=True, e_step_target=target)
  whole = run(feats, keys)
  order = jnp.array([4, 1, 3])
  part = run(feats[:, order], keys[order])   # the same sequences, another batch and order
  for name in ("psi", "gamma", "inputs"):
    np.testing.assert_allclose(getattr(part, name), getattr(whole, name)[:, order], rtol=1e-6,
                               err_msg=name)
  np.testing.assert_allclose(part.gamma0, whole.gamma0[order], rtol=1e-6)
  np.testing.assert_allclose(whole.gamma0.sum(axis=1), 1.0, rtol=1e-6)
  single = run(feats, jax.random.key(7))
  assert not np.allclose(single.inputs, whole.inputs)
  with pytest.raises(ValueError, match="3 per-sequence keys for a batch of 5"):
    run(feats, keys[:3])


def test_noisy_e_step_target_uses_the_next_input_frame():
  """e_step_target='noisy': gamma_t is the E-step on exactly the noisy frame fed at step t+1."""
  net, feats = ToyNetwork(), _toy_features(T=6)
  params = {"b": jnp.float32(-0.5), "w": jnp.float32(1.0)}
  key = jax.random.key(3)
  clean = em.rollout(net, params, feats, key, K=3, keep_outputs=True)
  noisy = em.rollout(net, params, feats, key, K=3, keep_outputs=True, e_step_target="noisy")
  # same inputs at step 0, same gamma0: the first prediction agrees
  np.testing.assert_array_equal(noisy.inputs[0], clean.inputs[0])
  np.testing.assert_allclose(noisy.psi[0], clean.psi[0], rtol=1e-6)
  for t in range(5):  # gamma_t against the input of step t+1, not against the clean frame
    np.testing.assert_allclose(noisy.gamma[t], em.e_step(noisy.inputs[t + 1], noisy.psi[t]),
                               rtol=1e-6)
  assert not np.allclose(noisy.gamma[0], em.e_step(feats[1], noisy.psi[0]))
  # the inputs are the same bit flips as the reference's (the variant only moves gamma)
  np.testing.assert_array_equal(noisy.inputs - feats[:6] != 0, clean.inputs - feats[:6] != 0)
  # the loss still targets the clean frame: recompute step 0 by hand
  total, _, _ = em.em_loss(noisy.psi[0], feats[1], noisy.gamma[0])
  np.testing.assert_allclose(noisy.loss[0], total, rtol=1e-6)
  # without noise the two targets are the same frame
  r0 = em.rollout(net, params, feats, key, K=3, noise_prob=0.0, keep_outputs=True)
  n0 = em.rollout(net, params, feats, key, K=3, noise_prob=0.0, keep_outputs=True,
                  e_step_target="noisy")
  np.testing.assert_allclose(n0.gamma, r0.gamma, rtol=1e-6)
  with pytest.raises(ValueError, match="e_step_target"):
    em.rollout(net, params, feats, key, K=3, e_step_target="clear")


def test_reference_action_tiling_hand_computed():
  """Bug A1: component k of sequence b gets the action of sequence (b*K + k) mod B."""
  actions = jnp.array([[10, 11, 12], [20, 21, 22]])          # [T+1 = 2, B = 3]
  got = em.tile_actions_like_reference(actions, K=2)        # [2, 3, 2]
  # rows b*K+k = 0..5 take actions 0,1,2,0,1,2 -> (b=0: 0,1), (b=1: 2,0), (b=2: 1,2)
  np.testing.assert_array_equal(got[0], [[10, 11], [12, 10], [11, 12]])
  np.testing.assert_array_equal(got[1], [[20, 21], [22, 20], [21, 22]])
  one = em.tile_actions_like_reference(actions[:, :1], K=4)  # B = 1: the sequence's own action
  np.testing.assert_array_equal(one, np.repeat(np.asarray(actions[:, :1, None]), 4, axis=2))


class ActionToyNetwork(ToyNetwork):
  """ToyNetwork whose prediction also adds 0.1 * action (per sequence [B] or per component)."""

  def apply(self, params, u, state, actions=None, mask=None):
    a = actions.astype(u.dtype)
    a = a[:, None] if a.ndim == 1 else a
    psi = jax.nn.sigmoid(params["b"] + params["w"] * u + 0.1 * a[:, :, None, None, None])
    return state + jnp.mean(u, axis=(2, 3, 4)), psi, jnp.zeros(u.shape[:2] + (u.shape[1],))


def test_rollout_reference_action_tiling():
  net, feats, key = ActionToyNetwork(), _toy_features(T=3, B=3), jax.random.key(2)
  params = {"b": jnp.float32(-0.5), "w": jnp.float32(1.0)}
  actions = jnp.array([[0, 1, 2]] * 4)
  ours = em.rollout(net, params, feats, key, K=2, actions=actions, keep_outputs=True)
  ref = em.rollout(net, params, feats, key, K=2, actions=actions, keep_outputs=True,
                   action_tiling="reference")
  # step 0 (same input): the logits differ by 0.1 * (the action received - the sequence's own)
  logit = lambda p: np.log(p) - np.log1p(-p)
  source = np.array([[0, 1], [2, 0], [1, 2]])           # (b*K + k) mod B, B=3, K=2
  shift = 0.1 * (source - np.arange(3)[:, None])
  np.testing.assert_allclose(logit(np.asarray(ref.psi[0])) - logit(np.asarray(ours.psi[0])),
                             np.broadcast_to(shift[:, :, None, None, None], ref.psi[0].shape),
                             atol=1e-4)
  with pytest.raises(ValueError, match="action_tiling"):
    em.rollout(net, params, feats, key, K=2, actions=actions, action_tiling="tiled")


def test_unrolled_scan_matches_rolled():
  net, feats = ToyNetwork(), _toy_features(T=5)
  params = {"b": jnp.float32(0.1), "w": jnp.float32(1.5)}
  f = lambda p, u: em.training_loss(net, p, feats, jax.random.key(1), K=2, unroll=u)[0]
  np.testing.assert_allclose(f(params, True), f(params, 1), rtol=1e-6)
  g1, g2 = jax.grad(f)(params, True), jax.grad(f)(params, 1)
  np.testing.assert_allclose(g1["b"], g2["b"], rtol=1e-5)


@pytest.mark.parametrize("splits", [2, 4])
def test_batch_splits_change_nothing(splits):
  """Slicing the batch into independent sub-graphs gives the same rollout, loss and gradient:
  same noise and gamma0 per sequence, slices put back in order, loss a mean over all B."""
  net, feats, key = ActionToyNetwork(), _toy_features(T=4, B=4), jax.random.key(5)
  params = {"b": jnp.float32(-0.3), "w": jnp.float32(1.2)}
  actions = jnp.array([[0, 1, 2, 1]] * 5)
  kw = dict(K=3, actions=actions, action_tiling="reference", num_real_steps=3, keep_outputs=True)
  whole = em.rollout(net, params, feats, key, **kw)
  split = em.rollout(net, params, feats, key, batch_splits=splits, **kw)
  for name in ("loss", "intra", "inter", "psi", "gamma", "alpha", "inputs", "gamma0"):
    np.testing.assert_allclose(getattr(split, name), getattr(whole, name), rtol=1e-5, atol=1e-6,
                               err_msg=name)
  # each sequence's outputs stay its own: differs from the rollout of the batch reversed
  rev = em.rollout(net, params, feats[:, ::-1], key, **kw)
  assert not np.allclose(rev.psi, whole.psi)
  f = lambda p, s, remat: em.training_loss(net, p, feats, key, K=3, actions=actions,
                                           batch_splits=s, remat=remat)[0]
  for remat in (False, True):
    g1, gs = jax.grad(f)(params, 1, remat), jax.grad(f)(params, splits, remat)
    for k in g1:
      np.testing.assert_allclose(gs[k], g1[k], rtol=1e-5)
  with pytest.raises(ValueError, match="batch_splits"):
    em.rollout(net, params, feats, key, K=3, batch_splits=3)


def test_bitflip():
  x = jnp.array([0.0, 1.0, 0.0, 1.0, 0.25])
  m = jnp.array([0.0, 0.0, 1.0, 1.0, 1.0])
  np.testing.assert_allclose(em.bitflip(x, m), [0.0, 1.0, 1.0, 0.0, 0.75])
  flips = em.sample_flips(jax.random.key(0), (200, 200), 0.2)
  assert abs(float(flips.mean()) - 0.2) < 0.01


def test_bad_inputs_raise():
  net, feats = ToyNetwork(), _toy_features()
  p = {"b": jnp.float32(0.0), "w": jnp.float32(1.0)}
  with pytest.raises(ValueError, match="K must be >= 1"):
    em.rollout(net, p, feats, jax.random.key(0), K=0)
  with pytest.raises(ValueError, match=r"\[T\+1, B, H, W, C\]"):
    em.rollout(net, p, feats[0], jax.random.key(0), K=2)
  with pytest.raises(ValueError, match="actions"):
    em.rollout(net, p, feats, jax.random.key(0), K=2, actions=jnp.zeros((5, 3), jnp.int32))
  with pytest.raises(ValueError, match="model expects"):
    em.check_features(feats, 2, (8, 8, 1))
  bad = feats.at[0, 0, 0, 0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match="NaN"):
    em.check_features(bad, 2, finite=True)
  with pytest.raises(ValueError, match="unknown E-step"):
    em.e_step(feats[0], feats[:2].transpose(1, 0, 2, 3, 4), "poisson")


def test_train_sim_steps_is_num_real_steps_from_the_end():
  """train_sim_steps=S runs the last S of the T steps as in simulation: the same psi, gamma,
  inputs and losses (against the true frames) as num_real_steps = T - S."""
  net, feats, key = ToyNetwork(), _toy_features(T=6), jax.random.key(4)
  params = {"b": jnp.float32(-0.5), "w": jnp.float32(1.0)}
  for S in (1, 3, 5):
    train = em.rollout(net, params, feats, key, K=3, train_sim_steps=S, keep_outputs=True)
    evaluation = em.rollout(net, params, feats, key, K=3, num_real_steps=6 - S,
                            keep_outputs=True)
    for name in ("loss", "intra", "inter", "psi", "gamma", "inputs"):
      np.testing.assert_allclose(getattr(train, name), getattr(evaluation, name), rtol=1e-6,
                                 err_msg=f"S={S} {name}")
    # the simulated steps differ from an all-real rollout; the real ones do not
    real = em.rollout(net, params, feats, key, K=3, keep_outputs=True)
    np.testing.assert_allclose(train.psi[:6 - S], real.psi[:6 - S], rtol=1e-6)
    np.testing.assert_allclose(train.loss[:6 - S], real.loss[:6 - S], rtol=1e-6)
    for t in range(6 - S, 6):
      assert not np.allclose(train.loss[t], real.loss[t]), (S, t)
    # the gradient flag changes no forward value
    flow = em.rollout(net, params, feats, key, K=3, train_sim_steps=S, sim_gradient=True,
                      keep_outputs=True)
    np.testing.assert_array_equal(flow.psi, train.psi)
    np.testing.assert_array_equal(flow.loss, train.loss)
  loss, r = em.training_loss(net, params, feats, key, K=3, train_sim_steps=2)
  np.testing.assert_allclose(loss, jnp.mean(em.rollout(net, params, feats, key, K=3,
                                                       num_real_steps=4).loss), rtol=1e-6)
  # S = 0 is the reference: all real
  zero = em.rollout(net, params, feats, key, K=3, train_sim_steps=0, sim_gradient=True)
  np.testing.assert_array_equal(zero.loss, em.rollout(net, params, feats, key, K=3).loss)


SIM_T, SIM_S, SIM_W = 5, 2, jnp.float32(1.5)


def _sim_rollout(b, **kw):
  """The toy rollout of the sim-gradient tests: T = 5 steps, the last S = 2 simulated."""
  return em.rollout(ToyNetwork(), {"b": b, "w": SIM_W}, _toy_features(T=SIM_T),
                    jax.random.key(6), K=3, noise_prob=0.1, train_sim_steps=SIM_S, **kw)


def _unrolled_last_loss(b, b0, fed_back: str):
  """The last step's loss of ``_sim_rollout``, written out step by step, with every gamma the
  constant that the rollout at ``b0`` computed (gamma is never differentiated).

  ``fed_back``: ``"flow"``, the simulated steps' input is sum_k gamma psi of the live psi;
  ``"constant"``, it is the value that sum took at ``b0`` (no gradient path).
  """
  net, feats, key = ToyNetwork(), _toy_features(T=SIM_T), jax.random.key(6)
  base = _sim_rollout(b0, keep_outputs=True)
  flips, _, gamma0 = em.draw_noise(key, feats.shape, 3, 0.1, feats.dtype)
  p = {"b": b, "w": SIM_W}
  psi, gamma, state = jnp.zeros((2, 3, 4, 4, 1)), gamma0, net.initial_state(2, 3)
  for t in range(SIM_T):
    if t < SIM_T - SIM_S:
      x = feats[t]
    elif fed_back == "flow":
      x = jnp.sum(gamma * psi, axis=1)
    else:
      x = jnp.sum(base.gamma[t - 1] * base.psi[t - 1], axis=1)
    state, psi, _ = net.apply(p, em.masked_input(em.bitflip(x, flips[t]), psi, gamma), state)
    gamma = base.gamma[t]
  return em.em_loss(psi, feats[SIM_T], gamma)[0]


def test_sim_gradient_false_cuts_the_fed_back_reconstruction():
  """sim_gradient=False: the gradient of a rollout whose fed-back input sum_k gamma psi is a
  constant; the forward values are those of sim_gradient=True."""
  b0 = jnp.float32(0.2)
  last = lambda b, flow: _sim_rollout(b, sim_gradient=flow).loss[-1]
  for fed_back in ("constant", "flow"):
    np.testing.assert_allclose(_unrolled_last_loss(b0, b0, fed_back), last(b0, False), rtol=1e-5)
  g_cut = jax.grad(last)(b0, False)
  g_const = jax.grad(_unrolled_last_loss)(b0, b0, "constant")
  np.testing.assert_allclose(g_cut, g_const, rtol=1e-4)


def test_sim_gradient_true_flows_through_the_fed_back_reconstruction():
  """sim_gradient=True: the gradient also follows sum_k gamma psi back into the steps that
  produced psi; it matches the written-out rollout and its finite differences (gamma fixed,
  paper appendix A), and differs from the cut gradient."""
  b0, h = jnp.float32(0.2), 1e-2
  last = lambda b, flow: _sim_rollout(b, sim_gradient=flow).loss[-1]
  g_cut, g_flow = jax.grad(last)(b0, False), jax.grad(last)(b0, True)
  assert abs(float(g_flow - g_cut)) > 0.05 * abs(float(g_cut))
  np.testing.assert_allclose(g_flow, jax.grad(_unrolled_last_loss)(b0, b0, "flow"), rtol=1e-4)
  unrolled = lambda b: _unrolled_last_loss(b, b0, "flow")
  fd = (unrolled(b0 + h) - unrolled(b0 - h)) / (2 * h)
  np.testing.assert_allclose(g_flow, fd, rtol=2e-2)
  # the whole training loss: finite, and the flag changes the gradient of every parameter
  f = lambda p, flow: em.training_loss(ToyNetwork(), p, _toy_features(T=SIM_T),
                                       jax.random.key(6), K=3, train_sim_steps=SIM_S,
                                       sim_gradient=flow)[0]
  params = {"b": b0, "w": SIM_W}
  gf, gc = jax.grad(f)(params, True), jax.grad(f)(params, False)
  for k in params:
    assert np.isfinite(gf[k]) and not np.isclose(gf[k], gc[k], rtol=1e-3), k


def test_train_sim_steps_validation():
  net, feats, key = ToyNetwork(), _toy_features(T=4), jax.random.key(0)
  p = {"b": jnp.float32(0.0), "w": jnp.float32(1.0)}
  for bad in (-1, 4, 9):
    with pytest.raises(ValueError, match=r"train_sim_steps must be in \[0, T - 1\] = \[0, 3\]"):
      em.rollout(net, p, feats, key, K=2, train_sim_steps=bad)
  for bad in (1.5, True):
    with pytest.raises(ValueError, match="train_sim_steps must be an integer"):
      em.rollout(net, p, feats, key, K=2, train_sim_steps=bad)
  with pytest.raises(ValueError, match="num_real_steps .* or train_sim_steps .* not both"):
    em.rollout(net, p, feats, key, K=2, num_real_steps=2, train_sim_steps=1)
  em.rollout(net, p, feats, key, K=2, num_real_steps=2, train_sim_steps=0)  # S = 0: allowed
  em.check_train_sim_steps(4, 3)
  with pytest.raises(ValueError, match="T = 4"):
    em.check_train_sim_steps(4, 4)
