"""Tests of Upsilon (rnem_jax.interaction) against its defining properties and a slow oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnem_jax.interaction import IdentityInteraction, RNEMInteraction

SMALL = dict(enc_size=12, embed_size=10, effect_size=9, attention_size=7)


def _theta(key, B=3, K=5, M=6):
  return jax.random.normal(jax.random.key(key), (B, K, M))


def _init(module, theta):
  return module.init(jax.random.key(42), theta)


def _np_dense_ln(p, x, act, use_ln=True):
  y = x @ np.asarray(p["Dense_0"]["kernel"]) + np.asarray(p["Dense_0"]["bias"])
  if use_ln:
    mu = y.mean(-1, keepdims=True)
    var = ((y - mu) ** 2).mean(-1, keepdims=True)
    y = (y - mu) / np.sqrt(var + 1e-12) * np.asarray(p["LayerNorm_0"]["scale"]) + np.asarray(
        p["LayerNorm_0"]["bias"])
  return {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh,
          "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[act](y)


def _slow_upsilon(params, theta, use_attention=True, mask=None):
  """Eq. (5) written as an explicit loop over (focus, context) pairs, in numpy."""
  p = params["params"]
  theta = np.asarray(theta, np.float64)
  B, K, _ = theta.shape
  outs, alphas = [], np.zeros((B, K, K))
  for b in range(B):
    hat = [_np_dense_ln(p["enc"], theta[b, k], "relu") for k in range(K)]
    rows = []
    for k in range(K):
      E = 0.0
      for i in range(K):
        if i == k or (mask is not None and mask[b, i] == 0):
          continue
        xi = _np_dense_ln(p["pair"]["emb"], np.concatenate([hat[k], hat[i]]), "relu")
        e = _np_dense_ln(p["pair"]["eff"], xi, "relu")
        a = 1.0
        if use_attention:
          h = _np_dense_ln(p["pair"]["att_hidden"], xi, "tanh")
          a = _np_dense_ln(p["pair"]["att_out"], h, "sigmoid", use_ln=False)[0]
        alphas[b, k, i] = a
        E = E + a * e
      E = np.zeros_like(hat[k][: SMALL["effect_size"]]) if np.isscalar(E) else E
      rows.append(np.concatenate([hat[k], E]))
    outs.append(rows)
  return np.asarray(outs), alphas


@pytest.mark.parametrize("use_attention", [True, False])
def test_matches_slow_pair_loop(use_attention):
  theta = _theta(0)
  ups = RNEMInteraction(**SMALL, use_attention=use_attention)
  params = _init(ups, theta)
  out, alpha = ups.apply(params, theta)
  want_out, want_alpha = _slow_upsilon(params, theta, use_attention)
  np.testing.assert_allclose(out, want_out, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(alpha, want_alpha, rtol=2e-4, atol=2e-6)


def test_mask_removes_padded_contexts():
  theta = _theta(1)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 1]], np.float32)
  ups = RNEMInteraction(**SMALL)
  params = _init(ups, theta)
  out, alpha = ups.apply(params, theta, jnp.asarray(mask))
  want_out, want_alpha = _slow_upsilon(params, theta, True, mask)
  np.testing.assert_allclose(out, want_out, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(alpha, want_alpha, rtol=2e-4, atol=2e-6)
  assert np.all(np.asarray(alpha)[mask[:, None, :].repeat(5, 1) == 0] == 0)


def test_permutation_equivariant():
  theta = _theta(2, K=6)
  ups = RNEMInteraction(**SMALL)
  params = _init(ups, theta)
  perm = np.array([3, 0, 5, 1, 4, 2])
  out, alpha = ups.apply(params, theta)
  out_p, alpha_p = ups.apply(params, theta[:, perm])
  np.testing.assert_allclose(out_p, out[:, perm], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(alpha_p, alpha[:, perm][:, :, perm], rtol=1e-5, atol=1e-6)
  # and not trivially: components do influence each other
  assert not np.allclose(out[:, 0, SMALL["enc_size"]:], out[:, 1, SMALL["enc_size"]:])


def test_any_K_with_the_same_weights():
  ups = RNEMInteraction(**SMALL)
  params = _init(ups, _theta(3, K=5))
  for K in (8, 2):
    out, alpha = ups.apply(params, _theta(4, K=K))
    assert out.shape == (3, K, SMALL["enc_size"] + SMALL["effect_size"])
    assert alpha.shape == (3, K, K)
    assert np.all(np.isfinite(out))


def test_k1_has_zero_effect():
  ups = RNEMInteraction(**SMALL)
  params = _init(ups, _theta(3, K=5))
  out, alpha = ups.apply(params, _theta(5, K=1))
  np.testing.assert_array_equal(out[..., SMALL["enc_size"]:], 0.0)
  np.testing.assert_array_equal(alpha, 0.0)
  assert np.any(out[..., : SMALL["enc_size"]] != 0)


def test_alpha_diagonal_zero_and_ones_without_attention():
  theta = _theta(6)
  ups = RNEMInteraction(**SMALL)
  _, alpha = ups.apply(_init(ups, theta), theta)
  np.testing.assert_array_equal(np.diagonal(alpha, axis1=-2, axis2=-1), 0.0)
  off = ~np.eye(5, dtype=bool)
  assert np.all((np.asarray(alpha)[:, off] > 0) & (np.asarray(alpha)[:, off] < 1))
  noatt = RNEMInteraction(**SMALL, use_attention=False)
  _, alpha = noatt.apply(_init(noatt, theta), theta)
  np.testing.assert_array_equal(alpha, np.broadcast_to(off.astype(np.float32), alpha.shape))


def test_extra_leading_axes_and_transforms():
  theta = jax.random.normal(jax.random.key(7), (2, 3, 4, 6))
  ups = RNEMInteraction(**SMALL)
  params = _init(ups, theta)
  out, _ = jax.jit(ups.apply)(params, theta)
  flat, _ = ups.apply(params, theta.reshape(6, 4, 6))
  np.testing.assert_allclose(out.reshape(6, 4, -1), flat, rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda t: jnp.sum(ups.apply(params, t)[0][..., SMALL["enc_size"]:]))(theta)
  # the effect on each focus depends on the other components' theta
  assert np.all(np.abs(np.asarray(grads)).sum(-1) > 0)


def test_identity_interaction():
  theta = _theta(8)
  ident = IdentityInteraction()
  out, alpha = ident.apply(ident.init(jax.random.key(0), theta), theta)
  np.testing.assert_array_equal(out, theta)
  np.testing.assert_array_equal(alpha, 0.0)


def test_bad_shapes_raise():
  ups = RNEMInteraction(**SMALL)
  with pytest.raises(ValueError, match="shape"):
    ups.init(jax.random.key(0), jnp.zeros((5,)))
  with pytest.raises(ValueError, match="K must be >= 1"):
    ups.init(jax.random.key(0), jnp.zeros((2, 0, 6)))
  with pytest.raises(ValueError, match="mask"):
    ups.init(jax.random.key(0), jnp.zeros((2, 3, 6)), jnp.ones((2, 4)))
