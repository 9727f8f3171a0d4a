"""Training-step time with freed host memory kept or handed back (rnem_jax.host_memory).

The settings of ``host_memory.reuse_freed_memory`` are process-wide and cannot be undone once
threads have allocated. So both variants run in one process with them on, and the "handed
back" variant calls ``malloc_trim(0)`` (``host_memory.release_free_memory``) before each step:
every free page goes back to the OS, so the step faults its temporary buffer in again, as it
does under glibc's defaults, where that buffer is a fresh mmap every call. The trim itself is
not timed. Calls alternate; medians, page faults per step and the ratio are reported per shape.

  python results/perf/compare_allocator.py --out=results/perf/compare_allocator.json
"""

import json
import statistics
import time

from absl import app, flags

from rnem_jax import host_memory

flags.DEFINE_multi_string("shape", ["16,5,10,64,full", "8,5,30,64,full", "16,5,20,32,full"],
                          "B,K,T,image_size,unroll (repeatable)")
flags.DEFINE_integer("calls", 8, "timed calls of each variant (after one warm-up call each)")
flags.DEFINE_string("out", "", "write the results here (JSON)")
FLAGS = flags.FLAGS


def compare(B, K, T, size, unroll, calls):
  import jax
  from rnem_jax import benchmark

  fn, state, batch, key = benchmark.synthetic_train_step("rnem", B=B, K=K, T=T, image_size=size,
                                                         unroll=unroll)
  times = {"kept": [], "handed_back": []}
  faults = {"kept": [], "handed_back": []}
  for r in range(calls + 1):
    for name in times:
      if name == "handed_back":
        host_memory.release_free_memory()
      f0, t = host_memory.minor_page_faults(), time.perf_counter()
      state, metrics = fn(state, batch, key)
      jax.block_until_ready(metrics)
      if r:
        times[name].append(time.perf_counter() - t)
        faults[name].append(host_memory.minor_page_faults() - f0)
  res = dict(B=B, K=K, T=T, image_size=size, unroll=unroll)
  for name in times:
    res[f"{name}_step_s"] = statistics.median(times[name])
    res[f"{name}_page_faults"] = statistics.median(faults[name])
  res["kept_over_handed_back"] = res["kept_step_s"] / res["handed_back_step_s"]
  return res


def main(argv):
  del argv
  if not host_memory.reuse_freed_memory("reuse"):
    raise SystemExit("needs glibc (rnem_jax.host_memory)")
  rows = []
  for shape in FLAGS.shape:
    B, K, T, size, unroll = shape.split(",")
    unroll = True if unroll == "full" else int(unroll)
    row = compare(int(B), int(K), int(T), int(size), unroll, FLAGS.calls)
    rows.append(row)
    print(f"B{B} K{K} T{T} {size}x{size}: handed back {row['handed_back_step_s']:.3f} s "
          f"({row['handed_back_page_faults']:.0f} faults), kept {row['kept_step_s']:.3f} s "
          f"({row['kept_page_faults']:.0f} faults), kept/handed back "
          f"{row['kept_over_handed_back']:.3f}", flush=True)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump({"calls": FLAGS.calls, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
