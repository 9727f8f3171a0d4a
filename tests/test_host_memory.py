"""rnem_jax.host_memory: with freed memory kept, a repeated XLA:CPU call stops faulting in its
temporary buffer; with glibc's defaults it faults the buffer in on every call."""

import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import without_o0
from rnem_jax import host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

CALLS = 30

# A jitted function whose temporaries (two 32 MB intermediates and their products, ~100 MB in
# all) exceed glibc's 64 MB thread arenas, called CALLS times; prints the page faults of each
# call and how far it moved the heap's break (sbrk(0)).
PROGRAM = r"""
import json, sys
from rnem_jax import host_memory
applied = host_memory.reuse_freed_memory()
import jax, jax.numpy as jnp

@jax.jit
def f(x):
  y = jnp.cumsum(jnp.sin(x), axis=0)
  z = jnp.cumsum(jnp.cos(y), axis=1)
  return jnp.sum(z * y, axis=0)

x = jnp.ones((4096, 2048))
compiled = f.lower(x).compile()
temp = compiled.memory_analysis().temp_size_in_bytes
faults, growth = [], []
for _ in range(int(sys.argv[1])):
  before, brk = host_memory.minor_page_faults(), host_memory.heap_break()
  jax.block_until_ready(compiled(x))
  faults.append(host_memory.minor_page_faults() - before)
  growth.append(host_memory.heap_break() - brk)
print(json.dumps(dict(applied=applied, in_effect=host_memory.in_effect(), temp=temp,
                      faults=faults, growth=growth)))
"""


def _start(mode):
  env = without_o0(dict(os.environ, RNEM_HOST_ALLOCATOR=mode))   # XLA:CPU as users run it
  env.pop("GLIBC_TUNABLES", None)
  return subprocess.Popen([sys.executable, "-c", PROGRAM, str(CALLS)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_kept_memory_stops_the_page_faults_that_glibc_defaults_repeat():
  # Kept memory is reused, but not from the first call: a freed buffer-sized chunk is split to
  # serve small allocations made between calls, is then too small for the next buffer, and that
  # buffer is carved from fresh memory at the heap's top (faulted in again). Measured on 8
  # processes of 30 calls: 0-8 such calls each, mostly the first few. So each kept process must
  # fault on fewer than half of its calls, and every call that does must have grown the heap.
  modes = ("system", "reuse", "reuse", "reuse")
  procs = [(mode, _start(mode)) for mode in modes]  # side by side
  out = []
  for mode, proc in procs:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    out.append(json.loads(stdout.strip().splitlines()[-1]))
  system, reuses = out[0], out[1:]
  assert (system["applied"], system["in_effect"]) == (False, False)
  pages = system["temp"] / 4096
  assert pages > 64 * 2**20 / 4096  # larger than a thread arena: the case that matters
  # glibc's defaults: a fresh mapping every call, so (nearly) every temporary page faults again,
  # and the buffer never comes from the heap.
  assert min(system["faults"][1:]) > 0.5 * pages, system
  assert max(system["growth"][1:]) < 0.5 * system["temp"], system
  for reuse in reuses:
    assert (reuse["applied"], reuse["in_effect"]) == (True, True)
    later = reuse["faults"][1:]
    # Kept: most calls fault (almost) nothing.
    assert sorted(later)[len(later) // 2] < 0.02 * pages, reuse
    # A call that faults the buffer in again is one whose buffer came from new heap.
    for faults, growth in zip(later, reuse["growth"][1:]):
      if faults > 0.5 * pages:
        assert growth > 0.5 * reuse["temp"], reuse


def test_unknown_mode_is_refused():
  with pytest.raises(ValueError, match="reuse"):
    host_memory.reuse_freed_memory("tcmalloc")


def test_system_mode_changes_nothing():
  proc = subprocess.run(
      [sys.executable, "-c", "from rnem_jax import host_memory as h; "
       "print(h.reuse_freed_memory('system'), h.in_effect())"],
      capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["False", "False"]


def test_tuning_is_kept_on_cpu_only():
  """for_backend keeps the tuning on the CPU backend and gives glibc's defaults back elsewhere."""
  import subprocess
  import sys
  script = (
      "from rnem_jax import host_memory as h\n"
      "assert h.reuse_freed_memory('reuse') and h.for_backend('cpu') and h.in_effect()\n"
      "assert not h.for_backend('gpu') and not h.in_effect()\n"
      "assert h.reuse_freed_memory('reuse') and not h.for_backend('tpu')\n"
      "print('OK')\n")
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
  assert r.returncode == 0 and "OK" in r.stdout, r.stderr
