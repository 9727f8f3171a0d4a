"""The Colab notebook runs end to end on CPU (tiny config) and shows every figure."""

import json

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def _parameters(**values) -> str:
  return "\n".join(f"{k} = {json.dumps(v) if not isinstance(v, bool) else v}"
                   for k, v in values.items())


def test_notebook_executes_on_cpu(tmp_path, data_dir, compile_cache, monkeypatch):
  nb = nbformat.read(REPO / "launch" / "rnem_colab.ipynb", as_version=4)
  cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
  cell.source = _parameters(CONFIG="configs/balls.py:tiny", WORKDIR=str(tmp_path / "run"),
                            DATA_DIR=data_dir, STEPS=3, EXTRAPOLATION=False,
                            REPO_URL="unused: the package is installed")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", compile_cache)
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {}) or "image/gif" in o.get("data", {})]
  assert len(images) >= 8  # 4 PNG figures + 3 GIFs + Figure 3
  for name in ("metrics.json", "rollout.json", "figures/panel.png", "report/report.md"):
    assert (tmp_path / "run" / name).is_file(), name
