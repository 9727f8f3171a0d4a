"""Long jobs survive preemption, faults and concurrent use, tried through the real CLI as a
scheduler and a demanding user would: nothing lost, nothing silently mixed."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO


def _env(compile_cache, data_dir):
  """The subprocesses' environment (the fixture exports the compilation cache)."""
  return dict(os.environ, RNEM_DATA_DIR=data_dir)


def _args(workdir, *extra):
  return [sys.executable, "-m", "rnem_jax.main", f"--config={REPO / 'configs/balls.py'}:tiny",
          f"--workdir={workdir}", "--config.extrapolation.dataset=", *extra]


def _run(args, env, timeout=600):
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


ABSL_INFO = re.compile(r"I\d{4} \d\d:\d\d:")   # absl's INFO prefix, IMMDD hh:mm:


def _errors(stderr: str) -> list[str]:
  """stderr without absl's INFO lines and without XLA's slow-compile notice (a loaded machine:
  its alarm line, then a message between two rows of asterisks)."""
  out, notice = [], 0
  for line in stderr.splitlines():
    if "slow_operation_alarm" in line:
      notice = 2
    elif notice and line.startswith("*****"):
      notice -= 1
    elif line and not notice and not ABSL_INFO.match(line):
      out.append(line)
  return out


def _train_rows(workdir, kind="train"):
  with open(os.path.join(workdir, "train_log.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["kind"] == kind]


def _latest_meta(workdir):
  d = os.path.join(workdir, "checkpoints", "latest")
  step = max(int(n) for n in os.listdir(d) if n.isdigit())
  with open(os.path.join(d, str(step), "meta", "metadata")) as f:
    return step, json.load(f)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, compile_cache):
  """A workdir after ``--mode=train`` of the tiny config (6 steps: latest 4 and 6, best 6),
  trained once for the tests that damage, resume or evaluate one."""
  wd = tmp_path_factory.mktemp("trained") / "run"
  r = _run(_args(wd, "--mode=train"), _env(compile_cache, data_dir))
  assert r.returncode == 0, r.stderr[-3000:]
  return wd


def _copy(trained, tmp_path):
  """A copy of the trained workdir of this test's own (the same files, another path)."""
  import shutil
  return shutil.copytree(trained, tmp_path / "run", ignore=shutil.ignore_patterns("train.lock"))


def _wait_for(predicate, proc, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.05)
  pytest.fail("timed out")


@pytest.mark.slow
def test_sigterm_then_the_same_command_equals_an_uninterrupted_run(tmp_path, data_dir,
                                                                     compile_cache):
  """SIGTERM at a step between checkpoints: that step is saved, status 143 and one line; the
  same command resumes; final parameters (fingerprint) and metrics.json equal an uninterrupted
  run's bit for bit, and the log holds every step once."""
  env = _env(compile_cache, data_dir)
  steps = ["--config.train.max_steps=40", "--config.train.checkpoint_every=25"]
  whole, cut = tmp_path / "whole", tmp_path / "cut"
  r = _run(_args(whole, "--mode=all", *steps), env)
  assert r.returncode == 0, r.stderr[-3000:]
  proc = subprocess.Popen(_args(cut, "--mode=all", *steps), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  log = cut / "train_log.jsonl"
  _wait_for(lambda: log.exists() and len(_train_rows(cut)) >= 7, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err[-3000:]
  line = err.strip().splitlines()[-1]
  stopped = int(line.split("stopped at step ")[1].split(",")[0])
  assert line == f"SIGTERM: stopped at step {stopped}, saved; the same command resumes"
  assert 7 <= stopped < 40 and _latest_meta(cut)[0] == stopped
  r = _run(_args(cut, "--mode=all", *steps), env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert _latest_meta(cut)[1]["fingerprint"] == _latest_meta(whole)[1]["fingerprint"]
  a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, cut))
  a.pop("provenance"), b.pop("provenance")   # the code's revision may move between the runs
  assert a == b
  assert [r["step"] for r in _train_rows(cut)] == list(range(1, 41))
  assert _train_rows(cut) != [] and [r["loss"] for r in _train_rows(cut)] == [
      r["loss"] for r in _train_rows(whole)]


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_sigint_stops_the_first(tmp_path, data_dir,
                                                                 compile_cache):
  env, wd = _env(compile_cache, data_dir), tmp_path / "run"
  first = subprocess.Popen(_args(wd, "--mode=train", "--config.train.max_steps=100000"),
                           cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
  _wait_for(lambda: (wd / "train_log.jsonl").exists(), first)
  before = (wd / "config.json").read_text()
  t = time.time()
  second = _run(_args(wd, "--mode=train", "--config.train.learning_rate=0.01"), env)
  assert second.returncode != 0 and time.time() - t < 60
  (message,) = _errors(second.stderr)
  assert message.startswith(f"error: {wd} is in use by a trainer (host ")
  assert f"pid {first.pid}" in message
  assert (wd / "config.json").read_text() == before and first.poll() is None
  first.send_signal(signal.SIGINT)
  _, err = first.communicate(timeout=300)
  assert first.returncode == 130 and "SIGINT: stopped at step" in err
  assert "Traceback" not in err
  # the lock died with its holder: the same command resumes
  r = _run(_args(wd, "--mode=train", "--config.train.max_steps=1"), env)
  assert r.returncode == 0, r.stderr[-3000:]


def test_damaged_newest_latest_falls_back_to_the_one_before(tmp_path, data_dir, compile_cache,
                                                            trained):
  env, wd = _env(compile_cache, data_dir), _copy(trained, tmp_path)    # latest 4 and 6
  newest = wd / "checkpoints" / "latest" / "6"
  largest = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  os.truncate(largest, largest.stat().st_size // 2)
  r = _run(_args(wd, "--mode=train", "--config.train.max_steps=7"), env)
  assert r.returncode == 0, r.stderr[-3000:]
  warnings = [line for line in _errors(r.stderr) if "checkpoint 6" in line]
  assert len(warnings) == 1 and "damaged or incomplete" in warnings[0]
  assert "falling back to the one before it" in warnings[0]
  assert "resumed from step 4" in r.stderr and "Traceback" not in r.stderr
  assert [r["step"] for r in _train_rows(wd)] == list(range(1, 8))


def test_random_bytes_in_a_checkpoint_are_found(tmp_path, data_dir, compile_cache, trained):
  """Bytes that still parse are caught by the fingerprint; a damaged best is one line."""
  env, wd = _env(compile_cache, data_dir), _copy(trained, tmp_path)
  best = wd / "checkpoints" / "best"
  (step,) = [p for p in best.iterdir() if p.name.isdigit()]
  meta = step / "meta" / "metadata"
  record = json.loads(meta.read_text())
  record["fingerprint"] = "0" * 64
  meta.write_text(json.dumps(record))
  r = _run(_args(wd, "--mode=eval"), env)
  assert r.returncode == 1
  (message,) = _errors(r.stderr)
  assert "best checkpoint" in message and "is damaged" in message
  assert "--config.eval.checkpoint=latest" in message


def test_divergence_stops_naming_the_step_and_keeps_a_good_checkpoint(tmp_path, data_dir,
                                                                       compile_cache):
  env, wd = _env(compile_cache, data_dir), tmp_path / "run"
  r = _run(_args(wd, "--mode=train", "--config.train.learning_rate=1e30"), env)
  assert r.returncode == 1
  (message,) = _errors(r.stderr)
  assert "at step 2 (not applied)" in message and "last good checkpoint (step 0)" in message
  r = _run(_args(wd, "--mode=eval", "--config.train.learning_rate=1e30"), env)
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.loads((wd / "metrics.json").read_text())
  assert all(v == v and abs(v) < float("inf") for k, v in m.items() if isinstance(v, float))


def test_saturated_units_stop_the_run_instead_of_training_on_nothing(tmp_path, data_dir,
                                                                   compile_cache):
  """learning_rate=1e6: after one step every gradient is exactly zero; the run stops after
  train.STALL_STEPS such steps (with a non-zero status) instead of finishing its budget."""
  env, wd = _env(compile_cache, data_dir), tmp_path / "run"
  r = _run(_args(wd, "--mode=train", "--config.train.learning_rate=1e6",
                 "--config.train.max_steps=60"), env)
  assert r.returncode == 1
  (message,) = _errors(r.stderr)
  assert message.startswith("error: gradients exactly zero for 20 steps (to step 21)")
  assert "change the config (e.g. a lower train.learning_rate)" in message


def test_resume_with_another_learning_rate_is_refused_without_the_override(
    tmp_path, data_dir, compile_cache, trained):
  env, wd = _env(compile_cache, data_dir), _copy(trained, tmp_path)
  listing = sorted(p.name for p in (wd / "checkpoints" / "latest").iterdir())
  r = _run(_args(wd, "--mode=train", "--config.train.learning_rate=3e-4",
                 "--config.train.max_steps=8"), env)
  assert r.returncode == 1
  (message,) = _errors(r.stderr)
  assert "train.learning_rate: 0.001 -> 0.0003" in message and "--allow_config_change" in message
  assert sorted(p.name for p in (wd / "checkpoints" / "latest").iterdir()) == listing
  # budgets may change; the override resumes (and says what changed)
  r = _run(_args(wd, "--mode=train", "--config.train.learning_rate=3e-4",
                 "--config.train.max_steps=8", "--allow_config_change"), env)
  assert r.returncode == 0 and "train.learning_rate: 0.001 -> 0.0003" in r.stderr


def test_kill_between_best_and_latest_resumes(tmp_path, data_dir, compile_cache, trained):
  """best/6 committed, latest/6 not (killed in between): the resume replaces best/6."""
  import shutil
  env, wd = _env(compile_cache, data_dir), _copy(trained, tmp_path)
  shutil.rmtree(wd / "checkpoints" / "latest" / "6")
  assert (wd / "checkpoints" / "best" / "6").is_dir()
  r = _run(_args(wd, "--mode=train"), env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from step 4" in r.stderr
  assert (wd / "checkpoints" / "latest" / "6").is_dir()
  assert [r["step"] for r in _train_rows(wd)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("override,match", [
    ("--config.train.learning_rate=-0.001", "learning_rate must be > 0"),
    ("--config.train.log_every=0", "train.log_every must be >= 1"),
    ("--config.train.checkpoint_every=0", "train.checkpoint_every must be >= 1"),
    ("--config.train.valid_size=0", "train.valid_size must be >= 1"),
    ("--config.train.learning_rte=1", "Did you mean"),
    ("--config.eval.dataset=bouncing_balls/balls4mass64", "cannot take this image size"),
])
def test_bad_values_are_one_line_and_create_nothing(override, match, tmp_path, data_dir,
                                                    compile_cache, trained):
  mode = "--mode=eval" if "eval.dataset" in override else "--mode=train"
  wd = _copy(trained, tmp_path) if mode == "--mode=eval" else tmp_path / "run"
  before = sorted(str(p) for p in tmp_path.rglob("*"))
  t = time.time()
  r = _run(_args(wd, mode, override), _env(compile_cache, data_dir))
  assert r.returncode != 0
  (message,) = _errors(r.stderr)
  assert message.startswith("error: ") and match in message
  assert sorted(str(p) for p in tmp_path.rglob("*")) == before
  assert time.time() - t < 60          # refused before any dataset is built


def test_eval_on_an_empty_workdir_creates_nothing(tmp_path, data_dir, compile_cache):
  wd = tmp_path / "typo"
  r = _run(_args(wd, "--mode=eval"), _env(compile_cache, data_dir))
  assert r.returncode == 1
  (message,) = _errors(r.stderr)
  assert message == f"error: no checkpoint in {wd}/checkpoints: train first (--mode=train), " \
                    "or check --workdir"
  assert not wd.exists()


def test_full_disk_is_one_line(tmp_path, data_dir, compile_cache):
  """A file-size limit makes the checkpoint write fail like a full disk (EFBIG / ENOSPC)."""
  env, wd = _env(compile_cache, data_dir), tmp_path / "run"
  script = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
            "import sys, runpy; sys.argv = sys.argv[1:]; "
            "runpy.run_module('rnem_jax.main', run_name='__main__')")
  r = _run([sys.executable, "-c", script] + _args(wd, "--mode=train")[2:], env)
  assert r.returncode == 1
  # (a fresh data dir's build progress and the compilation cache's own warning may precede it)
  assert "Traceback" not in r.stderr and "Event loop" not in r.stderr, r.stderr[-3000:]
  (message,) = [line for line in _errors(r.stderr) if line.startswith("error")]
  assert r.stderr.rstrip().endswith(message)
  assert message.startswith("error: ") and "Traceback" not in r.stderr


def test_fields_added_since_a_checkpoint_count_as_their_old_value():
  """A run saved before em.train_sim_steps existed resumes as the reference model it was, and
  is refused as a simulation-trained one."""
  from conftest import load_config
  from rnem_jax import checkpoints
  config = load_config("balls", "rnem,tiny")
  saved = json.loads(config.to_json_best_effort())
  for field in checkpoints.ADDED_FIELDS:
    group, name = field.split(".")
    del saved[group][name]
  assert checkpoints.config_changes(saved, config) == {}
  sim = load_config("balls", "rnem_sim,tiny")
  changes = checkpoints.config_changes(saved, sim)
  assert changes["em.train_sim_steps"] == (0, sim.em.train_sim_steps)
  with pytest.raises(ValueError, match="em.train_sim_steps: 0 -> 2"):
    checkpoints.check_resume_config(saved, sim, "wd")


def test_closed_loop_tracebacks_from_several_threads_are_dropped_and_nothing_else():
  """The stderr filter of a full disk: the checkpoint library's threads print "Event loop is
  closed" tracebacks piece by piece, interleaved; other text and other tracebacks pass."""
  import io
  import threading
  from rnem_jax.main import _DropClosedLoopTracebacks
  out = io.StringIO()
  err = _DropClosedLoopTracebacks(out)
  closed = ["Traceback (most recent call last):\n", '  File "base_events.py", line 806\n',
            "    self._check_closed()\n", "RuntimeError", ": Event loop is closed", "\n"]
  barrier = threading.Barrier(4)

  def noisy():
    barrier.wait()
    for _ in range(50):
      for piece in closed:
        err.write(piece)

  threads = [threading.Thread(target=noisy) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  err.write("error: disk full\n")
  err.write("Traceback (most recent call last):\n  File \"x.py\"\nValueError: real\n")
  assert out.getvalue() == ("error: disk full\n"
                            "Traceback (most recent call last):\n  File \"x.py\"\nValueError: real\n")
