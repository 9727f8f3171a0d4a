"""Command line: train, evaluate or roll out an R-NEM experiment.

  python -m rnem_jax.main --config=configs/balls.py[:<model>[,<scale>]] \
      --workdir=DIR [--mode=train|eval|rollout|all] [--config.field=value ...]

``train`` resumes from ``DIR`` if it holds a checkpoint; ``eval`` writes
``DIR/metrics.json`` (and the extrapolation test set's metrics when the config
names one); ``rollout`` writes ``DIR/rollout.json``; ``all`` does the three, draws the
figures and ends with a summary of the numbers and where the files are; ``visualize``
draws the paper's figures and GIFs into ``DIR/figures`` (``--figures_dir``); ``rollout_ablation``
writes ``DIR/rollout_ablation.json`` (the simulation with each of its two
changes alone); ``occlusion`` writes ``DIR/occlusion.json`` (object permanence on
a curtain dataset; ``all`` includes it for curtain configs). Without ``--config``, every mode
but ``train`` reads ``DIR/config.json``. Config paths are found from any working directory.
"""

import json
import logging as py_logging
import os
import pathlib
import sys
import threading
import warnings

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
flags.DEFINE_bool("figures", True, "With --mode=all: draw the figures and GIFs into "
                  "the figures directory at the end (as --mode=visualize does).")
flags.DEFINE_string("figures_dir", "", "Where --mode=visualize and --mode=all draw the figures "
                    "(default DIR/figures).")

# The repository root: config paths are also looked up here, so the commands work from any
# working directory.
REPO = pathlib.Path(__file__).resolve().parent.parent


def _config_help() -> str:
  from rnem_jax.config import MODELS, SCALES
  return ("Experiment config: configs/<experiment>.py[:<model>[,<scale>]] (relative to the "
          "working directory or the repository). Experiments: "
          f"{', '.join(p.stem for p in sorted((REPO / 'configs').glob('*.py')))}; models: "
          f"{', '.join(MODELS)}; scales: {', '.join(SCALES)} (not every experiment has every "
          "scale; see each config file's docstring). Without --config, modes other than train "
          "read DIR/config.json, the config the run was trained with.")


DEFAULT_CONFIG = "configs/balls.py:small"
config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG if os.path.exists("configs/balls.py") else str(REPO / DEFAULT_CONFIG),
    _config_help(), lock_config=True)
FLAGS = flags.FLAGS

# What each headline metric means (the end-of-run summary of --mode=all).
MEANINGS = {
    "bce_last": "prediction loss of the last frame, nats summed over pixels (lower is better)",
    "bce_last_rel": "the same over the copy-last-frame baseline's (below 1 beats copying)",
    "relational_bce_last": "the loss on pixels where balls are near each other (interactions)",
    "ari_last": "grouping of pixels into objects against the true balls (1 = perfect, 0 = "
                "chance)",
}


class _BackgroundNoise(py_logging.Filter):
  """Drops the reports of orbax's and asyncio's background tasks about an error the main thread
  raises itself (a full disk, a damaged checkpoint): one line on stderr, not hundreds."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno < py_logging.ERROR:
      return True
    text = str(record.msg)
    return not (record.name == "asyncio" or "/orbax/" in record.pathname
                or "never retrieved" in text)


def _quiet_background_errors() -> None:
  """Background threads of the checkpoint library print their own tracebacks of the error that
  the main thread reports in one line; RNEM_TRACEBACK=1 keeps everything."""
  if os.environ.get("RNEM_TRACEBACK"):
    return
  for handler in py_logging.getLogger().handlers:
    handler.addFilter(_BackgroundNoise())
  py_logging.getLogger("asyncio").setLevel(py_logging.CRITICAL)
  sys.stderr = _DropClosedLoopTracebacks(sys.stderr)
  # ... and the writes its failed save left unawaited, reported at exit.
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                          category=RuntimeWarning)


class _DropClosedLoopTracebacks:
  """stderr without the tracebacks ending in "RuntimeError: Event loop is closed" that the
  checkpoint library's storage callbacks print (from C, past every hook, from several threads
  at once) when an event loop that stopped on an error (a full disk) is called back. Each
  thread's traceback is held until its last line; everything else passes unchanged."""

  def __init__(self, stream):
    self._stream, self._held = stream, {}

  def write(self, text: str) -> int:
    me = threading.get_ident()
    held = self._held.get(me)
    if held is None and not text.startswith("Traceback (most recent call last)"):
      return self._stream.write(text)
    held = (held or []) + [text]
    block = "".join(held)
    last = block.rstrip("\n").split("\n")[-1]
    if block.endswith("\n") and last and not last.startswith((" ", "Traceback")):
      self._held.pop(me, None)
      if last != "RuntimeError: Event loop is closed":
        self._stream.write(block)
    else:
      self._held[me] = held
    return len(text)

  def flush(self) -> None:
    self._stream.flush()

  def __getattr__(self, name):
    return getattr(self._stream, name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _quiet_background_errors()
  from rnem_jax import data, host_memory

  # Before the first computation: XLA:CPU's per-call buffers are then reused, not page-faulted
  # in again every step (RNEM_HOST_ALLOCATOR=system leaves glibc's defaults); undone below on
  # GPU/TPU backends.
  host_memory.reuse_freed_memory()
  # Our progress at INFO; the libraries' (JAX, orbax, TFDS) chatter only from WARNING up.
  logging.set_verbosity(logging.WARNING)
  py_logging.getLogger("rnem_jax").setLevel(py_logging.INFO)
  import jax

  # A persistent compilation cache: a resumed or repeated run skips XLA's compilation.
  # JAX_COMPILATION_CACHE_DIR (jax's own variable) wins; RNEM_COMPILATION_CACHE=off disables.
  cache = os.environ.get("RNEM_COMPILATION_CACHE", "~/.cache/rnem_jax/xla")
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR") and cache != "off":
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache))
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
  except (ValueError, OSError, ImportError, data.DatasetError, checkpoints.CheckpointError,
          checkpoints.WorkdirBusyError, FloatingPointError) as e:
    # A user's mistake or a fault (config, paths, data, disk, divergence): one line, no
    # traceback (RNEM_TRACEBACK=1 shows it).
    if os.environ.get("RNEM_TRACEBACK"):
      raise
    sys.exit("error: " + " ".join(str(e).split()))


def _run_config():
  """``--config`` as given; without it (and a workdir that holds a run), the run's own
  ``config.json`` with the ``--config.<field>`` overrides applied."""
  stored = pathlib.Path(FLAGS.workdir) / "config.json"
  if FLAGS["config"].present or FLAGS.mode == "train" or not stored.exists():
    return FLAGS.config
  import ml_collections

  fields = json.loads(stored.read_text())
  fields.pop("provenance", None)
  config = ml_collections.ConfigDict(fields)
  for dotted, value in config_flags.get_override_values(FLAGS["config"]).items():
    *path, name = dotted.split(".")
    node = config
    for part in path:
      node = node[part]
    node[name] = value
  config.lock()
  py_logging.getLogger("rnem_jax.main").info("config: %s (the run's own)", stored)
  return config


def _report(config, workdir, figures: str) -> None:
  """The end of --mode=all: the headline numbers, each with its meaning, and where the files
  are (``figures``: the figures directory, "" when none were drawn)."""
  wd = pathlib.Path(workdir)
  lines = [f"done: {config.name} in {wd}"]
  metrics = json.loads((wd / "metrics.json").read_text())
  for key, meaning in MEANINGS.items():
    if key.startswith("ari") and metrics.get("K") == 1:
      continue   # one component groups nothing: its ARI is 0 by construction
    if metrics.get(key) is not None:
      lines.append(f"  {key:<20} {metrics[key]:10.3f}  {meaning}")
  rollout = wd / "rollout.json"
  if rollout.exists():
    r = json.loads(rollout.read_text())
    n = r["num_real_steps"]
    lines.append(f"  rollout BCE: {r['bce_per_step'][n - 1]:.1f} at the last observed step, "
                 f"{r['bce_per_step'][-1]:.1f} after {r['num_sim_steps']} simulated steps "
                 f"(copying the last frame: {r['baseline_bce_per_step'][-1]:.1f})")
    if r.get("balls_kept_per_step"):
      kept = r["balls_kept_per_step"][-1]
      lines.append(f"  balls still rendered after the simulated steps: "
                   f"{'–' if kept is None else f'{kept:.0%}'}")
  outputs = sorted(p.name for p in wd.glob("*.json"))
  lines.append(f"  outputs: {wd}/{{{','.join(outputs)}}}, train_log.jsonl, tensorboard/")
  if figures:
    lines.append(f"  figures: {figures}")
  print("\n".join(lines), file=sys.stderr, flush=True)


def run(signals):
  import jax

  from rnem_jax import evaluate, host_memory, train

  config = _run_config()
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
  # Figures within --mode=all on one process only: a multi-process job draws them afterwards
  # with --mode=visualize in a single process (launch/README.md).
  figures_at = ""
  if FLAGS.mode == "visualize" or (FLAGS.mode == "all" and FLAGS.figures
                                   and jax.process_count() == 1):
    figures_at = draw_figures(config, FLAGS.workdir, FLAGS.figures_dir)
  if FLAGS.mode == "all" and jax.process_index() == 0:
    _report(config, FLAGS.workdir, figures_at)


def draw_figures(config, workdir: str, out_dir: str = "") -> str:
  """The run's figures and GIFs (``rnem_jax.visualize.render_run``) in ``out_dir`` (default
  ``workdir/figures``), from its best checkpoint and its ``rollout.json`` if there is one;
  returns the directory."""
  from rnem_jax import evaluate, visualize

  out_dir = out_dir or os.path.join(workdir, "figures")
  rollout = pathlib.Path(workdir) / "rollout.json"
  visualize.render_run(evaluate.sample_outputs(config, workdir), out_dir, name=config.name,
                       attention=config.model.cell == "rnem",
                       rollout_record=json.loads(rollout.read_text()) if rollout.exists()
                       else None)
  return out_dir


def _find_configs(argv):
  """``--config=<path>[:variant]`` with a path that is not under the working directory but is
  under the repository, made absolute (also the default's)."""
  out = []
  for arg in argv:
    if arg.startswith("--config="):
      path, sep, variant = arg[len("--config="):].partition(":")
      if not os.path.exists(path) and (REPO / path).exists():
        arg = f"--config={REPO / path}{sep}{variant}"
    out.append(arg)
  return out


def parse_flags(argv):
  """absl's flag parsing, with config errors (an unknown field, a value of the wrong type, a
  missing config file) as one line instead of a traceback; config paths found from any
  working directory."""
  try:
    return FLAGS(_find_configs(argv))
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
