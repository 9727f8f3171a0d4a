"""How many training steps the kept heap (rnem_jax.host_memory) needs before it stops faulting.

With glibc keeping freed memory, a repeated XLA:CPU call still faults its whole temporary
buffer in on some of its first calls: the heap's break (``sbrk(0)``) grows by about one buffer
on each such call. A freed buffer-sized chunk is split to serve small allocations made between
calls, is then too small for the next buffer, and the next buffer is carved from fresh memory at
the heap's top. After enough buffers' worth of split chunks the heap stops growing and calls
stop faulting. This script runs the B16 K5 T10 64x64 R-NEM training step ``--calls`` times in
each of ``--processes`` fresh processes (one after another) and records, per call, the minor
page faults and the growth of the heap's break.

  python results/perf/kept_heap_warmup.py --out=results/perf/kept_heap_warmup.json
"""

import json
import os
import subprocess
import sys

from absl import app, flags

flags.DEFINE_string("shape", "16,5,10,64", "B,K,T,image_size")
flags.DEFINE_integer("calls", 40, "training steps per process (after compiling)")
flags.DEFINE_integer("processes", 3, "fresh processes, run one after another")
flags.DEFINE_string("out", "", "write the results here (JSON)")
FLAGS = flags.FLAGS

CHILD = r"""
import json, sys
from rnem_jax import host_memory
assert host_memory.reuse_freed_memory("reuse")
import jax
from rnem_jax import benchmark

B, K, T, size, calls = map(int, sys.argv[1:6])
fn, state, batch, key = benchmark.synthetic_train_step("rnem", B=B, K=K, T=T,
                                                       image_size=size)
temp = fn.memory_analysis().temp_size_in_bytes
faults, growth = [], []
for _ in range(calls):
  f0, b0 = host_memory.minor_page_faults(), host_memory.heap_break()
  state, metrics = fn(state, batch, key)
  jax.block_until_ready(metrics)
  faults.append(host_memory.minor_page_faults() - f0)
  growth.append(host_memory.heap_break() - b0)
print(json.dumps(dict(temp_bytes=temp, faults=faults, heap_growth_bytes=growth)))
"""


def main(argv):
  del argv
  B, K, T, size = (int(v) for v in FLAGS.shape.split(","))
  env = dict(os.environ, RNEM_HOST_ALLOCATOR="reuse")
  env.pop("GLIBC_TUNABLES", None)
  runs = []
  for p in range(FLAGS.processes):
    out = subprocess.run([sys.executable, "-c", CHILD, str(B), str(K), str(T), str(size),
                          str(FLAGS.calls)], env=env, capture_output=True, text=True, check=True)
    run = json.loads(out.stdout.strip().splitlines()[-1])
    pages = run["temp_bytes"] / 4096
    faulting = [i for i, f in enumerate(run["faults"]) if i and f > 0.5 * pages]
    run["faulting_calls"] = faulting  # 0-based; call 0 always faults the buffer in
    run["heap_growth_total_gb"] = sum(run["heap_growth_bytes"]) / 2**30
    runs.append(run)
    print(f"process {p}: temp {run['temp_bytes'] / 2**30:.2f} GB, calls faulting the buffer "
          f"again: {faulting}, heap grew {run['heap_growth_total_gb']:.2f} GB", flush=True)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(dict(B=B, K=K, T=T, image_size=size, calls=FLAGS.calls, runs=runs), f, indent=1)


if __name__ == "__main__":
  app.run(main)
