"""The training loop's guarantees: determinism, clear errors, nothing lost, data parallelism."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import load_config
from rnem_jax import data, train


def _losses(workdir):
  with open(os.path.join(workdir, "train_log.jsonl")) as f:
    return [r["loss"] for r in map(json.loads, f) if r["kind"] == "train"]


def _listing(path):
  return sorted((os.path.relpath(os.path.join(d, f), path), os.path.getmtime(os.path.join(d, f)))
                for d, _, files in os.walk(path) for f in files)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, compile_cache):
  wd = str(tmp_path_factory.mktemp("trained"))
  cfg = load_config("balls", data_dir=data_dir)
  summary = train.train_and_evaluate(cfg, wd)
  return wd, summary


def test_same_seed_same_losses(trained, tmp_path, data_dir):
  wd, summary = trained
  assert summary["step"] == 6 and summary["stop_reason"] == "max_steps"
  train.train_and_evaluate(load_config("balls", data_dir=data_dir), str(tmp_path))
  np.testing.assert_array_equal(_losses(wd), _losses(tmp_path))


def test_evaluation_checkpoint_is_best_or_latest(tmp_path, data_dir, monkeypatch, compile_cache):
  from rnem_jax import evaluate
  from rnem_jax.model import build_network
  losses = iter([1.0, 2.0])   # validation at steps 3 and 6: the best checkpoint is step 3
  monkeypatch.setattr(train, "validation_loss", lambda *a, **k: next(losses))
  cfg = load_config("balls", data_dir=data_dir)
  train.train_and_evaluate(cfg, str(tmp_path))
  net, mesh = build_network(cfg.model), train.make_mesh()
  assert evaluate.restore_params(cfg, str(tmp_path), net, mesh)[1] == 3
  cfg = load_config("balls", data_dir=data_dir, **{"eval.checkpoint": "latest"})
  assert evaluate.restore_params(cfg, str(tmp_path), net, mesh)[1] == 6
  cfg = load_config("balls", data_dir=data_dir, **{"eval.checkpoint": "last"})
  with pytest.raises(ValueError, match="eval.checkpoint must be"):
    evaluate.restore_params(cfg, str(tmp_path), net, mesh)


def test_checkpoint_of_another_architecture_is_refused(trained, data_dir):
  wd, _ = trained
  before = _listing(wd + "/checkpoints")
  cfg = load_config("balls", data_dir=data_dir, **{"model.cell": "lstm", "em.K": 1})
  with pytest.raises(ValueError, match="different model"):
    train.train_and_evaluate(cfg, wd)
  assert _listing(wd + "/checkpoints") == before


@pytest.mark.parametrize("overrides,match", [
    ({"em.K": 0}, "K must be >= 1"),
    ({"train.batch_size": 0}, "multiple of the number of devices"),
    ({"model.image_size": 64}, "cannot take this image size"),
    ({"model.image_size": 30}, "multiple of 8"),
    ({"em.T": 40}, "frames"),
    ({"em.e_step_target": "clear"}, "e_step_target must be one of"),
])
def test_bad_configs_fail_before_writing(overrides, match, tmp_path, data_dir):
  cfg = load_config("balls", data_dir=data_dir, **overrides)
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_batch_must_divide_over_devices(data_dir):
  cfg = load_config("balls", data_dir=data_dir, **{"train.batch_size": 4})
  with pytest.raises(ValueError, match=r"batch_size=4 must be a positive multiple .* \(3\)"):
    train.validate_config(cfg, num_devices=3)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, monkeypatch,
                                                            compile_cache):
  real = train.make_train_step

  def poisoned(*args, **kwargs):
    step = real(*args, **kwargs)

    def wrapped(state, batch, key):
      new_state, metrics = step(state, batch, key)
      if int(new_state.step) >= 5:
        metrics = dict(metrics, loss=metrics["loss"] * np.nan)
      return new_state, metrics
    return wrapped

  monkeypatch.setattr(train, "make_train_step", poisoned)
  cfg = load_config("balls", data_dir=data_dir, **{"train.max_steps": 10})
  with pytest.raises(FloatingPointError, match="at step 5.*step 4"):
    train.train_and_evaluate(cfg, str(tmp_path))
  latest = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints/latest") if n.isdigit())
  assert latest == [3, 4]                  # the two newest are kept
  assert max(r for r in range(1, 5)) == len(_losses(tmp_path))


@pytest.mark.parametrize("name", ["curtain", "atari"])
def test_curtain_and_atari_train_and_evaluate_through_the_same_code(name, tmp_path, data_dir,
                                                                    compile_cache):
  from rnem_jax import evaluate
  cfg = load_config(name, data_dir=data_dir, **{"train.max_steps": 2, "eval.max_sequences": 4})
  summary = train.train_and_evaluate(cfg, str(tmp_path))
  assert summary["step"] == 2 and np.all(np.isfinite(_losses(tmp_path)))
  record = evaluate.evaluate(cfg, str(tmp_path))
  assert record["num_sequences"] == 4 and np.isfinite(record["bce_last"])
  if name == "atari":
    assert cfg.model.num_actions == 6 and cfg.em.K == 4
    assert "ari_last" not in record              # no ground-truth groups in Space Invaders
  else:
    assert 0.0 <= record["confidence_last"] <= 1.0 and "relational_bce_last" in record
    occ = evaluate.occlusion(cfg, str(tmp_path))
    assert occ["num_sequences"] == 4 and (tmp_path / "occlusion.json").is_file()
    # Pixel counts are those of the masks of the same 4 test sequences, counted here.
    from rnem_jax.sim import balls
    source = data.load_source(cfg.dataset, "test", data_dir)
    T = cfg.eval.T or cfg.em.T
    for name in evaluate.OCCLUSION_MASKS:
      want = sum(int(balls.occlusion_masks(source[i]["positions"][:T + 1], source[i]["radii"],
                                           source[i]["curtain"], 32)[name][1:].sum())
                 for i in range(4))
      assert occ[f"{name}_pixels"] == want
    assert occ["empty_curtain_pixels"] > 0
    for name in ("hidden_partial", "hidden_full", "reappearing", "empty_curtain", "visible"):
      p = occ[f"{name}_prob"]
      assert np.isnan(p) and occ.get(f"{name}_pixels", 1) == 0 or 0.0 <= p <= 1.0


def test_simulation_trained_models_train_and_validate_on_the_simulated_objective(data_dir):
  """``*_sim`` configs: the training step, validation and the pre-save check optimise the loss
  with the last em.train_sim_steps steps simulated; evaluation options leave them out."""
  from rnem_jax import em
  from rnem_jax.model import build_network, init_params
  cfg = load_config("balls", "rnem_sim,tiny", data_dir=data_dir)
  S = cfg.em.train_sim_steps
  assert S == cfg.em.T // 2 and S > 0
  assert "train_sim_steps" not in train.em_options(cfg)
  assert train.em_options(cfg, training=True)["train_sim_steps"] == S
  assert "train_sim_steps" not in train.em_options(load_config("balls", data_dir=data_dir),
                                                   training=True)
  net = build_network(cfg.model)
  params = init_params(net, jax.random.key(1))
  T, B, K = cfg.em.T, 2, cfg.em.K
  feats = (jax.random.uniform(jax.random.key(0), (T + 1, B, 32, 32, 1)) > 0.8).astype(np.float32)
  key = jax.random.key(3)
  keys = em.sequence_keys(key, 0, B)
  opts = train.em_options(cfg)
  simulated = float(em.training_loss(net, params, feats, keys, K=K, train_sim_steps=S, **opts)[0])
  reference = float(em.training_loss(net, params, feats, keys, K=K, **opts)[0])
  assert abs(simulated - reference) > 1e-3 * abs(reference)
  forward = train.make_forward_loss_fn(net, cfg, K)
  np.testing.assert_allclose(float(forward(params, {"features": feats}, key)), simulated,
                             rtol=1e-5)


def test_progress_lines_give_rate_training_time_and_what_is_left():
  p = train.Progress(step=100, max_steps=1100, budget=None, trained_before=3600.0)
  p.loss = 123.4
  assert p.line(200, 100.0) == ("step 200/1100, 1.00 steps/s, loss 123.4, trained 1:01:40, "
                                "steps left ~0:15:00")
  p = train.Progress(step=0, max_steps=10**6, budget=600.0, trained_before=0.0)
  assert p.line(50, 100.0).endswith("0.50 steps/s, trained 0:01:40, budget left ~0:08:20")
  p = train.Progress(step=0, max_steps=10**6, budget=600.0, trained_before=450.0)
  assert p.line(50, 100.0).endswith("trained 0:09:10, budget left ~0:00:50")
  assert p.minutes(100.0) == "9.2/10"


_CLOCK_CHILD = """
import sys, time
from rnem_jax.train import TrainingClock
start = time.monotonic()
clock = TrainingClock(tick=0.1, gap=1.0)
sum(range(60_000_000))   # holds the interpreter lock for over 1 s: not a stop
print("ready", flush=True)
sys.stdin.readline()
print(time.monotonic() - start, clock.elapsed(), clock.stopped, flush=True)
"""


@pytest.mark.parametrize("stop_s", [0.0, 3.0])
def test_the_training_clock_leaves_out_time_stopped(stop_s):
  """SIGSTOP for 3 s (``scontrol suspend``) is not training time; a running process's time
  is all counted, even a main thread holding the interpreter lock for longer than the gap."""
  import signal
  import subprocess
  import sys
  import time
  proc = subprocess.Popen([sys.executable, "-c", _CLOCK_CHILD], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "ready"
  time.sleep(0.5)
  if stop_s:
    proc.send_signal(signal.SIGSTOP)
    time.sleep(stop_s)
    proc.send_signal(signal.SIGCONT)
  time.sleep(0.5)
  out, _ = proc.communicate("go\n", timeout=60)
  wall, elapsed, stopped = map(float, out.split())
  assert wall >= 1.0 + stop_s
  assert stopped == pytest.approx(stop_s, abs=0.3)
  assert elapsed == pytest.approx(wall - stopped, abs=0.05)
