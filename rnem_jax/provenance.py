"""Where a run's numbers came from: the code's git revision and the package versions, recorded
in ``config.json`` and every metrics file."""

import functools
import importlib.metadata
import pathlib
import platform
import subprocess
from typing import Optional

PACKAGES = ("rnem_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
            "tensorflow-datasets")


def git_revision(path: pathlib.Path = pathlib.Path(__file__).parent) -> Optional[str]:
  """The commit of the checkout holding ``path`` (``+dirty`` with uncommitted changes to
  tracked files), or None outside a git checkout."""
  def git(*args):
    return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                          timeout=10)
  try:
    head = git("rev-parse", "HEAD")
    if head.returncode:
      return None
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head.stdout.strip() + ("+dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
  """``{"git": revision or None, "python": version, "packages": {name: version}}``."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return {"git": git_revision(), "python": platform.python_version(), "packages": versions}
