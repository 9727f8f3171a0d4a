"""The Colab notebook runs end to end on CPU (tiny config) and shows every figure; its install cell
keeps the runtime's jax and refuses an unset or wrong RNEM_SOURCE."""

import re
import subprocess
import sys

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = REPO / "launch" / "rnem_colab.ipynb"


def _notebook():
  return nbformat.read(NOTEBOOK, as_version=4)


def _set_parameters(nb, **values):
  """Rewrites the parameters cell's `NAME = ...` lines (what papermill would inject); every name
  must already be a parameter there."""
  cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
  lines = cell.source.split("\n")
  for name, value in values.items():
    index = [i for i, line in enumerate(lines) if re.match(rf"{name}\s*=", line)]
    assert len(index) == 1, f"{name} is not a parameter of the notebook"
    lines[index[0]] = f"{name} = {value!r}"
  cell.source = "\n".join(lines)
  return cell


def _install_cell(nb):
  return next(c for c in nb.cells if c.cell_type == "code" and "RNEM_SOURCE" in c.source
              and "parameters" not in c.metadata.get("tags", []))


def _run_install(monkeypatch, **params):
  """Executes the parameters and install cells here, pip and git replaced by a recorder."""
  nb = _notebook()
  calls = []

  def fake_run(args, **kwargs):
    calls.append(list(args))
    if "-c" in args:  # the constraints file, read before the cell's tempfile is gone
      calls.append(open(args[args.index("-c") + 1]).read())
    return subprocess.CompletedProcess(args, 0)

  monkeypatch.setattr(subprocess, "run", fake_run)
  monkeypatch.setattr(sys, "path", list(sys.path))
  namespace = {}
  exec(_set_parameters(nb, **params).source, namespace)
  exec(_install_cell(nb).source, namespace)
  return calls, namespace


@pytest.mark.parametrize("source, error, message", [
    ("", ValueError, "Set RNEM_SOURCE"),
    ("/nonexistent/rnem_jax", FileNotFoundError, "does not exist"),
])
def test_install_refuses_missing_source(monkeypatch, source, error, message):
  with pytest.raises(error, match=message):
    _run_install(monkeypatch, RNEM_SOURCE=source, EXPECTED_BACKEND="cpu")


def test_install_refuses_unknown_backend(monkeypatch):
  with pytest.raises(ValueError, match="EXPECTED_BACKEND"):
    _run_install(monkeypatch, RNEM_SOURCE=str(REPO), EXPECTED_BACKEND="cuda")


def _fake_source(tmp_path, *dependencies):
  (tmp_path / "pyproject.toml").write_text(
      '[project]\nname = "rnem_jax"\ndependencies = [%s]\n'
      % ", ".join(f'"{d}"' for d in dependencies))
  return str(tmp_path)


def test_install_keeps_the_runtimes_jax(tmp_path, monkeypatch):
  import importlib.metadata

  source = _fake_source(tmp_path, "jax>=0.10", "numpy>=1.0", "rnem-test-not-installed>=1.0",
                        "rnem-test-other-platform ; sys_platform == 'nonexistent'")
  calls, namespace = _run_install(monkeypatch, RNEM_SOURCE=source, EXPECTED_BACKEND="cpu")
  pip = [sys.executable, "-m", "pip", "install", "-q"]
  # rnem_jax is importable here, but not from this copy: installed from it without dependencies,
  # then only the missing requirement, with jax and jaxlib pinned to the installed versions.
  assert calls[0] == pip + ["--no-deps", "-e", source]
  assert calls[1][:len(pip) + 1] == pip + ["-c"]
  assert calls[1][len(pip) + 2:] == ["rnem-test-not-installed>=1.0"]
  constraints = calls[2].split()
  for name in ("jax", "jaxlib"):
    assert f"{name}=={importlib.metadata.version(name)}" in constraints
  assert len(calls) == 3 and namespace["REPO"] == source and sys.path[0] == source


def test_install_refuses_an_old_jax(tmp_path, monkeypatch):
  source = _fake_source(tmp_path, "jax>=99")
  with pytest.raises(RuntimeError, match=r"jax\[tpu\]"):
    _run_install(monkeypatch, RNEM_SOURCE=source, EXPECTED_BACKEND="cpu")


def test_installed_checkout_installs_nothing(monkeypatch):
  calls, _ = _run_install(monkeypatch, RNEM_SOURCE=str(REPO), EXPECTED_BACKEND="cpu")
  assert calls == []


def test_notebook_executes_on_cpu(tmp_path, data_dir, compile_cache, monkeypatch):
  nb = _notebook()
  _set_parameters(nb, RNEM_SOURCE=str(REPO), EXPECTED_BACKEND="cpu",
                  CONFIG="configs/balls.py:tiny", WORKDIR=str(tmp_path / "run"),
                  DATA_DIR=data_dir, STEPS=3, EXTRAPOLATION=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {}) or "image/gif" in o.get("data", {})]
  assert len(images) >= 8  # 4 PNG figures + 3 GIFs + Figure 3
  for name in ("metrics.json", "rollout.json", "figures/panel.png", "report/summary.md"):
    assert (tmp_path / "run" / name).is_file(), name
  install = "".join(o.get("text", "") for o in _install_cell(nb).outputs)
  assert "installing" not in install  # the checkout is installed: pip never ran


def test_notebook_stops_on_the_wrong_backend(tmp_path, monkeypatch):
  """On a CPU 'runtime' with EXPECTED_BACKEND = "tpu" the backend cell fails, with a message."""
  nb = _notebook()
  _set_parameters(nb, RNEM_SOURCE=str(REPO), EXPECTED_BACKEND="tpu")
  backend = next(i for i, c in enumerate(nb.cells)
                 if c.cell_type == "code" and "default_backend()" in c.source)
  nb.cells = nb.cells[:backend + 1]
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  with pytest.raises(nbclient.exceptions.CellExecutionError, match="Change runtime type"):
    client.execute()
