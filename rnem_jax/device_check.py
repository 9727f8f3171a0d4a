"""One short check of a GPU/TPU machine at paper scale, written as JSON as it goes.

  python -m rnem_jax.device_check --out=results/gpu/device_check.json

(``bash launch/device_check.sh`` wraps it.) In this order, each stage within what is left of
``--budget_s`` (default 8 minutes), the JSON rewritten after every stage so that a stopped run
keeps what it measured:

1. ``steps``: the paper-scale R-NEM training step (B=64, K=5, T=30, 64x64; ``--batch`` etc.)
   with both convolution implementations (``layers.conv2d``), with and without remat: compile
   and median step seconds on one device, peak device memory (cumulative over the process: it
   only grows), XLA's temporary-buffer estimate; the default variant again on all devices when
   there are several (pmap semantics, ``train.make_train_step(mesh=...)``).
2. ``build``: the paper dataset built with every core this process may use.
3. ``input``: the training input pipeline's sequences per second (decoding the fields the
   step reads) against what the fastest step consumes (B / step seconds).
4. ``train``: ``--train_steps`` (300) paper-scale steps through ``train.train_and_evaluate``
   (the real loop, checkpoints and all): the loss every 10 steps, and whether it fell.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Optional

import jax
import numpy as np
from absl import app, flags

from rnem_jax import benchmark, data, host_memory, layers, train
from rnem_jax.config import make_config

# The benchmark's shape flags (--batch, --K, --T, --image_size, --conv_impl, --repeats), with the
# paper scale and both implementations as this command's defaults.
for _name, _value in (("batch", 64), ("K", 5), ("T", 30), ("image_size", 64),
                      ("conv_impl", list(layers.CONV_IMPLEMENTATIONS)), ("repeats", 5)):
  flags.FLAGS.set_default(_name, _value)
flags.DEFINE_string("out", "results/gpu/device_check.json", "where the JSON goes")
flags.DEFINE_list("remats", ["true", "false"], "remat variants to time")
flags.DEFINE_string("dataset", "bouncing_balls/balls4mass64", "dataset built and trained on")
flags.DEFINE_string("data_dir", "", "where datasets go ('' = $RNEM_DATA_DIR or ~/tensorflow_datasets)")
flags.DEFINE_integer("train_steps", 300, "paper-scale training steps in stage 4")
flags.DEFINE_float("budget_s", 480.0, "wall-clock budget; stages that would not fit are skipped")
FLAGS = flags.FLAGS


def _environment() -> dict:
  d = jax.devices()[0]
  return dict(backend=jax.default_backend(), device_kind=d.device_kind, devices=jax.device_count(),
              processes=jax.process_count(), jax_version=jax.__version__,
              cores=len(os.sched_getaffinity(0)), conv_impl_auto=layers.resolve_conv_impl("auto"),
              time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def time_steps(*, B: int, K: int, T: int, image_size: int, conv_impls, remats, repeats: int,
               all_devices: bool = True) -> list[dict]:
  """Compile and step seconds of the R-NEM training step per (conv_impl, remat), one device;
  then the first variant on every device (when there are several)."""
  model_cfg, _ = benchmark.model_config("rnem", image_size)
  rows = []
  for impl in conv_impls:
    for remat in remats:
      row = benchmark.run_variant(model_cfg=model_cfg, K=K, B=B, T=T, conv_impl=impl, unroll=1,
                                  remat=remat, repeats=repeats, parts=("train",))
      rows.append({k: row.get(k) for k in ("conv_impl", "remat", "B", "K", "T", "compile_s",
                                           "train_step_s", "train_step_all_s",
                                           "train_xla_temp_gb", "device_peak_gb",
                                           "peak_rss_gb")} | {"devices": 1})
  n = jax.device_count()
  if all_devices and n > 1 and B % n == 0:
    best = min(rows, key=lambda r: r["train_step_s"])
    cfg = model_cfg.copy_and_resolve_references()
    cfg.conv_impl = best["conv_impl"]
    network, params, batch, key = benchmark.synthetic_inputs(cfg, B=B, K=K, T=T)
    mesh = train.make_mesh()
    tx = train.make_optimizer(1e-3)
    state = train.replicate(train.create_train_state(params, tx), mesh)
    step = train.make_train_step(network, tx, K=K, noise_prob=0.2, unroll=1,
                                 remat=best["remat"], mesh=mesh)
    features = train.shard_batch({"features": np.asarray(batch["features"])}, mesh)
    t = time.perf_counter()
    compiled = step.lower(state, features, key).compile()
    compile_s = time.perf_counter() - t
    box = [state]

    def one():
      box[0], m = compiled(box[0], features, key)
      jax.block_until_ready(m)

    median, all_s = benchmark.time_calls(one, repeats)
    rows.append(dict(conv_impl=best["conv_impl"], remat=best["remat"], B=B, K=K, T=T,
                     compile_s=compile_s, train_step_s=median, train_step_all_s=all_s,
                     device_peak_gb=benchmark.device_memory_gb(), devices=n))
  return rows


def input_rate(dataset: str, data_dir: Optional[str], B: int, T: int, batches: int = 20) -> dict:
  """Sequences per second of the training pipeline (after a first batch), for one process."""
  info = data.dataset_info(dataset, data_dir)
  it = data.iterate_batches(dataset, "train", B, seed=0, num_frames=T + 1,
                            keys=train.model_keys(info), data_dir=data_dir)
  next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - t
  return dict(sequences_per_s=B * batches / seconds, batches=batches, batch=B)


def train_run(dataset: str, data_dir: Optional[str], *, B: int, K: int, T: int,
              image_size: int, steps: int, workdir: str) -> dict:
  """``steps`` training steps of the paper config (one validation of up to 64 sequences at the
  end)."""
  valid = min(64, data.dataset_info(dataset, data_dir).splits["validation"])
  cfg = make_config("rnem,paper", datasets={"paper": dataset}, image_size={"paper": image_size},
                    em={"paper": {"K": K, "T": T}},
                    train={"paper": dict(batch_size=B, max_steps=steps, steps_per_epoch=steps,
                                         valid_size=valid, valid_batch_size=valid, log_every=10,
                                         checkpoint_every=max(steps, 1))})
  with cfg.unlocked():
    cfg.data_dir = data_dir or ""
  t = time.perf_counter()
  summary = train.train_and_evaluate(cfg, workdir)
  seconds = time.perf_counter() - t
  with open(os.path.join(workdir, "train_log.jsonl")) as f:
    rows = [r for r in map(json.loads, f) if r["kind"] == "train"]
  losses = [(r["step"], r["loss"]) for r in rows]
  first, last = losses[0][1], losses[-1][1]
  return dict(summary, seconds=seconds, loss_every_10=losses, first_loss=first, last_loss=last,
              loss_fell=bool(last < first))


def run(*, out: str, B: int, K: int, T: int, image_size: int, conv_impls, remats, repeats: int,
        dataset: str, data_dir: Optional[str], train_steps: int, budget_s: float) -> dict:
  """Runs the stages (module docstring) and returns the record it wrote to ``out``."""
  start = time.time()
  record = {"environment": _environment(), "config": dict(
      B=B, K=K, T=T, image_size=image_size, dataset=dataset, train_steps=train_steps)}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

  def save(stage: str, value) -> None:
    record[stage] = value
    record["elapsed_s"] = time.time() - start
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
      json.dump(record, f, indent=1)
    os.replace(tmp, out)
    print(f"[{record['elapsed_s']:.0f} s] {stage}: {json.dumps(value)[:400]}", flush=True)

  save("steps", time_steps(B=B, K=K, T=T, image_size=image_size, conv_impls=conv_impls,
                           remats=remats, repeats=repeats))
  t = time.perf_counter()
  data.build(dataset, data_dir)
  save("build", dict(seconds=time.perf_counter() - t, dataset=dataset,
                     workers=record["environment"]["cores"]))
  rate = input_rate(dataset, data_dir, B, T)
  fastest = min(r["train_step_s"] for r in record["steps"])
  rate["step_consumes_per_s"] = B / fastest
  rate["keeps_up"] = rate["sequences_per_s"] >= rate["step_consumes_per_s"]
  save("input", rate)
  left = budget_s - (time.time() - start)
  need = fastest * train_steps + 2 * max(r["compile_s"] for r in record["steps"])
  if need > left:
    save("train", dict(skipped=f"needs ~{need:.0f} s, {left:.0f} s left of the budget"))
    return record
  workdir = tempfile.mkdtemp(prefix="rnem_device_check_")
  try:
    save("train", train_run(dataset, data_dir, B=B, K=K, T=T, image_size=image_size,
                            steps=train_steps, workdir=workdir))
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return record


def main(argv):
  del argv
  host_memory.reuse_freed_memory()
  host_memory.for_backend(jax.default_backend())
  run(out=FLAGS.out, B=FLAGS.batch, K=FLAGS.K, T=FLAGS.T, image_size=FLAGS.image_size,
      conv_impls=FLAGS.conv_impl, remats=[r.lower() == "true" for r in FLAGS.remats],
      repeats=FLAGS.repeats, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir or None,
      train_steps=FLAGS.train_steps, budget_s=FLAGS.budget_s)


if __name__ == "__main__":
  app.run(main)
