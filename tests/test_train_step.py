"""The jitted training step learns: a few hundred steps on moving squares cut the loss."""

import jax
import jax.numpy as jnp
import numpy as np

from conftest import OPTIMIZED
from rnem_jax import model as M
from rnem_jax import train


def moving_squares(key, batch=8, frames=9, size=16, n=2, side=3):
  """[frames, batch, size, size, 1] binary frames of n squares bouncing off the walls."""
  kp, kv = jax.random.split(key)
  pos = np.asarray(jax.random.randint(kp, (batch, n, 2), 0, size - side))
  vel = np.asarray(jax.random.choice(kv, np.array([-1, 1]), (batch, n, 2)))
  out = np.zeros((frames, batch, size, size, 1), np.float32)
  for t in range(frames):
    for b in range(batch):
      for i in range(n):
        r, c = pos[b, i]
        out[t, b, r:r + side, c:c + side] = 1.0
    nxt = pos + vel
    bounce = (nxt < 0) | (nxt > size - side)
    vel = np.where(bounce, -vel, vel)
    pos = pos + vel
  return jnp.asarray(out)


def test_few_hundred_steps_reduce_the_loss():
  net = M.build_network(M.default_model_config(
      image_size=16, hidden=32, interaction_sizes=(32, 32, 32, 16)))
  tx = train.make_optimizer(1e-3)
  state = train.create_train_state(M.init_params(net, jax.random.key(0)), tx)
  data = moving_squares(jax.random.key(1), batch=8)
  step = train.make_train_step(net, tx, K=2, noise_prob=0.1).lower(
      state, {"features": data}, jax.random.key(2)).compile(OPTIMIZED)   # 200 steps
  losses = []
  for i in range(200):
    state, metrics = step(state, {"features": data}, jax.random.fold_in(jax.random.key(2), i))
    losses.append(float(metrics["loss"]))
  first, last = np.mean(losses[:10]), np.mean(losses[-10:])
  print(f"loss: first 10 steps {first:.1f}, last 10 steps {last:.1f}")
  assert int(state.step) == 200
  assert np.all(np.isfinite(losses))
  assert last < 0.3 * first


def test_batch_splits_give_the_same_step():
  """train.batch_splits changes how the step runs, not what it computes."""
  net = M.build_network(M.default_model_config(
      image_size=16, hidden=32, interaction_sizes=(32, 32, 32, 16)))
  tx = train.make_optimizer(1e-3)
  params = M.init_params(net, jax.random.key(0))
  data = {"features": moving_squares(jax.random.key(1), batch=4, frames=4)}
  out = {}
  for splits in (1, 2):
    state = train.create_train_state(jax.tree_util.tree_map(jnp.copy, params), tx)
    step = train.make_train_step(net, tx, K=3, noise_prob=0.2, batch_splits=splits)
    out[splits] = step(state, data, jax.random.key(2))
  (s1, m1), (s2, m2) = out[1], out[2]
  np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-6)
  np.testing.assert_allclose(m2["grad_norm"], m1["grad_norm"], rtol=1e-5)
  # Adam's first update is about lr * sign(g): 1% of lr is far below what a changed gradient gives
  for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params)):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


def test_a_step_to_non_finite_parameters_is_not_applied():
  """Finite loss and gradients but an infinite Adam first moment: the new parameters are not
  finite, so the step keeps the old state and says so (``applied`` 0); a normal step from the
  same parameters, through the same compiled step, is applied."""
  net = M.build_network(M.default_model_config(
      image_size=16, hidden=8, interaction_sizes=(8, 8, 8, 4)))
  params = M.init_params(net, jax.random.key(0))
  data = {"features": moving_squares(jax.random.key(1), batch=2, frames=3)}
  tx = train.make_optimizer(1e-3)
  step = train.make_train_step(net, tx, K=2, noise_prob=0.1, donate=False)
  good = train.create_train_state(params, tx)
  bad = good.replace(opt_state=jax.tree_util.tree_map(
      lambda x: jnp.full_like(x, jnp.inf) if jnp.issubdtype(x.dtype, jnp.floating) else x,
      good.opt_state))
  for state, applied in ((good, 1.0), (bad, 0.0)):
    new, m = step(state, data, jax.random.key(2))
    assert float(m["applied"]) == applied and np.isfinite(float(m["loss"]))
    assert np.isfinite(float(m["grad_norm"]))
    assert int(new.step) == 1
    same = [np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(new.params),
                                                 jax.tree_util.tree_leaves(params))]
    assert all(same) == (applied == 0.0)
    # the bad case keeps its (infinite) optimizer state; the applied step's is finite
    kept = new if applied else new.params
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(kept))
