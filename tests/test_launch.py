"""The launch scripts (SLURM GPU cluster, Cloud TPU pod) and the install extras, without a cluster:
syntax, python3, their dry-run commands (RNEM_DRY_RUN=1) and the idempotent environment setup."""

import hashlib
import os
import re
import shlex
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement

from conftest import REPO

SLURM = REPO / "launch" / "slurm_gpu.sbatch"
TPU = REPO / "launch" / "tpu_pod.sh"


def _env(**values):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("RNEM_", "SLURM_", "PYTHON"))}
  env.update(values)
  return env


def _run(script, *args, **env):
  result = subprocess.run(["bash", str(script), *args], env=_env(**env), cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  return result.stdout


def _commands(stdout):
  """The commands a dry run printed ("+ " and the shell-quoted words), as word lists."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("script", [SLURM, TPU], ids=lambda p: p.name)
def test_syntax_and_python3(script):
  subprocess.run(["bash", "-n", str(script)], check=True)
  text = script.read_text()
  assert "set -euo pipefail" in text
  assert "python3" in text
  assert not re.search(r"(?<![\w/.$-])python(?=\s)", text), "a bare `python` (use python3)"


def test_slurm_dry_run_installs_and_runs_every_process(tmp_path):
  venv = tmp_path / "venvs" / "cuda12"
  stdout = _run(SLURM, "configs/balls.py:rnem,tiny", str(tmp_path / "run"), "--config.seed=1",
                RNEM_DRY_RUN="1", RNEM_VENV=str(venv))
  commands = _commands(stdout)
  py = str(venv / "bin" / "python3")
  assert ["python3", "-m", "venv", str(venv)] in commands
  assert [py, "-m", "pip", "install", "-q", "-e", f"{REPO}[cuda12,atari]"] in commands
  assert not (tmp_path / "venvs").exists() and not (tmp_path / "run").exists()  # nothing ran
  mains = [c for c in commands if "rnem_jax.main" in c]
  assert mains == [["srun", "--kill-on-bad-exit=1", py, "-m", "rnem_jax.main", "--distributed",
                    "--config=configs/balls.py:rnem,tiny", f"--workdir={tmp_path / 'run'}",
                    "--mode=all", "--config.seed=1"],
                   # the figures: one ordinary process, after the job
                   ["srun", "--nodes=1", "--ntasks=1", py, "-m", "rnem_jax.main",
                    "--mode=visualize", "--config=configs/balls.py:rnem,tiny",
                    f"--workdir={tmp_path / 'run'}", "--config.seed=1"]]
  builds = [c[-1] for c in commands if "rnem_jax.data" in c]
  assert builds == ["bouncing_balls/balls4mass64", "bouncing_balls/balls678mass64"]


def test_slurm_setup_is_idempotent(tmp_path):
  """For real, with a stand-in python3 that logs its arguments (and makes a venv of itself)."""
  log = tmp_path / "log"
  fake = tmp_path / "python3"
  fake.write_text(f"""#!/bin/sh
echo "$0 $*" >> {log}
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python3"; fi
""")
  fake.chmod(0o755)
  venv = tmp_path / "venvs" / "cuda12"
  py = venv / "bin" / "python3"
  setup = dict(RNEM_SETUP_ONLY="1", RNEM_VENV=str(venv), PYTHON=str(fake))
  _run(SLURM, **setup)
  assert log.read_text().splitlines() == [f"{fake} -m venv {venv}",
                                          f"{py} -m pip install -q --upgrade pip",
                                          f"{py} -m pip install -q -e {REPO}[cuda12,atari]"]
  digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
  assert (venv / ".rnem_jax_installed").read_text() == f"{digest} cuda12\n"
  # Run again (a resubmitted job): neither a new venv nor pip.
  log.unlink()
  assert "already installed" in _run(SLURM, **setup) and not log.exists()
  commands = _commands(_run(SLURM, "configs/balls.py", str(tmp_path / "run"), RNEM_DRY_RUN="1",
                            RNEM_VENV=str(venv)))
  assert not [c for c in commands if "venv" in c or "pip" in c]
  assert any("--distributed" in c for c in commands)
  # pyproject.toml changed since: reinstalled into the same venv.
  (venv / ".rnem_jax_installed").write_text("0123 cuda12\n")
  _run(SLURM, **setup)
  assert log.read_text().splitlines() == [f"{py} -m pip install -q -e {REPO}[cuda12,atari]"]


def _tpu(command, *args, **env):
  env = dict(TPU_NAME="rnem-pod", ZONE="us-central2-b", SHARED="/mnt/shared",
             REPO_URL="https://example.org/rnem_jax.git", RNEM_DRY_RUN="1", **env)
  commands = _commands(_run(TPU, command, "configs/balls.py", "paper", *args, **env))
  assert commands and all(c[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rnem-pod"]
                          for c in commands)
  remote = []
  for c in commands:
    (worker,) = [a for a in c if a.startswith("--worker=")]
    (script,) = [a[len("--command="):] for a in c if a.startswith("--command=")]
    subprocess.run(["sh", "-n", "-c", script], check=True)  # the workers' shell parses it
    remote.append((worker, script))
  return remote


@pytest.mark.parametrize("command, modes", [("all", ["all"]), ("train", ["train"]),
                                            ("eval", ["eval", "rollout"])])
def test_tpu_runs_main_on_every_worker(command, modes):
  remote = _tpu(command, "--config.seed=1")
  mains = [(worker, script) for worker, script in remote
           if "rnem_jax.main" in script and "--mode=visualize" not in script]
  assert mains and all(worker == "--worker=all" for worker, _ in mains)
  runs = [m for _, script in mains for m in re.findall(r"rnem_jax\.main (.*?)(?:;|$)", script)]
  assert [re.search(r"--mode=(\w+)", r).group(1) for r in runs] == modes
  for r in runs:
    assert "--distributed" in r and "--workdir=/mnt/shared/runs/paper" in r
    assert r.endswith("--config.seed=1")
  assert all("$HOME/.venvs/rnem_jax-tpu/bin/python3 -m rnem_jax" in s for _, s in remote)
  # Only the dataset build and the figures (no collectives) run on worker 0 alone.
  for worker, script in remote:
    if worker != "--worker=all":
      assert "rnem_jax.data build" in script or "rnem_jax.main --mode=visualize" in script


def test_tpu_setup_installs_the_tpu_extra_once():
  ((worker, script),) = _tpu("setup")
  assert worker == "--worker=all"
  assert 'pip install -q -e "$HOME/rnem_jax[tpu,atari]"' in script
  assert "if [ ! -x $HOME/.venvs/rnem_jax-tpu/bin/python3 ]" in script  # venv only if missing
  assert ".rnem_jax_installed" in script and "git clone https://example.org/rnem_jax.git" in script


def test_pyproject_keeps_the_runtimes_jax():
  with open(REPO / "pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
  requirements = {r.name: r for r in map(Requirement, project["dependencies"])}
  for name, lower in (("jax", "0.10"), ("flax", "0.12")):
    specs = {(s.operator, s.version) for s in requirements[name].specifier}
    assert specs == {(">=", lower)}, f"{name}: lower bound only, no cap ({specs})"
  extras = project["optional-dependencies"]
  for extra in ("cuda12", "tpu"):
    (requirement,) = map(Requirement, extras[extra])
    assert requirement.name == "jax" and requirement.extras == {extra}
    assert all(s.operator == ">=" for s in requirement.specifier)
