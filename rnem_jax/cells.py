"""Recurrent cells of the R-NEM model family (paper Eq. 4; docs/design.md#recurrent-cells).

Every cell maps ``(z [B, K, Z], state, action_embedding [B, A] | None)`` to
``(new_state, y [B, K, H_out], alpha [B, K, K])`` where ``y`` feeds the
decoder. The weights never depend on K.

* ``InteractionCell`` covers R-NEM, R-NEM without attention and RNN-EM (and
  RNN = RNN-EM with K=1) as configurations of one function (paper Eq. 4):
  ``o_k = W [Upsilon_k(theta) ; z_k (; a)] + b``, new state ``theta_k = sigmoid(o_k)``
  and decoder input ``y_k = sigmoid(LN(o_k))`` (no layer norm on the recurrent
  connection).
* ``LayerNormLSTMCell`` is TF's LayerNormBasicLSTMCell (used with K=1).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from rnem_jax.interaction import IdentityInteraction, RNEMInteraction
from rnem_jax.layers import LN_EPSILON, glorot_uniform

CELL_TYPES = ("rnem", "rnem_noatt", "rnn", "lstm")


def _broadcast_action(action_emb: Optional[jnp.ndarray], K: int) -> Optional[jnp.ndarray]:
  """Copies the per-sequence action embedding ``[B, A]`` to every component ``[B, K, A]``.

  (The authors' code tiles along the batch axis instead, giving component k of
  sequence b the action of sequence (b*K+k) mod B — bug A1, fixed here
  (docs/design.md#a1-action-tiling); a
  per-component ``[B, K, A]`` embedding, which ``em.rollout`` builds to reproduce
  it as a diagnostic, is passed through.)
  """
  if action_emb is None:
    return None
  if action_emb.ndim == 3:
    return action_emb
  return jnp.broadcast_to(action_emb[:, None, :], action_emb.shape[:1] + (K,) + action_emb.shape[1:])


class InteractionCell(nn.Module):
  """Eq. (4) with Upsilon = ``RNEMInteraction`` or ``IdentityInteraction``.

  Attributes:
    hidden: size M of theta (250 in the paper).
    interaction: 'rnem', 'rnem_noatt' or 'identity'.
    interaction_sizes: (enc, embed, effect, attention) units of Upsilon^{R-NEM}.
  """

  hidden: int = 250
  interaction: str = "rnem"
  interaction_sizes: tuple[int, int, int, int] = (250, 250, 250, 100)

  @nn.compact
  def __call__(self, z, theta, action_emb=None, mask=None):
    """``z: [B, K, Z]``, ``theta: [B, K, M]`` -> ``(theta', y [B, K, M], alpha [B, K, K])``."""
    K = theta.shape[-2]
    a = _broadcast_action(action_emb, K)
    theta_in = theta if a is None else jnp.concatenate([theta, a], -1)
    if self.interaction == "identity":
      ups, alpha = IdentityInteraction(name="upsilon")(theta_in, mask)
    elif self.interaction in ("rnem", "rnem_noatt"):
      enc, emb, eff, att = self.interaction_sizes
      ups, alpha = RNEMInteraction(
          enc, emb, eff, att, use_attention=self.interaction == "rnem", name="upsilon")(
              theta_in, mask)
    else:
      raise ValueError(f"unknown interaction {self.interaction!r}")
    parts = [ups, z] if a is None else [ups, z, a]
    o = nn.Dense(self.hidden, kernel_init=glorot_uniform, name="linear")(jnp.concatenate(parts, -1))
    new_theta = nn.sigmoid(o)
    y = nn.sigmoid(nn.LayerNorm(epsilon=LN_EPSILON, name="output_ln")(o))
    return new_theta, y, alpha


class LayerNormLSTMCell(nn.Module):
  """TF ``LayerNormBasicLSTMCell(hidden, layer_norm=True)``, forget bias 1, tanh.

  Gates (i, j, f, o) from one bias-free matrix on ``[z ; h]``; each gate
  pre-activation and the new cell state get their own layer norm; the
  normalised cell state is stored; ``h = tanh(c) * sigmoid(o)`` goes straight
  to the decoder. The action embedding, if any, is appended to the input.
  """

  hidden: int = 250
  forget_bias: float = 1.0

  @nn.compact
  def __call__(self, z, state, action_emb=None, mask=None):
    """``z: [B, K, Z]``, ``state = (c, h)`` each ``[B, K, M]`` -> ``((c', h'), h', alpha)``."""
    c, h = state
    K = h.shape[-2]
    a = _broadcast_action(action_emb, K)
    inp = [z, h] if a is None else [z, a, h]
    gates = nn.Dense(4 * self.hidden, use_bias=False, kernel_init=glorot_uniform, name="gates")(
        jnp.concatenate(inp, -1))
    i, j, f, o = jnp.split(gates, 4, axis=-1)
    ln = lambda x, name: nn.LayerNorm(epsilon=LN_EPSILON, name=name)(x)
    i, j, f, o = ln(i, "ln_i"), ln(j, "ln_j"), ln(f, "ln_f"), ln(o, "ln_o")
    new_c = c * nn.sigmoid(f + self.forget_bias) + nn.sigmoid(i) * jnp.tanh(j)
    new_c = ln(new_c, "ln_c")
    new_h = jnp.tanh(new_c) * nn.sigmoid(o)
    return (new_c, new_h), new_h, jnp.zeros(h.shape[:-1] + (K,), h.dtype)


def make_cell(cell_type: str, hidden: int, interaction_sizes=(250, 250, 250, 100)) -> nn.Module:
  """The recurrent cell named ``cell_type`` (one of ``CELL_TYPES``)."""
  if cell_type == "lstm":
    return LayerNormLSTMCell(hidden, name="cell")
  interaction = {"rnem": "rnem", "rnem_noatt": "rnem_noatt", "rnn": "identity"}.get(cell_type)
  if interaction is None:
    raise ValueError(f"unknown cell type {cell_type!r}; choose one of {CELL_TYPES}")
  return InteractionCell(hidden, interaction, tuple(interaction_sizes), name="cell")


def initial_state(cell_type: str, hidden: int, batch: int, K: int, dtype=jnp.float32) -> Any:
  """Zero recurrent state: ``theta [B, K, M]``, or ``(c, h)`` for the LSTM."""
  zeros = jnp.zeros((batch, K, hidden), dtype)
  return (zeros, zeros) if cell_type == "lstm" else zeros
