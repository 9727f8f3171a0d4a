"""Training-step time of two versions of one module, interleaved in one process.

An older revision of a module (``git show REV:rnem_jax/layers.py > /tmp/layers_old.py``)
is timed against the working tree's without changing anything else: the named
functions (``--names``) of ``rnem_jax.<module>`` are swapped for the old file's
while the training step is traced, both steps are compiled, checked to give the
same loss, then called in alternation, and the medians and their ratio are
reported per shape.

  python results/perf/compare_versions.py --old=/tmp/layers_old.py \\
      --out=results/perf/compare_layers.json              # convolutions (layers.conv2d)
  python results/perf/compare_versions.py --module=em --names=e_step,em_loss \\
      --old=/tmp/em_old.py --out=results/perf/compare_em.json
"""

import importlib
import importlib.util
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from rnem_jax import benchmark, host_memory, train
from rnem_jax.model import build_network, init_params

flags.DEFINE_string("old", "/tmp/layers_old.py", "the older version of the module's file")
flags.DEFINE_string("module", "layers", "which rnem_jax module the old file is a version of")
flags.DEFINE_list("names", ["conv2d"], "the module's functions taken from the old file")
flags.DEFINE_multi_string("shape", ["16,5,10,64,full", "16,5,10,64,1", "8,5,30,64,full",
                                    "16,5,20,32,full"], "B,K,T,image_size,unroll (repeatable)")
flags.DEFINE_integer("calls", 6, "timed calls of each step (after one warm-up call)")
flags.DEFINE_string("out", "", "write the results here (JSON)")
FLAGS = flags.FLAGS


def compare(module, old_fns, B, K, T, size, unroll, repeats):
  cfg, _ = benchmark.model_config("rnem", size)
  network = build_network(cfg)
  params = init_params(network, jax.random.key(0), K)
  batch = {"features": benchmark.synthetic_batch(jax.random.key(1), T, B, size)["features"]}
  tx = train.make_optimizer(1e-3)
  new_fns = {n: getattr(module, n) for n in old_fns}
  steps = {}
  try:
    for name, fns in (("old", old_fns), ("new", new_fns)):
      for n, fn in fns.items():
        setattr(module, n, fn)  # read when the step is traced
      state = train.create_train_state(jax.tree_util.tree_map(jnp.copy, params), tx)
      step = train.make_train_step(network, tx, K=K, noise_prob=0.2, unroll=unroll)
      t = time.perf_counter()
      compiled = step.lower(state, batch, jax.random.key(2)).compile()
      steps[name] = {"fn": compiled, "state": state, "compile_s": time.perf_counter() - t,
                     "times": []}
  finally:
    for n, fn in new_fns.items():
      setattr(module, n, fn)
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
  host_memory.reuse_freed_memory()  # as the CLIs train (both versions alike)
  module = importlib.import_module(f"rnem_jax.{FLAGS.module}")
  spec = importlib.util.spec_from_file_location(f"{FLAGS.module}_old", FLAGS.old)
  old = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = old  # flax's dataclasses look their module up
  spec.loader.exec_module(old)
  old_fns = {n: getattr(old, n) for n in FLAGS.names}
  rows = []
  for shape in FLAGS.shape:
    B, K, T, size, unroll = shape.split(",")
    unroll = True if unroll == "full" else int(unroll)
    row = compare(module, old_fns, int(B), int(K), int(T), int(size), unroll, FLAGS.calls)
    rows.append(row)
    print(f"B{B} K{K} T{T} {size}x{size} unroll={unroll}: old {row['old_step_s']:.3f} s, "
          f"new {row['new_step_s']:.3f} s, new/old {row['new_over_old']:.3f}", flush=True)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump({"old": FLAGS.old, "module": FLAGS.module, "names": FLAGS.names,
                 "devices": str(jax.devices()), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
