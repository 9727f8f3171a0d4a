"""The per-component network: encoder -> recurrent cell (with Upsilon) -> decoder.

All K components share one network; components are folded into the batch axis
for the convolutions (``[B, K, H, W, C] -> [B*K, H, W, C]``, K the fast index)
and unfolded to ``[B, K, M]`` for the cell, so nothing depends on K.

Architectures (balls: paper appendix A.1; Atari: docs/design.md#atari-network) are
data (``Architecture``), derived from the image size, so 32x32 frames are a config
change.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rnem_jax import cells
from rnem_jax.layers import ConvLN, DenseLN, resolve_conv_impl


@dataclasses.dataclass(frozen=True)
class Architecture:
  """Encoder/decoder layer lists.

  Attributes:
    image_size: (H, W) of the frames.
    channels: C of the frames.
    enc_convs: (features, kernel, stride) per encoder conv (LN + ELU).
    enc_fc: units per encoder fc layer (LN + ELU); the last is z's size.
    dec_fc: units per decoder fc layer (LN + ReLU); the last must equal prod(dec_reshape).
    dec_reshape: (h, w, c) the last fc output is reshaped to.
    dec_rconvs: (size, features, kernel) per resize-conv; all but the last get
      LN + ReLU, the last is a sigmoid producing the Bernoulli means psi.
  """

  image_size: tuple[int, int]
  channels: int
  enc_convs: tuple[tuple[int, int, int], ...]
  enc_fc: tuple[int, ...]
  dec_fc: tuple[int, ...]
  dec_reshape: tuple[int, int, int]
  dec_rconvs: tuple[tuple[int, int, int], ...]

  def validate(self) -> None:
    """Raises ValueError if the layer lists cannot produce frames of ``image_size``."""
    h, w = self.image_size
    if h < 1 or w < 1 or self.channels < 1:
      raise ValueError(f"invalid image size {self.image_size} x {self.channels} channels")
    if not self.enc_fc or not self.dec_fc or not self.dec_rconvs:
      raise ValueError("architecture needs at least one encoder fc, decoder fc and decoder conv")
    if self.dec_fc[-1] != math.prod(self.dec_reshape):
      raise ValueError(
          f"last decoder fc has {self.dec_fc[-1]} units but reshapes to {self.dec_reshape}")
    size, _, _ = self.dec_rconvs[-1]
    out_features = self.dec_rconvs[-1][1]
    if (size, size) != tuple(self.image_size) or out_features != self.channels:
      raise ValueError(
          f"decoder produces {size}x{size}x{out_features} frames but the data are "
          f"{h}x{w}x{self.channels}: the model cannot take this image size")


def balls_architecture(image_size: int = 64, channels: int = 1) -> Architecture:
  """Paper appendix A.1 (items 1-4, 6-10) scaled to ``image_size`` (a multiple of 8).

  64x64: conv 16/32/64 (4x4, stride 2) -> fc 512; fc 512 -> fc 8*8*64 ->
  resize-conv to 16 (32 ch), 32 (16 ch), 64 (1 ch, sigmoid).
  """
  if image_size < 8 or image_size % 8:
    raise ValueError(
        f"the bouncing-balls encoder halves the image three times: image size must be a "
        f"positive multiple of 8, got {image_size}")
  s = image_size // 8
  return Architecture(
      image_size=(image_size, image_size),
      channels=channels,
      enc_convs=((16, 4, 2), (32, 4, 2), (64, 4, 2)),
      enc_fc=(512,),
      dec_fc=(512, s * s * 64),
      dec_reshape=(s, s, 64),
      dec_rconvs=((2 * s, 32, 4), (4 * s, 16, 4), (8 * s, channels, 4)),
  )


def atari_architecture(image_size: int = 84, channels: int = 1) -> Architecture:
  """The authors' code's 84x84 network, not paper A.2's listing (docs/design.md#atari-network)."""
  if image_size != 84:
    raise ValueError(f"the Atari network is defined for 84x84 frames, got {image_size}")
  return Architecture(
      image_size=(84, 84),
      channels=channels,
      enc_convs=((16, 8, 4), (32, 4, 2)),
      enc_fc=(250,),
      dec_fc=(250, 10 * 10 * 32),
      dec_reshape=(10, 10, 32),
      dec_rconvs=((21, 16, 4), (84, channels, 8)),
  )


ARCHITECTURES = {"balls": balls_architecture, "atari": atari_architecture}


class Encoder(nn.Module):
  """``[N, H, W, C] -> z [N, enc_fc[-1]]``: convs and fcs, each LN + ELU."""

  arch: Architecture
  conv_impl: str = "fast"

  @nn.compact
  def __call__(self, x):
    for features, kernel, stride in self.arch.enc_convs:
      x = ConvLN(features, kernel, stride, act="elu", impl=self.conv_impl)(x)
    x = x.reshape(x.shape[0], -1)
    for units in self.arch.enc_fc:
      x = DenseLN(units, act="elu")(x)
    return x


class Decoder(nn.Module):
  """``y [N, M] -> psi [N, H, W, C]`` in (0, 1)."""

  arch: Architecture
  conv_impl: str = "fast"

  @nn.compact
  def __call__(self, y):
    for units in self.arch.dec_fc:
      y = DenseLN(units, act="relu")(y)
    x = y.reshape((y.shape[0],) + tuple(self.arch.dec_reshape))
    last = len(self.arch.dec_rconvs) - 1
    for n, (size, features, kernel) in enumerate(self.arch.dec_rconvs):
      x = ConvLN(features, kernel, 1, act="sigmoid" if n == last else "relu",
                 use_ln=n != last, resize_to=(size, size), impl=self.conv_impl)(x)
    return x


class NEMNetwork(nn.Module):
  """One M-step for all components: encode the masked input, update the cell, decode.

  Attributes:
    arch: encoder/decoder layers.
    cell_type: 'rnem', 'rnem_noatt', 'rnn' (RNN-EM with K > 1) or 'lstm'.
    hidden: recurrent size M.
    interaction_sizes: (enc, embed, effect, attention) units of Upsilon^{R-NEM}.
    num_actions: > 0 feeds one-hot actions through fc(action_embed) -> LN -> ReLU
      to the cell (Atari, docs/design.md#actions); 0 for none.
    action_embed: units of the action embedding.
    conv_impl: ``"fast"`` or ``"xla"`` convolutions (``layers.conv2d``); the
      same parameters and maths either way.
  """

  arch: Architecture
  cell_type: str = "rnem"
  hidden: int = 250
  interaction_sizes: tuple[int, int, int, int] = (250, 250, 250, 100)
  num_actions: int = 0
  action_embed: int = 10
  conv_impl: str = "fast"

  def setup(self):
    self.arch.validate()
    self.encoder = Encoder(self.arch, self.conv_impl)
    self.cell = cells.make_cell(self.cell_type, self.hidden, self.interaction_sizes)
    self.decoder = Decoder(self.arch, self.conv_impl)
    if self.num_actions:
      self.action_mlp = DenseLN(self.action_embed, act="relu")

  def __call__(self, u, state, actions=None, mask=None):
    """One network step.

    Args:
      u: [B, K, H, W, C] masked inputs gamma * (x_noisy - psi_prev).
      state: the cell state (``theta [B, K, M]`` or LSTM ``(c, h)``).
      actions: int actions (required iff ``num_actions > 0``): [B], one per
        sequence, shared by its K components; or [B, K], one per component
        (``em.tile_actions_like_reference``, a diagnostic).
      mask: optional [B, K] component mask passed to Upsilon.

    Returns:
      (new_state, psi [B, K, H, W, C], alpha [B, K, K]).
    """
    B, K = u.shape[:2]
    if tuple(u.shape[2:]) != tuple(self.arch.image_size) + (self.arch.channels,):
      raise ValueError(
          f"network input must be [B, K, {self.arch.image_size[0]}, {self.arch.image_size[1]}, "
          f"{self.arch.channels}]; got {u.shape}")
    action_emb = None
    if self.num_actions:
      if actions is None:
        raise ValueError("this network was built with num_actions > 0: pass actions [B]")
      if tuple(actions.shape) not in ((B,), (B, K)):
        raise ValueError(f"actions must be [B] = ({B},) or [B, K] = ({B}, {K}); got "
                         f"{tuple(actions.shape)}")
      action_emb = self.action_mlp(jax.nn.one_hot(actions, self.num_actions, dtype=u.dtype))
    z = self.encoder(u.reshape((B * K,) + u.shape[2:])).reshape(B, K, -1)
    state, y, alpha = self.cell(z, state, action_emb, mask)
    psi = self.decoder(y.reshape(B * K, -1)).reshape(u.shape)
    return state, psi, alpha

  def initial_state(self, batch: int, K: int) -> Any:
    """Zero state for ``batch`` sequences of K components (needs no parameters)."""
    return cells.initial_state(self.cell_type, self.hidden, batch, K)


def build_network(model_cfg: ml_collections.ConfigDict) -> NEMNetwork:
  """Builds the network described by a config's ``model`` section.

  Reads ``architecture`` ('balls' | 'atari'), ``image_size``, ``channels``,
  ``cell`` (see ``cells.CELL_TYPES``), ``hidden``, ``interaction_sizes``,
  ``num_actions``, ``action_embed`` and ``conv_impl`` (``"auto"``: chosen from
  the backend, ``layers.resolve_conv_impl``).
  """
  if model_cfg.architecture not in ARCHITECTURES:
    raise ValueError(
        f"unknown architecture {model_cfg.architecture!r}; choose one of {sorted(ARCHITECTURES)}")
  if model_cfg.cell not in cells.CELL_TYPES:
    raise ValueError(f"unknown cell {model_cfg.cell!r}; choose one of {cells.CELL_TYPES}")
  arch = ARCHITECTURES[model_cfg.architecture](model_cfg.image_size, model_cfg.channels)
  arch.validate()
  return NEMNetwork(
      arch=arch,
      cell_type=model_cfg.cell,
      hidden=model_cfg.hidden,
      interaction_sizes=tuple(model_cfg.interaction_sizes),
      num_actions=model_cfg.get("num_actions", 0),
      action_embed=model_cfg.get("action_embed", 10),
      conv_impl=resolve_conv_impl(model_cfg.get("conv_impl", "auto")),
  )


def init_params(network: NEMNetwork, key: jax.Array, K: int = 2) -> Any:
  """Initial parameters (independent of K; K only shapes the dummy input).

  One jitted program rather than the forward pass run op by op: a single compilation that
  the persistent compilation cache keeps, instead of one per primitive and shape.
  """
  h, w = network.arch.image_size
  u = jnp.zeros((1, K, h, w, network.arch.channels), jnp.float32)
  actions = jnp.zeros((1,), jnp.int32) if network.num_actions else None
  return jax.jit(network.init)(key, u, network.initial_state(1, K), actions)


def count_params(params: Any) -> int:
  """Number of scalars in a parameter tree."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def default_model_config(**overrides) -> ml_collections.ConfigDict:
  """The paper's bouncing-balls R-NEM model section; ``overrides`` replace fields."""
  cfg = ml_collections.ConfigDict(dict(
      architecture="balls",
      image_size=64,
      channels=1,
      cell="rnem",
      hidden=250,
      interaction_sizes=(250, 250, 250, 100),
      num_actions=0,
      action_embed=10,
      conv_impl="auto",   # "fast" (ours, for XLA:CPU) | "xla" | "auto": fast on CPU, xla on GPU/TPU
  ))
  cfg.update(overrides)
  return cfg


def describe(arch: Architecture) -> Sequence[str]:
  """Human-readable layer list (for logs and the README)."""
  lines = [f"input {arch.image_size[0]}x{arch.image_size[1]}x{arch.channels}"]
  lines += [f"conv {k}x{k}/{s} {f} -> LN -> ELU" for f, k, s in arch.enc_convs]
  lines += [f"fc {u} -> LN -> ELU" for u in arch.enc_fc]
  lines += [f"fc {u} -> LN -> ReLU" for u in arch.dec_fc]
  lines += [f"resize {s}x{s} + conv {k}x{k} {f}" for s, f, k in arch.dec_rconvs]
  return lines
