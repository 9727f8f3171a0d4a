"""Data parallelism as the design asks (pmap semantics inside jit), on several CPU devices and
several real processes: one gradient mean per step, results independent of how the batch is
split, evaluation independent of batch size and device count."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import REPO, xla_flags


def _python(script: str, devices: int, timeout: int = 600, env=None) -> str:
  """Runs ``script`` in a fresh interpreter with ``devices`` CPU devices; returns its stdout."""
  env = dict(os.environ if env is None else env)
  env["XLA_FLAGS"] = xla_flags(f"--xla_force_host_platform_device_count={devices}")
  r = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=timeout)
  assert r.returncode == 0, r.stderr[-4000:]
  return r.stdout


def _entry_computation(hlo: str) -> str:
  """The ENTRY computation of an HLO module's text (loop bodies are separate computations)."""
  start = hlo.index("\nENTRY ")
  return hlo[start:hlo.index("\n}", start)]


def test_one_gradient_all_reduce_per_step_and_the_one_device_result():
  """The 2- and 4-device training steps: a small constant number of all-reduces, all outside
  the EM loop (in the step's ENTRY computation, not the scan's while body), and the loss,
  gradient norm, per-leaf gradients and new parameters of the 1-device step."""
  out = _python("""
      import json, jax, jax.numpy as jnp, numpy as np
      from rnem_jax import model as M, train
      net = M.build_network(M.default_model_config(
          image_size=16, hidden=16, interaction_sizes=(16, 16, 16, 8)))
      params = M.init_params(net, jax.random.key(0))
      tx = train.make_optimizer(1e-3)
      x = np.asarray(jax.random.bernoulli(jax.random.key(1), 0.2, (3, 8, 16, 16, 1)), np.float32)
      result, ref = {}, None
      for n in (1, 2, 4):
        mesh = train.make_mesh(jax.devices()[:n])
        state = train.replicate(train.create_train_state(params, tx), mesh)
        step = train.make_train_step(net, tx, K=3, noise_prob=0.2, mesh=mesh, donate=False,
                                     unroll=1, remat=True)
        batch = train.shard_batch({"features": x}, mesh)
        compiled = step.lower(state, batch, jax.random.key(5)).compile()
        new, m = compiled(state, batch, jax.random.key(5))
        # Adam's new first moment is (1 - b1) * gradient: every leaf's gradient, compared
        got = (float(m["loss"]), float(m["grad_norm"]),
               [np.asarray(p) for p in jax.tree.leaves(new.params)],
               [np.asarray(g) for g in jax.tree.leaves(new.opt_state[0].mu)])
        ref = ref or got
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ref[2], got[2]))
        grads_close = all(np.allclose(a, b, rtol=2e-3, atol=1e-5) for a, b in zip(ref[3], got[3]))
        result[n] = dict(hlo=compiled.as_text(), loss=got[0], loss_1=ref[0], grad_norm=got[1],
                         grad_norm_1=ref[1], param_diff=diff, grads_close=grads_close)
      print(json.dumps(result))
  """, devices=4)
  r = json.loads(out.strip().splitlines()[-1])
  assert "while" in r["2"]["hlo"]                      # the EM scan is a loop (unroll=1)
  for n in ("2", "4"):
    hlo = r[n].pop("hlo")
    count = hlo.count(" all-reduce(") + hlo.count(" all-reduce-start(")
    entry = _entry_computation(hlo)
    assert 1 <= count <= 4, (n, count)
    assert entry.count(" all-reduce(") + entry.count(" all-reduce-start(") == count, n
  r["1"].pop("hlo")
  for n, v in r.items():
    np.testing.assert_allclose(v["loss"], v["loss_1"], rtol=1e-5, err_msg=n)
    np.testing.assert_allclose(v["grad_norm"], v["grad_norm_1"], rtol=1e-4, err_msg=n)
    assert v["param_diff"] < 1e-5 and v["grads_close"], (n, v)


def test_eval_metrics_do_not_depend_on_batch_size_or_devices(data_dir):
  """The same checkpoint and sequences at batch sizes 16, 5 and 3 on 1 and 2 devices."""
  out = _python(f"""
      import json, jax, numpy as np
      from conftest import load_config
      from rnem_jax import data, evaluate, train
      from rnem_jax.model import build_network, init_params
      cfg = load_config("balls", data_dir={data_dir!r})
      data.ensure_built(cfg.dataset, cfg.data_dir)
      net = build_network(cfg.model)
      params = init_params(net, jax.random.key(0))
      curves = {{}}
      for devices, bs in ((1, 16), (1, 5), (2, 3), (2, 16)):
        mesh = train.make_mesh(jax.devices()[:devices])
        c, n = evaluate.run_metrics(cfg, train.replicate(params, mesh), net, mesh,
                                    dataset=cfg.dataset, split="test", K=5, T=5, batch_size=bs,
                                    max_sequences=11, seed=3)
        curves[f"{{devices}}x{{bs}}"] = {{k: v.tolist() for k, v in c.items()}}
        assert n == 11
      print(json.dumps(curves))
  """, devices=2, env=dict(os.environ, PYTHONPATH=str(REPO / "tests")))
  curves = json.loads(out.strip().splitlines()[-1])
  ref = curves.pop("1x16")
  for name, c in curves.items():
    assert set(c) == set(ref)
    for k in ref:
      np.testing.assert_allclose(c[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}")


@pytest.mark.parametrize("config", ["configs/balls.py", "configs/curtain.py",
                                    "configs/atari.py"])
def test_paper_configs_start_on_cpu_with_8_devices(config, tmp_path):
  """The headline command at paper scale validates on 8 devices, says what a CPU step costs,
  and starts building the paper dataset (stopped there)."""
  env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=8"),
             RNEM_DATA_DIR=str(tmp_path / "data"), RNEM_BUILD_WORKERS="1")
  proc = subprocess.Popen(
      [sys.executable, "-m", "rnem_jax.main", f"--config={config}",
       f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env, stderr=subprocess.PIPE,
      stdout=subprocess.DEVNULL, text=True, start_new_session=True)
  lines, deadline = [], time.time() + 240
  try:
    for line in proc.stderr:
      lines.append(line)
      if "Building dataset" in line or time.time() > deadline:
        break
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  text = "".join(lines)
  assert "Building dataset" in text, text[-3000:]
  assert "8 cpu device(s)" in text and "s per training step here" in text, text[-3000:]
  assert "Traceback" not in text


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _main_args(workdir, data_dir, *extra):
  return [sys.executable, "-m", "rnem_jax.main", f"--config={REPO / 'configs/balls.py'}:tiny",
          f"--workdir={workdir}", f"--config.data_dir={data_dir}", "--config.train.max_steps=12",
          "--config.extrapolation.dataset=", *extra]


def _last_rows(workdir, kind):
  """{step: row} of train_log.jsonl, the last row of each step (a resumed run repeats some)."""
  with open(os.path.join(workdir, "train_log.jsonl")) as f:
    return {r["step"]: r for r in map(json.loads, f) if r["kind"] == kind}


@pytest.mark.slow
def test_two_processes_train_resume_evaluate_like_one(tmp_path, data_dir, compile_cache):
  """Two real ``jax.distributed`` processes (one CPU device each) train the tiny config through
  four epoch boundaries (best and latest saved), are SIGKILLed mid-run and resumed, then
  evaluate and roll out together: every loss and metric equals one process with two devices."""
  env = dict(os.environ)
  one, two = tmp_path / "one_process", tmp_path / "two_processes"
  r = subprocess.run(_main_args(one, data_dir, "--mode=all"), cwd=REPO, capture_output=True,
                     text=True, timeout=900,
                     env=dict(env, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2")))
  assert r.returncode == 0, r.stderr[-4000:]

  def start(mode, max_steps):
    port = _free_port()
    return [subprocess.Popen(
        # (a time budget that does not run out: its check is agreed between the processes)
        _main_args(two, data_dir, f"--mode={mode}", f"--config.train.max_steps={max_steps}",
                   "--config.train.max_minutes=600", "--distributed",
                   f"--coordinator_address=localhost:{port}", "--num_processes=2",
                   f"--process_id={i}"),
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True) for i in range(2)]

  # First attempt: a long budget, killed (SIGKILL, both processes) once 4 steps are logged.
  procs, deadline = start("train", 1000), time.time() + 600
  log = two / "train_log.jsonl"
  while time.time() < deadline and not (log.exists() and len(_last_rows(two, "train")) >= 4):
    assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
    time.sleep(0.05)
  for p in procs:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
  killed_at = max(_last_rows(two, "train"))
  assert 4 <= killed_at < 12
  # Second attempt: preempted as SLURM does it, SIGTERM to every task (here 0.5 s apart): both
  # stop at the same step, save it once, exit 143 and say so in one line.
  procs = start("train", 1000)
  while time.time() < deadline and not max(_last_rows(two, "train")) >= killed_at + 2:
    assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  time.sleep(0.5)
  procs[0].send_signal(signal.SIGTERM)
  errs = [p.communicate(timeout=300)[1] for p in procs]
  assert [p.returncode for p in procs] == [143, 143], errs[0][-3000:] + errs[1][-3000:]
  lines = [e.strip().splitlines()[-1] for e in errs]
  assert lines[0] == lines[1] and lines[0].startswith("SIGTERM: stopped at step ")
  stopped = int(lines[0].split("stopped at step ")[1].split(",")[0])
  assert killed_at + 2 <= stopped < 12
  assert max(int(n) for n in os.listdir(two / "checkpoints" / "latest") if n.isdigit()) == stopped
  # The same command, resumed, to the end; then evaluation and the rollout, both processes.
  procs = start("all", 12)
  errs = [p.communicate(timeout=900)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], errs[0][-3000:] + errs[1][-3000:]
  assert "resumed from step" in errs[0]

  for kind in ("train", "valid"):
    a, b = _last_rows(one, kind), _last_rows(two, kind)
    assert sorted(a) == sorted(b) and max(a) == 12
    for step in a:
      np.testing.assert_allclose(b[step]["loss"], a[step]["loss"], rtol=1e-5, err_msg=step)
  for which in ("latest", "best"):
    assert os.listdir(two / "checkpoints" / which)
  for name in ("metrics.json", "rollout.json"):
    a, b = (json.loads((d / name).read_text()) for d in (one, two))
    for k, v in a.items():
      if isinstance(v, float):
        np.testing.assert_allclose(b[k], v, rtol=1e-5, err_msg=f"{name} {k}")
      elif isinstance(v, list) and v and isinstance(v[0], float):
        np.testing.assert_allclose(b[k], v, rtol=1e-5, err_msg=f"{name} {k}")
