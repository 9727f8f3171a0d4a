"""Command line: train, evaluate or roll out an R-NEM experiment.

  python -m rnem_jax.main --config=configs/balls.py[:<model>[,<scale>]] \
      --workdir=DIR [--mode=train|eval|rollout|all] [--config.field=value ...]

``train`` resumes from ``DIR`` if it holds a checkpoint; ``eval`` writes
``DIR/metrics.json`` (and the extrapolation test set's metrics when the config
names one); ``rollout`` writes ``DIR/rollout.json``; ``all`` does the three; ``visualize``
draws the paper's figures and GIFs into ``DIR/figures``; ``rollout_ablation``
writes ``DIR/rollout_ablation.json`` (the simulation with each of its two
changes alone); ``occlusion`` writes ``DIR/occlusion.json`` (object permanence on
a curtain dataset; ``all`` includes it for curtain configs).
"""

import logging as py_logging

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string("workdir", "/tmp/rnem_jax_run", "Run directory (checkpoints, logs, metrics).")
flags.DEFINE_enum("mode", "all",
                  ["train", "eval", "rollout", "rollout_ablation", "occlusion", "visualize", "all"],
                  "What to run (all = train, eval, rollout, and occlusion on curtain data; "
                  "rollout_ablation = the simulation diagnostic, see "
                  "rnem_jax.evaluate.rollout_ablation; occlusion = object permanence, see "
                  "rnem_jax.evaluate.occlusion).")
flags.DEFINE_bool("distributed", False,
                  "Multi-host run: call jax.distributed.initialize() first (SLURM, TPU pods; "
                  "see launch/README.md).")
config_flags.DEFINE_config_file(
    "config", "configs/balls.py:small", "Experiment config file (see configs/).", lock_config=True)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from rnem_jax import host_memory

  # Before the first computation: XLA:CPU's per-call buffers are then reused, not page-faulted
  # in again every step (RNEM_HOST_ALLOCATOR=system leaves glibc's defaults).
  kept = host_memory.reuse_freed_memory()
  import jax

  if FLAGS.distributed:
    jax.distributed.initialize()
  from rnem_jax import evaluate, train, visualize

  # Our progress at INFO; the libraries' (orbax, TFDS) chatter only from WARNING up.
  logging.set_verbosity(logging.WARNING)
  py_logging.getLogger("rnem_jax").setLevel(py_logging.INFO)
  config = FLAGS.config
  log = py_logging.getLogger("rnem_jax.main")
  log.info("JAX %s on %d process(es), devices: %s; freed host memory %s", jax.__version__,
           jax.process_count(), jax.devices(), "kept" if kept else "returned (system allocator)")
  if FLAGS.mode in ("train", "all"):
    summary = train.train_and_evaluate(config, FLAGS.workdir)
    log.info("training: %s", summary)
  if FLAGS.mode in ("eval", "all"):
    record = evaluate.evaluate(config, FLAGS.workdir)
    log.info("test metrics: %s", {k: v for k, v in record.items() if k != "curves"})
    if config.extrapolation.dataset and not config.eval.dataset:
      ext = evaluate.evaluate(config, FLAGS.workdir, dataset=config.extrapolation.dataset,
                              K=config.extrapolation.K, output="metrics_extrapolation.json")
      log.info("extrapolation metrics: %s", {k: v for k, v in ext.items() if k != "curves"})
  if FLAGS.mode in ("rollout", "all"):
    record = evaluate.rollout(config, FLAGS.workdir)
    log.info("rollout BCE per step: %s", [round(x, 2) for x in record["bce_per_step"]])
  curtain = (config.eval.dataset or config.dataset).startswith("curtain/")
  if FLAGS.mode == "occlusion" or (FLAGS.mode == "all" and curtain):
    record = evaluate.occlusion(config, FLAGS.workdir)
    log.info("occlusion: %s", record)
  if FLAGS.mode == "rollout_ablation":
    record = evaluate.rollout_ablation(config, FLAGS.workdir)
    for name, curve in record["bce_per_step"].items():
      log.info("rollout BCE per step (%s): %s", name, [round(x, 1) for x in curve])
  if FLAGS.mode == "visualize":
    visualize.render_run(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
