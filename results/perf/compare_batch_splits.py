"""Training step with one batch slice per EM step against two (``train.batch_splits``),
both compiled in one process and called in alternation (medians of 10).

  python results/perf/compare_batch_splits.py results/perf/compare_batch_splits.json
"""
import sys, time, statistics, json
from rnem_jax import host_memory; host_memory.reuse_freed_memory()
import jax, jax.numpy as jnp
from rnem_jax import benchmark
rows = []
for B, T in [(16, 10), (8, 30)]:  # 64x64, K=5, unrolled
  cfg, _ = benchmark.model_config("rnem", 64)
  network, params, batch, key = benchmark.synthetic_inputs(cfg, B=B, K=5, T=T)
  feats = batch["features"]
  steps = {}
  for s in (1, 2):
    t = time.perf_counter()
    c, st = benchmark.compile_train_step(network, params, feats, key, K=5, batch_splits=s)
    steps[s] = dict(c=c, st=st, compile_s=time.perf_counter() - t, times=[])
  def call(s):
    d = steps[s]; d["st"], m = d["c"](d["st"], {"features": feats}, key); jax.block_until_ready(m); return m
  for s in (1, 2):
    for _ in range(3): call(s)
  for i in range(10):
    for s in ((1, 2) if i % 2 == 0 else (2, 1)):
      t = time.perf_counter(); call(s); steps[s]["times"].append(time.perf_counter() - t)
  r = dict(B=B, K=5, T=T, **{f"splits{s}_step_s": statistics.median(steps[s]["times"]) for s in (1, 2)},
           **{f"splits{s}_compile_s": steps[s]["compile_s"] for s in (1, 2)},
           **{f"splits{s}_all_s": steps[s]["times"] for s in (1, 2)})
  r["ratio"] = r["splits2_step_s"] / r["splits1_step_s"]
  print(f"B{B} K5 T{T}: 1 slice {r['splits1_step_s']:.3f} s (compile {r['splits1_compile_s']:.0f} s), 2 slices {r['splits2_step_s']:.3f} s (compile {r['splits2_compile_s']:.0f} s), ratio {r['ratio']:.3f}", flush=True)
  rows.append(r)
  del steps
json.dump(rows, open(sys.argv[1], "w"), indent=1)
