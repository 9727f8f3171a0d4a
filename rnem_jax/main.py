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
import os
import sys

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
                  "Multi-process run: call jax.distributed.initialize() first. On SLURM and "
                  "Cloud TPU it finds its peers itself (see launch/README.md); elsewhere give "
                  "--coordinator_address, --num_processes and --process_id.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0's coordinator (with --distributed, outside "
                    "SLURM/TPU).")
flags.DEFINE_integer("num_processes", None, "Processes of the job (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")
flags.DEFINE_bool("allow_config_change", False,
                  "Resume a run whose config changed in fields that change the training (learning "
                  "rate, seed, batch, K, T, ...; budgets, logging and evaluation may always change).")
config_flags.DEFINE_config_file(
    "config", "configs/balls.py:small", "Experiment config file (see configs/).", lock_config=True)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from rnem_jax import data, host_memory

  # Before the first computation: XLA:CPU's per-call buffers are then reused, not page-faulted
  # in again every step (RNEM_HOST_ALLOCATOR=system leaves glibc's defaults); undone below on
  # GPU/TPU backends.
  host_memory.reuse_freed_memory()
  # Our progress at INFO; the libraries' (JAX, orbax, TFDS) chatter only from WARNING up.
  logging.set_verbosity(logging.WARNING)
  py_logging.getLogger("rnem_jax").setLevel(py_logging.INFO)
  import jax

  if FLAGS.distributed:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  host_memory.for_backend(jax.default_backend())
  from rnem_jax import checkpoints, train

  # SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C): training finishes its step, saves
  # and stops; anything else stops at once. Either way one line and status 128 + signal number.
  signals = train.StopSignals()
  try:
    run(signals)
  except train.Preempted as e:
    print(f"{e}", file=sys.stderr)
    sys.exit(128 + e.signum)
  except (ValueError, OSError, data.DatasetError, checkpoints.CheckpointError,
          checkpoints.WorkdirBusyError, FloatingPointError) as e:
    # A user's mistake or a fault (config, paths, data, disk, divergence): one line, no
    # traceback (RNEM_TRACEBACK=1 shows it).
    if os.environ.get("RNEM_TRACEBACK"):
      raise
    sys.exit("error: " + " ".join(str(e).split()))


def run(signals):
  import jax

  from rnem_jax import evaluate, host_memory, train, visualize

  config = FLAGS.config
  log = py_logging.getLogger("rnem_jax.main")
  log.info("JAX %s on %d process(es), %d %s device(s); freed host memory %s", jax.__version__,
           jax.process_count(), jax.device_count(), jax.default_backend(),
           "kept" if host_memory.in_effect() else "returned (system allocator)")
  if FLAGS.mode in ("train", "all"):
    summary = train.train_and_evaluate(config, FLAGS.workdir,
                                       allow_config_change=FLAGS.allow_config_change,
                                       stop=signals)
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


def parse_flags(argv):
  """absl's flag parsing, with config errors (an unknown field, a value of the wrong type, a
  missing config file) as one line instead of a traceback."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    # ml_collections puts a config file's traceback into the message: its last line says it.
    lines = [line for line in str(e).splitlines() if line.strip()]
    sys.exit(f"error: {lines[-1].strip() if 'Traceback' in str(e) else lines[0]} "
             "(--help for usage)")
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    message = str(e).strip().strip("'\"").replace("\\n", " ").replace("\n", " ")
    sys.exit(f"error: in --config: {type(e).__name__}: {message}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
