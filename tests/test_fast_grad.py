"""The fast convolutions (rnem_jax.layers, ``impl="fast"``) change no results.

Each check compares against the straightforward formulation: TF-SAME
``lax.conv_general_dilated`` after an explicit nearest resize, differentiated by
JAX's own rules (``impl="xla"``).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnem_jax import em, layers
from rnem_jax import model as M


def _both(fn, *args):
  """``fn(impl, *args)`` jitted with the reference and with the fast implementation."""
  out = {impl: jax.jit(functools.partial(fn, impl))(*args) for impl in ("xla", "fast")}
  return out["xla"], out["fast"]


def _assert_tree_close(want, got, rtol=1e-4):
  """Leaf-wise: |got - want| <= rtol * (|want| + max|want| / 10)."""
  for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
    w, g = np.asarray(w), np.asarray(g)
    assert w.shape == g.shape
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * 0.1 * float(np.max(np.abs(w))))


@pytest.mark.parametrize("size,c_in,c_out,k,stride,resize_to", [
    (16, 1, 4, 4, 2, None),          # balls encoder: stride 2 -> space-to-depth
    (11, 3, 4, 4, 2, None),          # odd size, asymmetric SAME padding
    (84, 1, 4, 8, 4, None),          # Atari encoder: 8x8 stride 4
    (4, 6, 5, 4, 1, (8, 8)),         # balls decoder: x2 up-scale -> sub-pixel
    (5, 3, 2, 8, 1, (20, 20)),       # Atari decoder: x4 up-scale, 8x8 kernel
    (9, 2, 3, 3, 1, (27, 27)),       # x3, odd kernel
    (10, 2, 3, 4, 1, (21, 21)),      # non-integer factor: gather resize
    (7, 2, 3, 5, 1, None),           # plain stride-1, thin in and out: matrix products
    (8, 2, 9, 3, 1, None),           # thin input only: im2col forward, col2im d/dx
    (8, 9, 2, 3, 1, None),           # thin output only: shifted-sum forward and VJP
    (6, 6, 7, 3, 1, None),           # neither thin: XLA forward, per-tap d/dkernel
    (12, 5, 6, 4, 2, None),          # strided, neither thin after space-to-depth
    (10, 2, 5, 4, 2, None),          # strided, 8 space-to-depth channels, 5 outputs
])
def test_conv2d_value_and_gradients_match_lax(size, c_in, c_out, k, stride, resize_to):
  x = jax.random.normal(jax.random.key(0), (2, size, size, c_in))
  w = jax.random.normal(jax.random.key(1), (k, k, c_in, c_out))
  probe = jax.random.normal(jax.random.key(2), jax.eval_shape(
      lambda: layers.conv2d(x, w, stride, resize_to)).shape)

  def value_and_grad(impl, x, w):
    y = layers.conv2d(x, w, stride, resize_to, impl)
    return y, jax.grad(lambda x, w: jnp.sum(probe * layers.conv2d(x, w, stride, resize_to, impl)),
                       (0, 1))(x, w)

  want, got = _both(value_and_grad, x, w)
  _assert_tree_close(want, got, rtol=1e-5)


def test_conv_parameters_are_those_of_nn_conv():
  """Same tree, shapes and initial values as ``flax.linen.Conv`` (old checkpoints load)."""
  class Reference(M.nn.Module):
    @M.nn.compact
    def __call__(self, x):
      return M.nn.Conv(8, (4, 4), padding="SAME", kernel_init=layers.glorot_uniform,
                       bias_init=M.nn.initializers.zeros)(x)

  class Fast(M.nn.Module):
    @M.nn.compact
    def __call__(self, x):
      return layers.Conv(8, 4)(x)

  x = jnp.ones((1, 8, 8, 3))
  want = Reference().init(jax.random.key(0), x)
  got = Fast().init(jax.random.key(0), x)
  assert jax.tree_util.tree_structure(want) == jax.tree_util.tree_structure(got)
  _assert_tree_close(want, got, rtol=0)


@pytest.mark.parametrize("unroll,remat", [(True, False), (1, True)])
def test_training_loss_and_gradients_match(unroll, remat):
  """The R-NEM training loss and its gradient w.r.t. every parameter, fast vs reference."""
  net = M.build_network(M.default_model_config(
      image_size=16, hidden=16, interaction_sizes=(16, 16, 16, 8)))
  params = M.init_params(net, jax.random.key(0))
  features = jax.random.bernoulli(jax.random.key(1), 0.2, (3, 2, 16, 16, 1)).astype(jnp.float32)

  def loss_and_grad(impl, params):
    net_impl = net.clone(conv_impl=impl)
    return jax.value_and_grad(
        lambda p: em.training_loss(net_impl, p, features, jax.random.key(2), K=3, noise_prob=0.2,
                                   unroll=unroll, remat=remat)[0])(params)

  (want_loss, want_grad), (got_loss, got_grad) = _both(loss_and_grad, params)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  _assert_tree_close(want_grad, got_grad, rtol=1e-4)


def test_auto_chooses_by_backend():
  assert layers.resolve_conv_impl("auto", backend="cpu") == "fast"
  assert layers.resolve_conv_impl("auto", backend="gpu") == "xla"
  assert layers.resolve_conv_impl("auto", backend="tpu") == "xla"
  assert layers.resolve_conv_impl("xla", backend="cpu") == "xla"
  with pytest.raises(ValueError, match="unknown conv implementation"):
    layers.resolve_conv_impl("cudnn")
  cfg = M.default_model_config(image_size=16, conv_impl="xla")
  assert M.build_network(cfg).conv_impl == "xla"
  assert M.build_network(M.default_model_config(image_size=16)).conv_impl == (
      "fast" if jax.default_backend() == "cpu" else "xla")
