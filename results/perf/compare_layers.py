"""Training-step time of two versions of ``rnem_jax/layers.py``, interleaved in one process.

The convolutions' implementation lives in ``rnem_jax/layers.py`` alone, so an
older revision's file (``git show REV:rnem_jax/layers.py > /tmp/layers_old.py``)
can be timed against the working tree's without changing anything else: both
training steps are compiled, checked to give the same loss, then called in
alternation, and the medians and their ratio are reported per shape.

  python results/perf/compare_layers.py --old=/tmp/layers_old.py \\
      --out=results/perf/compare_layers.json
"""

import importlib.util
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from rnem_jax import benchmark, layers, train
from rnem_jax.model import build_network, init_params

flags.DEFINE_string("old", "/tmp/layers_old.py", "the older layers.py")
flags.DEFINE_multi_string("shape", ["16,5,10,64,full", "16,5,10,64,1", "8,5,30,64,full",
                                    "16,5,20,32,full"], "B,K,T,image_size,unroll (repeatable)")
flags.DEFINE_integer("calls", 6, "timed calls of each step (after one warm-up call)")
flags.DEFINE_string("out", "", "write the results here (JSON)")
FLAGS = flags.FLAGS


def compare(old_conv2d, B, K, T, size, unroll, repeats):
  cfg, _ = benchmark.model_config("rnem", size)
  network = build_network(cfg)
  params = init_params(network, jax.random.key(0), K)
  batch = {"features": benchmark.synthetic_batch(jax.random.key(1), T, B, size)["features"]}
  tx = train.make_optimizer(1e-3)
  new_conv2d = layers.conv2d
  steps = {}
  try:
    for name, conv in (("old", old_conv2d), ("new", new_conv2d)):
      layers.conv2d = conv  # read when the step is traced
      state = train.create_train_state(jax.tree_util.tree_map(jnp.copy, params), tx)
      step = train.make_train_step(network, tx, K=K, noise_prob=0.2, unroll=unroll)
      t = time.perf_counter()
      compiled = step.lower(state, batch, jax.random.key(2)).compile()
      steps[name] = {"fn": compiled, "state": state, "compile_s": time.perf_counter() - t,
                     "times": []}
  finally:
    layers.conv2d = new_conv2d
  for r in range(repeats + 1):
    for name, s in steps.items():
      t = time.perf_counter()
      s["state"], metrics = s["fn"](s["state"], batch, jax.random.key(2))
      jax.block_until_ready(metrics)
      if r == 0:
        s["first_loss"] = float(metrics["loss"])
      else:
        s["times"].append(time.perf_counter() - t)
  res = dict(B=B, K=K, T=T, image_size=size, unroll=unroll)
  for name, s in steps.items():
    res[f"{name}_step_s"] = statistics.median(s["times"])
    res[f"{name}_compile_s"] = s["compile_s"]
    res[f"{name}_first_loss"] = s["first_loss"]
  res["new_over_old"] = res["new_step_s"] / res["old_step_s"]
  if abs(res["new_first_loss"] - res["old_first_loss"]) > 1e-4 * abs(res["old_first_loss"]):
    raise AssertionError(f"the two versions disagree on the loss: {res}")
  return res


def main(argv):
  del argv
  spec = importlib.util.spec_from_file_location("layers_old", FLAGS.old)
  old = importlib.util.module_from_spec(spec)
  sys.modules["layers_old"] = old  # flax's dataclasses look their module up
  spec.loader.exec_module(old)
  rows = []
  for shape in FLAGS.shape:
    B, K, T, size, unroll = shape.split(",")
    unroll = True if unroll == "full" else int(unroll)
    row = compare(old.conv2d, int(B), int(K), int(T), int(size), unroll, FLAGS.calls)
    rows.append(row)
    print(f"B{B} K{K} T{T} {size}x{size} unroll={unroll}: old {row['old_step_s']:.3f} s, "
          f"new {row['new_step_s']:.3f} s, new/old {row['new_over_old']:.3f}", flush=True)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump({"old": FLAGS.old, "devices": str(jax.devices()), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
