"""Where the training step's time goes: XLA:CPU ops from a ``jax.profiler`` trace, by kind.

Compiles the benchmark's synthetic R-NEM training step (``rnem_jax.benchmark``),
runs a few warm-up steps, traces ``--steps`` more, and sums the duration of every
XLA op event on the compute threads (both threads together, per step). Each op
is classified from the optimized HLO: a library fusion by the convolution or dot
inside it, every other fusion by the ops in its name (slices, pads, copies and
transposes, concatenations, the rest elementwise/reductions). Thread time not
covered by any op (waiting, dispatch, tracing) is the difference to ``threads x wall``.
A step whose temporary buffer is faulted in again (``rnem_jax.host_memory``'s
warm-up transient) books the faults to the ops that touch it first, mostly slices
and elementwise fusions: the page faults per traced step are reported with it.

  python results/perf/profile_step.py --batch=8 --T=30 --out=results/perf/profile_b8_t30.json
"""

import collections
import glob
import json
import re
import tempfile
import time

import jax
from absl import app, flags

from rnem_jax import benchmark, host_memory  # the benchmark's flags: --batch, --K, --T, --image_size

flags.DEFINE_integer("warmup", 8, "untraced steps first")
flags.DEFINE_integer("steps", 3, "traced steps")
flags.DEFINE_integer("top", 15, "single ops listed")
flags.DEFINE_string("out", "", "write the breakdown here (JSON)")
FLAGS = flags.FLAGS

_SKIP = ("ThunkExecutor::Execute", "SlinkyThreadPool::Await")
_INST = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\(")


def hlo_kinds(hlo: str) -> dict:
  """Op name -> ``(kind, description)`` for every instruction of the optimized HLO text."""
  comps, cur = {}, None
  for line in hlo.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if m and not line.startswith(" "):
      cur = m.group(1)
      comps[cur] = []
    elif cur:
      comps[cur].append(line)
  kinds = {}
  for lines in comps.values():
    for line in lines:
      m = _INST.match(line)
      if not m:
        continue
      name, op = m.groups()
      kinds[name] = (op, "")
      called = re.search(r"calls=%([\w.\-]+)", line)
      if op == "fusion" and called:
        for inner in comps.get(called.group(1), []):
          mm = _INST.match(inner)
          if mm and mm.group(2) in ("convolution", "dot"):
            shape = inner.split("=", 1)[1].split("metadata")[0]
            where = re.search(r'op_name="([^"]+)"', inner)
            kinds[name] = (mm.group(2), re.sub(r"%[\w.\-]+", "%", shape).strip()
                           + (" @ " + where.group(1)[-90:] if where else ""))
            break
  return kinds


def category(name: str, kinds: dict) -> str:
  kind = kinds.get(name, ("?", ""))[0]
  if kind in ("convolution", "dot"):
    return kind
  base = re.sub(r"\.\d+$", "", name)
  for word, cat in (("slice", "slice"), ("pad", "pad"), ("transpose", "copy/transpose"),
                    ("copy", "copy/transpose"), ("concatenate", "concatenate")):
    if word in base:
      return cat
  return "elementwise/reduction"


def main(_):
  host_memory.reuse_freed_memory()  # before the first computation
  compiled, state, batch, key = benchmark.synthetic_train_step(
      "rnem", B=FLAGS.batch, K=FLAGS.K, T=FLAGS.T, image_size=FLAGS.image_size)
  box = [state]

  def step():
    box[0], metrics = compiled(box[0], batch, key)
    jax.block_until_ready(metrics)

  for _ in range(FLAGS.warmup):
    step()
  with tempfile.TemporaryDirectory() as d:
    faults = host_memory.minor_page_faults()
    t = time.perf_counter()
    with jax.profiler.trace(d):
      for _ in range(FLAGS.steps):
        step()
    wall = (time.perf_counter() - t) / FLAGS.steps
    faults = (host_memory.minor_page_faults() - faults) / FLAGS.steps
    data = jax.profiler.ProfileData.from_file(glob.glob(d + "/**/*.xplane.pb", recursive=True)[0])
  per_op, threads = collections.Counter(), set()
  for plane in data.planes:
    for line in plane.lines:
      if "XLAEigen" not in line.name:
        continue
      threads.add(line.name)
      for ev in line.events:
        if ev.name not in _SKIP and not ev.name.startswith("end:"):
          per_op[ev.name] += ev.duration_ns / 1e9 / FLAGS.steps
  kinds = hlo_kinds(compiled.as_text())
  cats = collections.Counter()
  for name, s in per_op.items():
    cats[category(name, kinds)] += s
  total = sum(cats.values())
  top = collections.Counter()
  for name, s in per_op.items():
    kind, desc = kinds.get(name, ("?", ""))
    if kind in ("convolution", "dot"):
      top[f"{kind} {desc}"] += s
  res = {"B": FLAGS.batch, "K": FLAGS.K, "T": FLAGS.T, "image_size": FLAGS.image_size,
         "jax_version": jax.__version__, "threads": len(threads), "traced_wall_s_per_step": wall,
         "page_faults_per_step": faults,
         "op_thread_s_per_step": total,
         "not_in_ops_fraction": 1 - total / (len(threads) * wall) if threads else None,
         "categories": {k: {"s": v, "fraction": v / total} for k, v in cats.most_common()},
         "top_library_ops": [{"op": k, "s": v, "fraction": v / total}
                             for k, v in top.most_common(FLAGS.top)]}
  print(f"B{FLAGS.batch} K{FLAGS.K} T{FLAGS.T} {FLAGS.image_size}x{FLAGS.image_size}: traced step "
        f"{wall:.2f} s on {len(threads)} threads, {faults:.0f} page faults; ops {total:.2f} thread-s "
        f"({res['not_in_ops_fraction']:.0%} of thread time in no op)")
  for k, v in cats.most_common():
    print(f"  {v:7.3f} s {100 * v / total:5.1f} %  {k}")
  for row in res["top_library_ops"]:
    print(f"  {row['s']:7.3f} s {100 * row['fraction']:5.1f} %  {row['op'][:150]}")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(res, f, indent=1)


if __name__ == "__main__":
  app.run(main)
