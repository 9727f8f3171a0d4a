"""End-to-end: the real CLI trains, checkpoints, evaluates, resumes and survives SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO


def _env(compile_cache):
  """The subprocesses' environment (the fixture exports the compilation cache)."""
  return dict(os.environ)


def _args(workdir, data_dir, *extra, config="configs/balls.py:tiny"):
  return [sys.executable, "-m", "rnem_jax.main", f"--config={REPO / config}",
          f"--workdir={workdir}", f"--config.data_dir={data_dir}", *extra]


def _run(args, env, timeout=600):
  r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert r.returncode == 0, r.stderr[-4000:]
  return r


def _rows(workdir, kind="train"):
  with open(os.path.join(workdir, "train_log.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["kind"] == kind]


def _steps(workdir, which):
  d = os.path.join(workdir, "checkpoints", which)
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def test_train_eval_resume_through_the_cli(tmp_path, data_dir, compile_cache):
  env, wd = _env(compile_cache), tmp_path / "run"
  _run(_args(wd, data_dir, "--mode=train"), env)
  assert _steps(wd, "latest") == [4, 6]           # the two newest are kept
  assert len(_steps(wd, "best")) == 1
  rows = _rows(wd)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert all(r["loss"] > 0 and "steps_per_s" in r for r in rows)
  assert [r["step"] for r in _rows(wd, "valid")] == [3, 6]     # one epoch = 3 steps
  assert os.listdir(wd / "tensorboard")

  _run(_args(wd, data_dir, "--mode=eval"), env)
  m = json.loads((wd / "metrics.json").read_text())
  for key in ("bce_last", "bce_last10", "relational_bce_last", "relational_bce_last10",
              "bce_last_rel", "relational_bce_last_rel", "ari_seq", "ari_last",
              "confidence_seq", "confidence_last"):
    assert key in m and m[key] == m[key], key
  assert m["num_sequences"] == 16 and m["K"] == 5 and len(m["curves"]["bce"]) == 5
  ext = json.loads((wd / "metrics_extrapolation.json").read_text())
  assert ext["K"] == 8 and ext["dataset"].endswith("balls678mass32_tiny")

  # a second invocation resumes: the step count continues instead of restarting
  _run(_args(wd, data_dir, "--mode=train", "--config.train.max_steps=8"), env)
  assert [r["step"] for r in _rows(wd)] == [1, 2, 3, 4, 5, 6, 7, 8]
  assert _steps(wd, "latest") == [6, 8]

  _run(_args(wd, data_dir, "--mode=rollout"), env)
  r = json.loads((wd / "rollout.json").read_text())
  assert r["num_real_steps"] == 5 and len(r["bce_per_step"]) == 15


def test_unknown_config_field_fails_loudly(tmp_path, data_dir, compile_cache):
  r = subprocess.run(_args(tmp_path / "run", data_dir, "--config.train.learning_rte=1"),
                     cwd=REPO, env=_env(compile_cache), capture_output=True, text=True,
                     timeout=300)
  assert r.returncode != 0
  assert "learning_rte" in r.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_sigkill_then_resume_loses_only_steps_since_the_last_checkpoint(
    tmp_path, data_dir, compile_cache):
  env, wd = _env(compile_cache), tmp_path / "run"
  args = _args(wd, data_dir, "--mode=train", "--config.train.max_steps=100000",
               "--config.train.steps_per_epoch=100000", "--config.train.checkpoint_every=3")
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 400
  try:
    while time.time() < deadline:
      ckpt_dir = wd / "checkpoints" / "latest"
      if ckpt_dir.is_dir() and any(int(n) >= 6 for n in os.listdir(ckpt_dir) if n.isdigit()):
        break
      assert proc.poll() is None, proc.stderr.read()[-3000:]
      time.sleep(0.2)
    else:
      pytest.fail("no checkpoint written in time")
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait()
  killed_at = max(r["step"] for r in _rows(wd))
  # only committed checkpoints carry a step name (orbax renames a finished temporary
  # directory); the previous one may still be there if the kill came before its cleanup
  last = _steps(wd, "latest")[-1]
  assert 6 <= last <= killed_at
  _run(_args(wd, data_dir, "--mode=train", f"--config.train.max_steps={last + 2}",
             "--config.train.steps_per_epoch=100000"), env)
  steps = [r["step"] for r in _rows(wd)]
  # the resumed run continues right after the checkpoint: the rows of the lost steps (after
  # it) are dropped and repeated, so the log holds every step once
  assert steps == list(range(1, last + 3))
  assert killed_at - last <= 3 + 2


def test_the_newcomer_path_from_any_directory(tmp_path, data_dir, compile_cache):
  """From outside the repository: a relative config path is found, --mode=all ends with the
  numbers and their meaning and draws the figures; a later mode without --config uses the
  run's own config.json; every output records the code's provenance."""
  env, wd = _env(compile_cache), tmp_path / "run"
  args = [sys.executable, "-m", "rnem_jax.main", "--config=configs/balls.py:tiny",
          f"--workdir={wd}", f"--config.data_dir={data_dir}", "--config.extrapolation.dataset="]
  r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  assert f"done: rnem_tiny in {wd}" in r.stderr
  assert "ari_last" in r.stderr and "grouping of pixels into objects" in r.stderr
  assert (wd / "figures" / "rollout_bce.png").exists() and (wd / "figures" / "panel.png").exists()
  config = json.loads((wd / "config.json").read_text())
  metrics = json.loads((wd / "metrics.json").read_text())
  for record in (config, metrics, json.loads((wd / "rollout.json").read_text())):
    assert record["provenance"]["packages"]["jax"] and "git" in record["provenance"]
  assert (wd / "rollout.json").exists() and "balls_kept_per_step" in json.loads(
      (wd / "rollout.json").read_text())
  before = metrics["bce_last"]
  (wd / "metrics.json").unlink()
  r = subprocess.run([sys.executable, "-m", "rnem_jax.main", f"--workdir={wd}", "--mode=eval"],
                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  assert "(the run's own)" in r.stderr
  assert json.loads((wd / "metrics.json").read_text())["bce_last"] == before
  # the figures again, elsewhere (as the cluster scripts draw them after a job)
  figures = tmp_path / "figures"
  r = subprocess.run([sys.executable, "-m", "rnem_jax.main", f"--workdir={wd}",
                      "--mode=visualize", f"--figures_dir={figures}"],
                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  assert sorted(p.name for p in figures.iterdir()) == sorted(
      p.name for p in (wd / "figures").iterdir())


def test_the_wall_clock_budget_counts_every_invocation(tmp_path, data_dir, compile_cache):
  """train.max_minutes is the run's budget, not each invocation's: a run that spent it is
  not trained again; the time is kept with the checkpoint."""
  env, wd = _env(compile_cache), tmp_path / "run"
  _run(_args(wd, data_dir, "--mode=train", "--config.train.max_steps=4"), env)
  r = _run(_args(wd, data_dir, "--mode=train", "--config.train.max_steps=8",
                 "--config.train.max_minutes=0.001"), env)
  assert "budget (train.max_minutes=0.001) is spent" in r.stderr
  assert "'step': 4, 'stop_reason': 'max_minutes'" in r.stderr
  assert _steps(wd, "latest")[-1] == 4


def test_the_summary_leaves_out_the_grouping_of_one_component(tmp_path, capsys):
  """A K=1 model (RNN, LSTM) groups nothing: its ARI of 0 is not reported as chance-level."""
  from ml_collections import ConfigDict

  from rnem_jax.main import _report

  for K in (1, 5):
    (tmp_path / "metrics.json").write_text(json.dumps({"K": K, "bce_last": 1.0, "ari_last": 0.0}))
    _report(ConfigDict({"name": "m"}), str(tmp_path), "")
    err = capsys.readouterr().err
    assert "bce_last" in err and ("ari_last" in err) == (K > 1)
