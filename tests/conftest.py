"""Shared test fixtures: a session data directory, a compilation cache and config loading."""

import importlib.util
import os
from pathlib import Path

# The suite's tolerances are CPU float32's: on an accelerator machine the tests (and the CLI
# subprocesses they start, which inherit this) still run on the CPU.
os.environ["JAX_PLATFORMS"] = "cpu"
# Tiny programs run a few steps, so compiling dominates the suite: XLA:CPU without its LLVM
# backend optimizations compiles a training step in half the time and computes the same
# numbers (runs 5x slower). Inherited by the CLI subprocesses; the tests that time or train
# many steps ask for full optimization (OPTIMIZED). RNEM_TEST_XLA_OPTIMIZE=1 compiles
# everything as users do.
O0 = "--xla_backend_optimization_level=0"
if not os.environ.get("RNEM_TEST_XLA_OPTIMIZE"):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {O0}".strip()
# compiler_options for a program that must run at full speed (``.lower(...).compile(OPTIMIZED)``).
OPTIMIZED = {"xla_backend_optimization_level": 3}


def xla_flags(*flags: str) -> str:
  """XLA_FLAGS for a subprocess: this session's flags and ``flags``."""
  return " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()


def without_o0(env: dict) -> dict:
  """``env`` with XLA's backend optimizations on (for a subprocess that measures XLA:CPU)."""
  flags = env.get("XLA_FLAGS", "").replace(O0, "").strip()
  return {**env, "XLA_FLAGS": flags} if flags else {k: v for k, v in env.items()
                                                   if k != "XLA_FLAGS"}

import jax  # noqa: E402
import pytest

REPO = Path(__file__).resolve().parent.parent


def _shared(tmp_path_factory, name: str) -> str:
  """A directory every pytest-xdist worker of this run shares (their base temporary directories
  are siblings): datasets are built once (data.ensure_built locks against a second builder) and
  compiled programs are reused."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent
  path = base / name
  path.mkdir(exist_ok=True)
  return str(path)


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
  """A persistent XLA compilation cache shared by this process and the subprocesses it starts
  (exported in the environment they inherit)."""
  path = os.environ.get("RNEM_TEST_COMPILE_CACHE") or _shared(tmp_path_factory, "xla_cache")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """Where the tiny datasets are built (once per session; $RNEM_TEST_DATA_DIR to keep them)."""
  return os.environ.get("RNEM_TEST_DATA_DIR") or _shared(tmp_path_factory, "rnem_data")


def load_config(name: str, variant: str = "tiny", **overrides):
  """``configs/<name>.py:<variant>`` with dotted-field overrides, e.g. ``**{"em.K": 3}``."""
  spec = importlib.util.spec_from_file_location(f"configs_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config(variant)
  for dotted, value in overrides.items():
    *path, field = dotted.split(".")
    node = cfg
    for p in path:
      node = node[p]
    node[field] = value
  return cfg
