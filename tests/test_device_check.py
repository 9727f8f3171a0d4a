"""The device check runs end to end on this CPU with tiny shapes, writing every stage."""

import json
import os
import subprocess

import pytest

from conftest import REPO


@pytest.mark.slow
def test_device_check_writes_every_stage(tmp_path, data_dir, compile_cache):
  out = tmp_path / "gpu" / "device_check.json"
  env = dict(os.environ, RNEM_DATA_DIR=data_dir)
  r = subprocess.run(
      ["bash", "launch/device_check.sh", str(out), "--batch=4", "--K=2", "--T=2",
       "--image_size=32", "--repeats=1", "--dataset=bouncing_balls/balls4mass32_tiny",
       "--train_steps=20", "--budget_s=600"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-4000:]
  rec = json.loads(out.read_text())
  assert rec["environment"]["backend"] == "cpu"
  steps = rec["steps"]
  assert {(s["conv_impl"], s["remat"]) for s in steps} == {
      ("fast", True), ("fast", False), ("xla", True), ("xla", False)}
  assert all(s["train_step_s"] > 0 and s["compile_s"] > 0 for s in steps)
  assert rec["build"]["dataset"] == "bouncing_balls/balls4mass32_tiny"
  assert rec["input"]["sequences_per_s"] > 0 and "keeps_up" in rec["input"]
  t = rec["train"]
  assert t["step"] == 20 and [s for s, _ in t["loss_every_10"]] == [10, 20]
  assert t["loss_fell"] == (t["last_loss"] < t["first_loss"])
