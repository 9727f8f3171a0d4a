"""Tests of layers, cells and the assembled network (rnem_jax.layers/cells/model)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnem_jax import cells, layers
from rnem_jax import model as M


def _n_params(cfg):
  net = M.build_network(cfg)
  shapes = jax.eval_shape(lambda: M.init_params(net, jax.random.key(0)))
  return M.count_params(shapes)


@pytest.mark.parametrize("cell,expected", [
    ("rnem", 4_951_978), ("rnem_noatt", 4_926_577), ("rnn", 4_611_827), ("lstm", 5_185_077)])
def test_parameter_counts_match_reference(cell, expected):
  assert _n_params(M.default_model_config(cell=cell)) == expected


def test_atari_parameter_count():
  cfg = M.default_model_config(architecture="atari", image_size=84, num_actions=6)
  assert _n_params(cfg) == 2_331_216


def test_nearest_resize_uses_legacy_tf_rule():
  assert layers.nearest_resize_indices(10, 21) == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6,
                                                   7, 7, 8, 8, 9, 9]
  x = jnp.arange(10.0).reshape(1, 10, 1, 1) * jnp.ones((1, 1, 10, 1))
  y = layers.nearest_resize(x, (21, 21))
  np.testing.assert_array_equal(y[0, :, 0, 0], layers.nearest_resize_indices(10, 21))
  z = layers.nearest_resize(x, (20, 20))
  np.testing.assert_array_equal(z[0, :, 0, 0], np.repeat(np.arange(10.0), 2))


def test_layer_norm_over_all_non_batch_axes():
  class LN(M.nn.Module):
    @M.nn.compact
    def __call__(self, x):
      return layers.layer_norm(x)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3)) * 5 + 2
  mdl = LN()
  p = mdl.init(jax.random.key(1), x)
  assert p["params"]["LayerNorm_0"]["scale"].shape == (3,)
  y = mdl.apply(p, x)
  np.testing.assert_allclose(jnp.mean(y, axis=(1, 2, 3)), 0.0, atol=1e-5)
  np.testing.assert_allclose(jnp.var(y, axis=(1, 2, 3)), 1.0, rtol=1e-4)


def test_rnn_cell_hand_computation():
  cell = cells.InteractionCell(hidden=3, interaction="identity")
  z = jax.random.normal(jax.random.key(0), (2, 4, 5))
  theta = jax.random.uniform(jax.random.key(1), (2, 4, 3))
  p = cell.init(jax.random.key(2), z, theta)
  new_theta, y, alpha = cell.apply(p, z, theta)
  W = p["params"]["linear"]["kernel"]
  o = np.concatenate([theta, z], -1) @ W + p["params"]["linear"]["bias"]
  np.testing.assert_allclose(new_theta, 1 / (1 + np.exp(-o)), rtol=1e-5)
  on = (o - o.mean(-1, keepdims=True)) / np.sqrt(o.var(-1, keepdims=True) + 1e-12)
  np.testing.assert_allclose(y, 1 / (1 + np.exp(-on)), rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(alpha, 0.0)


def test_lstm_cell_hand_computation():
  cell = cells.LayerNormLSTMCell(hidden=3)
  z = jax.random.normal(jax.random.key(0), (2, 1, 5))
  c, h = (jax.random.normal(jax.random.key(k), (2, 1, 3)) for k in (1, 2))
  p = cell.init(jax.random.key(3), z, (c, h))
  (c2, h2), y, _ = cell.apply(p, z, (c, h))
  g = np.concatenate([z, h], -1) @ p["params"]["gates"]["kernel"]
  norm = lambda v: (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-12)
  sig = lambda v: 1 / (1 + np.exp(-v))
  i, j, f, o = (norm(v) for v in np.split(g, 4, -1))
  want_c = norm(np.asarray(c) * sig(f + 1.0) + sig(i) * np.tanh(j))
  np.testing.assert_allclose(c2, want_c, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(h2, np.tanh(want_c) * sig(o), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(y, h2)


def _tiny_net(cell="rnem", num_actions=0):
  return M.build_network(M.default_model_config(
      image_size=16, cell=cell, hidden=8, interaction_sizes=(8, 8, 8, 4), num_actions=num_actions))


@pytest.mark.parametrize("cell", ["rnem", "rnem_noatt", "rnn", "lstm"])
def test_network_step_shapes_any_k(cell):
  net = _tiny_net(cell)
  apply = jax.jit(net.apply)   # one program per input shape, not one per operation
  params = M.init_params(net, jax.random.key(0), K=5)
  for K in (5, 8, 1):
    u = jax.random.normal(jax.random.key(K), (2, K, 16, 16, 1))
    state, psi, alpha = apply(params, u, net.initial_state(2, K))
    assert psi.shape == (2, K, 16, 16, 1) and alpha.shape == (2, K, K)
    assert np.all((np.asarray(psi) > 0) & (np.asarray(psi) < 1))


def test_network_is_permutation_equivariant_in_k():
  net = _tiny_net()
  apply = jax.jit(net.apply)   # one program per input shape, not one per operation
  params = M.init_params(net, jax.random.key(0), K=4)
  u = jax.random.normal(jax.random.key(1), (2, 4, 16, 16, 1))
  theta = jax.random.uniform(jax.random.key(2), (2, 4, 8))
  perm = np.array([2, 0, 3, 1])
  s, psi, a = apply(params, u, theta)
  sp, psip, ap = apply(params, u[:, perm], theta[:, perm])
  np.testing.assert_allclose(psip, psi[:, perm], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(sp, s[:, perm], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ap, a[:, perm][:, :, perm], rtol=1e-5, atol=1e-6)


def test_actions_reach_each_sequence_of_the_batch():
  net = _tiny_net(num_actions=4)
  apply = jax.jit(net.apply)   # one program per input shape, not one per operation
  params = M.init_params(net, jax.random.key(0), K=3)
  u = jnp.zeros((3, 3, 16, 16, 1))
  state = net.initial_state(3, 3)
  _, psi_a, _ = apply(params, u, state, jnp.array([0, 1, 2]))
  _, psi_b, _ = apply(params, u, state, jnp.array([0, 1, 3]))
  # only sequence 2 changed its action: only its components change (bug A1 would mix them)
  np.testing.assert_allclose(psi_a[:2], psi_b[:2], rtol=1e-6)
  assert not np.allclose(psi_a[2], psi_b[2])
  with pytest.raises(ValueError, match="pass actions"):
    net.apply(params, u, state)
  with pytest.raises(ValueError, match=r"\[B, K\]"):
    net.apply(params, u, state, jnp.zeros((3, 2), jnp.int32))


def test_per_component_actions():
  """[B, K] actions (the bug-A1 diagnostic): equal columns = the per-sequence action; a
  component's action reaches that component's own prediction."""
  net = _tiny_net(num_actions=4)
  apply = jax.jit(net.apply)   # one program per input shape, not one per operation
  params = M.init_params(net, jax.random.key(0), K=3)
  u = jax.random.normal(jax.random.key(1), (2, 3, 16, 16, 1))
  state = net.initial_state(2, 3)
  a = jnp.array([1, 3])
  _, psi, alpha = apply(params, u, state, a)
  _, psi_k, alpha_k = apply(params, u, state, jnp.repeat(a[:, None], 3, axis=1))
  np.testing.assert_allclose(psi_k, psi, rtol=1e-6)
  np.testing.assert_allclose(alpha_k, alpha, rtol=1e-6)
  # only component 1 of sequence 0 changes its action: sequence 1 is untouched, and
  # component 1 changes (the others only through Upsilon's context)
  _, psi_c, _ = apply(params, u, state, jnp.array([[1, 2, 1], [3, 3, 3]]))
  np.testing.assert_allclose(psi_c[1], psi[1], rtol=1e-6)
  assert not np.allclose(psi_c[0, 1], psi[0, 1])


def test_bad_shapes_and_configs_raise():
  with pytest.raises(ValueError, match="multiple of 8"):
    M.build_network(M.default_model_config(image_size=30))
  with pytest.raises(ValueError, match="84x84"):
    M.build_network(M.default_model_config(architecture="atari", image_size=64))
  with pytest.raises(ValueError, match="unknown cell"):
    M.build_network(M.default_model_config(cell="gru"))
  net = _tiny_net()
  params = M.init_params(net, jax.random.key(0))
  with pytest.raises(ValueError, match="network input must be"):
    net.apply(params, jnp.zeros((2, 3, 32, 32, 1)), net.initial_state(2, 3))
  with pytest.raises(ValueError, match="network input must be"):
    net.apply(params, jnp.zeros((2, 3, 16, 16)), net.initial_state(2, 3))
