"""The interaction function Upsilon of R-NEM (paper Eq. 5) as a reusable library.

Given K object representations ``theta: [..., K, M]``, ``RNEMInteraction``
computes for every component k

    theta_hat_k = MLP_enc(theta_k)
    xi_{k,i}    = MLP_emb([theta_hat_k ; theta_hat_i])      for every context i != k
    e_{k,i}     = MLP_eff(xi_{k,i})
    alpha_{k,i} = MLP_att(xi_{k,i})                           (or 1 without attention)
    E_k         = sum_{i != k} alpha_{k,i} * e_{k,i}
    Upsilon_k   = [theta_hat_k ; E_k]

The pair function is written for one (focus, context) pair and ``nn.vmap``-ed
over contexts and then over foci, with its weights shared by every pair, so no
weight depends on K: a module built for K=5 runs unchanged with K=8 (or K=1,
where the effect is zero). ``IdentityInteraction`` is RNN-EM's Upsilon(theta)_k
= theta_k. Both return ``(output, alpha)`` with ``alpha: [..., K, K]``, zero on
the diagonal and for masked contexts.

Example (with your own theta)::

    ups = RNEMInteraction()
    params = ups.init(jax.random.key(0), theta)      # theta: [B, K, M]
    out, alpha = ups.apply(params, theta, mask)      # out: [B, K, 500]
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from rnem_jax.layers import DenseLN


def _check_theta(theta: jnp.ndarray, mask: Optional[jnp.ndarray]) -> None:
  if theta.ndim < 2:
    raise ValueError(f"theta must have shape [..., K, M]; got shape {theta.shape}")
  if theta.shape[-2] < 1:
    raise ValueError(f"K must be >= 1; got theta of shape {theta.shape}")
  if mask is not None and tuple(mask.shape) != tuple(theta.shape[:-1]):
    raise ValueError(
        f"mask must have shape theta.shape[:-1] = {theta.shape[:-1]}; got {mask.shape}")


def context_weights(K: int, mask: Optional[jnp.ndarray], dtype=jnp.float32) -> jnp.ndarray:
  """``w[..., k, i] = [i != k] * mask[..., i]``: which contexts act on which focus."""
  w = 1.0 - jnp.eye(K, dtype=dtype)
  if mask is not None:
    w = w * mask.astype(dtype)[..., None, :]
  return w


class PairInteraction(nn.Module):
  """MLP_emb, MLP_eff and MLP_att for one (focus, context) pair.

  ``focus, context: [..., M] -> (effect [..., effect_size], alpha [...])``.
  """

  embed_size: int = 250
  effect_size: int = 250
  attention_size: int = 100
  use_attention: bool = True

  @nn.compact
  def __call__(self, focus: jnp.ndarray, context: jnp.ndarray):
    xi = DenseLN(self.embed_size, "relu", name="emb")(jnp.concatenate([focus, context], -1))
    effect = DenseLN(self.effect_size, "relu", name="eff")(xi)
    if self.use_attention:
      a = DenseLN(self.attention_size, "tanh", name="att_hidden")(xi)
      alpha = DenseLN(1, "sigmoid", use_ln=False, name="att_out")(a)[..., 0]
    else:
      alpha = jnp.ones(effect.shape[:-1], effect.dtype)
    return effect, alpha


class RNEMInteraction(nn.Module):
  """Upsilon^{R-NEM} (Eq. 5): ``theta [..., K, M] -> ([..., K, enc+effect], alpha [..., K, K])``.

  Attributes:
    enc_size: units of MLP_enc (theta_hat).
    embed_size: units of MLP_emb applied to each [focus; context] pair.
    effect_size: units of MLP_eff (the effect e_{k,i}).
    attention_size: hidden units of MLP_att (followed by one sigmoid unit).
    use_attention: ``False`` gives "R-NEM no attention" (alpha == 1 off the diagonal).
  """

  enc_size: int = 250
  embed_size: int = 250
  effect_size: int = 250
  attention_size: int = 100
  use_attention: bool = True

  @nn.compact
  def __call__(self, theta: jnp.ndarray, mask: Optional[jnp.ndarray] = None):
    """Args:
      theta: [..., K, M] object representations (K >= 1, any M).
      mask: optional [..., K], 1 for real and 0 for padded components; padded
        components exert no effect on the others.

    Returns:
      output: [..., K, enc_size + effect_size] = [theta_hat_k ; E_k].
      alpha: [..., K, K], alpha[..., k, i] = weight of context i on focus k.
    """
    _check_theta(theta, mask)
    K = theta.shape[-2]
    theta_hat = DenseLN(self.enc_size, "relu", name="enc")(theta)
    pair = PairInteraction(
        self.embed_size, self.effect_size, self.attention_size, self.use_attention, name="pair")
    shared = {"params": None}
    over_contexts = nn.vmap(
        lambda mdl, f, c: mdl(f, c), in_axes=(None, -2), out_axes=(-2, -1),
        variable_axes=shared, split_rngs={"params": False})
    over_pairs = nn.vmap(
        lambda mdl, f, c: over_contexts(mdl, f, c), in_axes=(-2, None), out_axes=(-3, -2),
        variable_axes=shared, split_rngs={"params": False})
    effects, alpha = over_pairs(pair, theta_hat, theta_hat)  # [..., K, K, D], [..., K, K]
    alpha = alpha * context_weights(K, mask, alpha.dtype)
    total_effect = jnp.einsum("...ki,...kid->...kd", alpha, effects)
    return jnp.concatenate([theta_hat, total_effect], axis=-1), alpha


class IdentityInteraction(nn.Module):
  """Upsilon^{RNN-EM}(theta)_k = theta_k: components evolve independently.

  Returns ``(theta, alpha)`` with ``alpha`` all zeros ([..., K, K]): no context
  acts on any focus.
  """

  @nn.compact
  def __call__(self, theta: jnp.ndarray, mask: Optional[jnp.ndarray] = None):
    _check_theta(theta, mask)
    K = theta.shape[-2]
    return theta, jnp.zeros(theta.shape[:-1] + (K,), theta.dtype)
