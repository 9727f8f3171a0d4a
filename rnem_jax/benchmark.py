"""Speed and memory of the training step, the forward rollout and the evaluation step.

Usage (the interface is stable; every flag has a default)::

  python -m rnem_jax.benchmark --model=rnem --batch=16 --K=5 --T=10 --image_size=64 \\
      --json=/tmp/bench.json

Per variant (``--conv_impl=fast,xla`` compares implementations and
``--batch_splits=1,2`` the batch slicing of ``train.batch_splits`` in one process,
which is the only fair comparison on a shared machine) it reports the compile
time and the median step time of the jitted training step, the jitted
forward-only rollout (the loss, no gradient) and the jitted evaluation step
(``evaluate.step_metrics``); the model's analytic FLOPs (every convolution and
matrix multiply of one network step, counted on its jaxpr, times T; a training
step counts 3x the forward pass), XLA's own cost analysis, the achieved
GFLOP/s, the same-process float32 matmul GFLOP/s (numpy, 2048^2, the best of
a measurement before and after the variants) as the local ceiling, the ratio of
the two, and peak memory (peak RSS of the process since the variant started,
XLA's buffer estimate, and the device's ``memory_stats`` where it has them).

The JSON holds the first variant's numbers at top level (``train_step_s``,
``compile_s``, ``gflops_per_s``, ``matmul_gflops_per_s``, ``peak_rss_gb``, ...)
and every variant under ``variants``.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from rnem_jax import em, evaluate, host_memory, layers, train
from rnem_jax.config import MODELS
from rnem_jax.model import build_network, default_model_config, init_params

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "rnem", f"model name ({', '.join(MODELS)}) or a cell type")
flags.DEFINE_string("architecture", "balls", "'balls' or 'atari'")
flags.DEFINE_integer("batch", 16, "sequences per batch B")
flags.DEFINE_integer("K", 5, "components K (default: 5; the model's own K for rnn/lstm)")
flags.DEFINE_integer("T", 10, "EM steps T (frames T+1)")
flags.DEFINE_integer("image_size", 64, "frame height = width")
flags.DEFINE_integer("hidden", 250, "recurrent size M")
flags.DEFINE_list("interaction_sizes", ["250", "250", "250", "100"],
                  "Upsilon's (enc, embed, effect, attention) units")
flags.DEFINE_list("conv_impl", ["auto"], "variants to time, from 'auto' (fast on CPU, xla on "
                  f"GPU/TPU) and {layers.CONV_IMPLEMENTATIONS}")
flags.DEFINE_string("unroll", "full", "lax.scan unroll of the EM loop: 'full' or an integer")
flags.DEFINE_bool("remat", False, "rematerialise each EM step in the backward pass")
flags.DEFINE_list("batch_splits", ["1"], "variants to time: independent batch slices per EM "
                  "step (em.rollout's batch_splits; train.batch_splits)")
flags.DEFINE_integer("repeats", 5, "timed calls per measurement (after one warm-up call)")
flags.DEFINE_list("parts", ["train", "forward", "eval"], "what to time")
flags.DEFINE_integer("matmul_size", 2048, "n of the n x n float32 matmul ceiling")
flags.DEFINE_string("json", "", "write the results here")
flags.DEFINE_enum("host_allocator", None, list(host_memory.MODES),
                  "reuse: glibc keeps freed memory (rnem_jax.host_memory; the default) | system: "
                  "glibc's defaults (default: $RNEM_HOST_ALLOCATOR, else reuse)")

GB = 1024.0 ** 3


# ---------------------------------------------------------------------------
# FLOPs


def _sub_jaxprs(params: dict):
  for v in params.values():
    for item in (v if isinstance(v, (tuple, list)) else (v,)):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield item


def jaxpr_flops(jaxpr) -> float:
  """Multiply-add FLOPs (2 per MAC) of every dot_general and convolution in ``jaxpr``.

  Element-wise work (layer norm, activations, the E-step) is not counted.
  Scans count their body ``length`` times.
  """
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
      per_output = math.prod(rhs) / rhs[out_feature_dim]
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
    else:
      inner = sum(jaxpr_flops(j) for j in _sub_jaxprs(eqn.params))
      total += inner * (eqn.params["length"] if name == "scan" else 1)
  return total


def network_step_flops(network, params, B: int, K: int) -> float:
  """Forward FLOPs of one network step (all B*K components), counted on the plain
  ``"xla"`` convolutions, i.e. the model's nominal arithmetic."""
  h, w = network.arch.image_size
  u = jax.ShapeDtypeStruct((B, K, h, w, network.arch.channels), jnp.float32)
  state = network.initial_state(B, K)
  actions = jnp.zeros((B,), jnp.int32) if network.num_actions else None
  plain = network.clone(conv_impl="xla")
  closed = jax.make_jaxpr(lambda p, u: plain.apply(p, u, state, actions))(params, u)
  return jaxpr_flops(closed.jaxpr)


def xla_flops(compiled) -> Optional[float]:
  """``flops`` of XLA's cost analysis (None where the backend gives none)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # best-effort API: backends may not implement it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def xla_temp_gb(compiled) -> Optional[float]:
  """XLA's own estimate of the step's temporary buffers."""
  try:
    mem = compiled.memory_analysis()
    return float(mem.temp_size_in_bytes) / GB
  except Exception:  # best-effort API
    return None


# ---------------------------------------------------------------------------
# Ceiling, memory, timing


def matmul_gflops(n: int = 2048, repeats: int = 5) -> dict:
  """float32 n x n matmul GFLOP/s, numpy and jnp, median of ``repeats``."""
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
  out = {}
  np.dot(a, b)
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    np.dot(a, b)
    ts.append(time.perf_counter() - t)
  out["numpy"] = 2.0 * n ** 3 / statistics.median(ts) / 1e9
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  mm = jax.jit(jnp.dot)
  mm(ja, jb).block_until_ready()
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    mm(ja, jb).block_until_ready()
    ts.append(time.perf_counter() - t)
  out["jnp"] = 2.0 * n ** 3 / statistics.median(ts) / 1e9
  return out


def reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS counter of this process (Linux); False if it cannot."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def peak_rss_gb() -> float:
  """Peak resident memory of this process: VmHWM (resettable) or getrusage's maximum."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024 / GB
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def device_memory_gb() -> Optional[float]:
  """Peak bytes in use on the first device, where the backend reports it."""
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None
  peak = stats.get("peak_bytes_in_use", stats.get("bytes_in_use"))
  return None if peak is None else peak / GB


def time_calls(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
  """Median seconds of ``repeats`` calls of ``fn`` (which blocks), after one warm-up call."""
  fn()
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return statistics.median(ts), ts


# ---------------------------------------------------------------------------
# The benchmark


def model_config(model: str, image_size: int, architecture: str = "balls", hidden: int = 250,
                 interaction_sizes=(250, 250, 250, 100)):
  """``(model section, default K)`` of a model name (``config.MODELS``) or a cell type."""
  cell, K = MODELS[model][:2] if model in MODELS else (model, 5)
  cfg = default_model_config(architecture=architecture, image_size=image_size, cell=cell,
                             hidden=hidden, interaction_sizes=tuple(interaction_sizes))
  return cfg, K


def synthetic_batch(key, T: int, B: int, image_size: int, channels: int = 1) -> dict:
  """Random binary frames and group ids shaped like a dataset batch (time-major)."""
  kf, kg = jax.random.split(key)
  shape = (T + 1, B, image_size, image_size, channels)
  return {"features": jax.random.bernoulli(kf, 0.1, shape).astype(jnp.float32),
          "groups": jax.random.randint(kg, shape, 0, 4).astype(jnp.float32)}


def compile_train_step(network, params, features, key, *, K: int, unroll=True,
                       remat: bool = False, noise_prob: float = 0.2, batch_splits: int = 1):
  """The training loop's step (``train.make_train_step`` on a one-device mesh) for
  ``features [T+1, B, H, W, C]``, compiled.

  Returns ``(compiled, state)``: ``compiled(state, {"features": features}, key) -> (state,
  metrics)``. The step donates its state, so ``state`` holds its own copy of ``params``.
  """
  tx = train.make_optimizer(1e-3)
  mesh = train.make_mesh(jax.devices()[:1])
  state = train.replicate(train.create_train_state(jax.tree_util.tree_map(jnp.copy, params), tx),
                          mesh)
  step = train.make_train_step(network, tx, K=K, noise_prob=noise_prob, unroll=unroll,
                               remat=remat, batch_splits=batch_splits, mesh=mesh)
  return step.lower(state, {"features": features}, key).compile(), state


def synthetic_inputs(model_cfg, *, B: int, K: int, T: int):
  """``(network, params, batch, key)`` of every timed variant: ``model_cfg``'s network, its
  parameters (key 0), a ``synthetic_batch`` (key 1; ``features`` and ``groups``
  ``[T+1, B, H, W, C]``) and the step's key (2)."""
  network = build_network(model_cfg)
  params = init_params(network, jax.random.key(0), K)
  batch = synthetic_batch(jax.random.key(1), T, B, model_cfg.image_size, model_cfg.channels)
  return network, params, batch, jax.random.key(2)


def synthetic_train_step(model: str, *, B: int, K: int, T: int, image_size: int, unroll=True,
                         remat: bool = False):
  """``model``'s training step, compiled on a synthetic batch ``[T+1, B, H=W=image_size, 1]``.

  The network, parameters, batch and key are ``synthetic_inputs``'s, as in ``run_variant``.
  Returns ``(compiled, state, batch, key)``: call ``compiled(state, batch, key)``; ``batch``
  holds ``features`` only.
  """
  network, params, batch, key = synthetic_inputs(model_config(model, image_size)[0], B=B, K=K,
                                                 T=T)
  batch = {"features": batch["features"]}
  compiled, state = compile_train_step(network, params, batch["features"], key, K=K,
                                       unroll=unroll, remat=remat)
  return compiled, state, batch, key


def run_variant(*, model_cfg, K: int, B: int, T: int, conv_impl: str, unroll, remat: bool,
                repeats: int, parts=("train", "forward", "eval"), noise_prob: float = 0.2,
                batch_splits: int = 1) -> dict:
  """Compiles and times one variant; returns its measurements (see the module docstring)."""
  reset_peak_rss()
  conv_impl = layers.resolve_conv_impl(conv_impl)
  model_cfg = model_cfg.copy_and_resolve_references()
  model_cfg.conv_impl = conv_impl
  network, params, batch, key = synthetic_inputs(model_cfg, B=B, K=K, T=T)
  fwd_flops = network_step_flops(network, params, B, K) * T
  res = dict(conv_impl=conv_impl, unroll=unroll, remat=remat, batch_splits=batch_splits, B=B,
             K=K, T=T, image_size=model_cfg.image_size, cell=model_cfg.cell,
             forward_gflop=fwd_flops / 1e9, train_gflop=3 * fwd_flops / 1e9)
  if "train" in parts:
    t = time.perf_counter()
    compiled, state = compile_train_step(network, params, batch["features"], key, K=K,
                                         unroll=unroll, remat=remat, noise_prob=noise_prob,
                                         batch_splits=batch_splits)
    res["compile_s"] = time.perf_counter() - t
    res["train_xla_gflop"] = (xla_flops(compiled) or float("nan")) / 1e9
    res["train_xla_temp_gb"] = xla_temp_gb(compiled)
    box = [state]

    def one_step():
      box[0], metrics = compiled(box[0], {"features": batch["features"]}, key)
      jax.block_until_ready(metrics)

    faults = host_memory.minor_page_faults()
    res["train_step_s"], res["train_step_all_s"] = time_calls(one_step, repeats)
    res["train_page_faults_per_step"] = (host_memory.minor_page_faults() - faults) / (
        repeats + 1)
    res["gflops_per_s"] = res["train_gflop"] / res["train_step_s"]
    del box, state, compiled
  if "forward" in parts:
    fwd = jax.jit(lambda p, x, k: em.training_loss(network, p, x, k, K=K, noise_prob=noise_prob,
                                                   unroll=unroll, batch_splits=batch_splits)[0])
    t = time.perf_counter()
    compiled = fwd.lower(params, batch["features"], key).compile()
    res["forward_compile_s"] = time.perf_counter() - t
    res["forward_xla_gflop"] = (xla_flops(compiled) or float("nan")) / 1e9
    res["forward_s"], _ = time_calls(
        lambda: compiled(params, batch["features"], key).block_until_ready(), repeats)
    res["forward_gflops_per_s"] = res["forward_gflop"] / res["forward_s"]
  if "eval" in parts:
    ev = jax.jit(lambda p, b, k: evaluate.step_metrics(network, p, b, k, K=K,
                                                       noise_prob=noise_prob, num_groups=4))
    t = time.perf_counter()
    compiled = ev.lower(params, batch, key).compile()
    res["eval_compile_s"] = time.perf_counter() - t
    res["eval_s"], _ = time_calls(
        lambda: jax.block_until_ready(compiled(params, batch, key)), repeats)
  res["peak_rss_gb"] = peak_rss_gb()
  res["device_peak_gb"] = device_memory_gb()
  return res


def format_table(rows: list[dict], ceiling: float) -> str:
  cols = [("conv_impl", "{}"), ("unroll", "{}"), ("remat", "{}"), ("batch_splits", "{}"),
          ("compile_s", "{:.1f}"),
          ("train_step_s", "{:.3f}"), ("gflops_per_s", "{:.1f}"), ("ratio", "{:.2f}"),
          ("forward_s", "{:.3f}"), ("eval_s", "{:.3f}"), ("train_gflop", "{:.1f}"),
          ("train_xla_gflop", "{:.1f}"), ("peak_rss_gb", "{:.2f}"), ("train_xla_temp_gb", "{:.2f}"),
          ("train_page_faults_per_step", "{:.0f}")]
  lines = [" | ".join(c for c, _ in cols)]
  for r in rows:
    r = dict(r, ratio=r.get("gflops_per_s", float("nan")) / ceiling)
    lines.append(" | ".join(fmt.format(r[c]) if r.get(c) is not None else "-" for c, fmt in cols))
  return "\n".join(lines)


def benchmark(*, model: str = "rnem", architecture: str = "balls", B: int = 16,
              K: Optional[int] = None, T: int = 10, image_size: int = 64, hidden: int = 250,
              interaction_sizes=(250, 250, 250, 100), conv_impls=("auto",), unroll=True,
              remat: bool = False, repeats: int = 5, parts=("train", "forward", "eval"),
              matmul_size: int = 2048, batch_splits=(1,)) -> dict:
  """Runs every variant in this process; returns the JSON record."""
  model_cfg, default_K = model_config(model, image_size, architecture, hidden, interaction_sizes)
  K = K or default_K
  before = matmul_gflops(matmul_size)
  variants = [run_variant(model_cfg=model_cfg, K=K, B=B, T=T, conv_impl=impl, unroll=unroll,
                          remat=remat, repeats=repeats, parts=parts, batch_splits=splits)
              for impl in conv_impls for splits in batch_splits]
  after = matmul_gflops(matmul_size)
  ceiling = max(before["numpy"], after["numpy"])
  for v in variants:
    v["ratio_to_matmul"] = v.get("gflops_per_s", float("nan")) / ceiling
  out = dict(variants[0])
  out.update(
      model=model, matmul_gflops_per_s=ceiling,
      host_allocator="reuse" if host_memory.in_effect() else "system",
      matmul_gflops_per_s_before_after=[before["numpy"], after["numpy"]],
      jnp_matmul_gflops_per_s=max(before["jnp"], after["jnp"]), variants=variants,
      backend=jax.default_backend(), device=str(jax.devices()[0]),
      jax_version=jax.__version__, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
  out["table"] = format_table(variants, ceiling)
  return out


def main(argv):
  del argv
  # Before the first computation (see rnem_jax.host_memory).
  host_memory.reuse_freed_memory(FLAGS.host_allocator)
  unroll = True if FLAGS.unroll == "full" else int(FLAGS.unroll)
  out = benchmark(model=FLAGS.model, architecture=FLAGS.architecture, B=FLAGS.batch,
                  K=FLAGS["K"].value if FLAGS["K"].present else None, T=FLAGS.T,
                  image_size=FLAGS.image_size, hidden=FLAGS.hidden,
                  interaction_sizes=[int(s) for s in FLAGS.interaction_sizes],
                  conv_impls=FLAGS.conv_impl, unroll=unroll, remat=FLAGS.remat,
                  repeats=FLAGS.repeats, parts=FLAGS.parts, matmul_size=FLAGS.matmul_size,
                  batch_splits=[int(s) for s in FLAGS.batch_splits])
  print(f"{FLAGS.model} B={FLAGS.batch} K={out['K']} T={FLAGS.T} {FLAGS.image_size}x"
        f"{FLAGS.image_size} on {out['device']}; matmul ceiling "
        f"{out['matmul_gflops_per_s']:.0f} GFLOP/s (numpy {FLAGS.matmul_size}^2)")
  print(out["table"])
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(out, f, indent=1)
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
