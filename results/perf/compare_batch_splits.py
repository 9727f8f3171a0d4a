"""Training step with one batch slice per EM step against two (``train.batch_splits``).

Both steps (64x64, K=5, unrolled, the benchmark's synthetic batch) are compiled in
one process, warmed up, then called in alternation; medians of 10 calls each.

  python results/perf/compare_batch_splits.py results/perf/compare_batch_splits.json
"""

import json
import statistics
import sys
import time

from rnem_jax import host_memory

host_memory.reuse_freed_memory()  # before the first computation

import jax  # noqa: E402

from rnem_jax import benchmark  # noqa: E402

SHAPES = [(16, 10), (8, 30)]  # (B, T)
SPLITS = (1, 2)
CALLS = 10


def compare(B: int, T: int, K: int = 5) -> dict:
  cfg, _ = benchmark.model_config("rnem", 64)
  network, params, batch, key = benchmark.synthetic_inputs(cfg, B=B, K=K, T=T)
  feats = batch["features"]
  steps = {}
  for s in SPLITS:
    t = time.perf_counter()
    compiled, state = benchmark.compile_train_step(network, params, feats, key, K=K,
                                                   batch_splits=s)
    steps[s] = dict(fn=compiled, state=state, compile_s=time.perf_counter() - t, times=[])

  def call(s):
    d = steps[s]
    d["state"], metrics = d["fn"](d["state"], {"features": feats}, key)
    jax.block_until_ready(metrics)

  for s in SPLITS:
    for _ in range(3):
      call(s)
  for i in range(CALLS):
    for s in (SPLITS if i % 2 == 0 else SPLITS[::-1]):
      t = time.perf_counter()
      call(s)
      steps[s]["times"].append(time.perf_counter() - t)
  row = dict(B=B, K=K, T=T)
  for s in SPLITS:
    row[f"splits{s}_step_s"] = statistics.median(steps[s]["times"])
    row[f"splits{s}_compile_s"] = steps[s]["compile_s"]
    row[f"splits{s}_all_s"] = steps[s]["times"]
  row["ratio"] = row["splits2_step_s"] / row["splits1_step_s"]
  return row


def main(out: str) -> None:
  rows = []
  for B, T in SHAPES:
    r = compare(B, T)
    print(f"B{B} K5 T{T}: 1 slice {r['splits1_step_s']:.3f} s (compile "
          f"{r['splits1_compile_s']:.0f} s), 2 slices {r['splits2_step_s']:.3f} s (compile "
          f"{r['splits2_compile_s']:.0f} s), ratio {r['ratio']:.3f}", flush=True)
    rows.append(r)
  with open(out, "w") as f:
    json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1])
