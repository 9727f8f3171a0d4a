"""Keep freed host memory for reuse, so that XLA:CPU does not page-fault its buffers every call.

XLA:CPU allocates an executable's temporary buffer (large for a training step) on every
call, from the thread that runs it. glibc serves a request of more than its
thread arenas' 64 MB from a fresh ``mmap`` and gives it back with ``munmap`` when freed, so
every call faults the whole buffer in again, which costs a large share of each training step
in kernel time (docs/design.md#measured-choices).

``reuse_freed_memory()`` sets three glibc ``mallopt`` parameters: one arena for all threads
(the main arena, which can hold a chunk of any size), no ``mmap`` for large chunks, and no
trimming of the heap's top. The buffer is faulted in once and reused by later calls. The
computation is unchanged; the process keeps its peak memory until it exits.

Not every later call reuses it: a freed buffer-sized chunk can be split to serve small
allocations made between calls, is then too small for the next buffer, and that call carves its
buffer from fresh memory at the heap's top, faulting it in again and growing the heap by one
buffer (``results/perf/kept_heap_warmup.json``). Measured: a few calls per process, mostly the
first few (docs/design.md#measured-choices).

It must run before the first JAX computation: threads that have already allocated keep their
own arenas. It only helps XLA:CPU: once the backend is known, ``for_backend`` undoes it on GPU
and TPU hosts, whose device buffers are not host memory. The command-line entry points call
both; a notebook can call it in its first
cell. ``RNEM_HOST_ALLOCATOR=system`` in the environment leaves the allocator as it is. On other
C libraries (macOS, musl), and where mallopt refuses, nothing changes and it returns False.
The same settings work for any program when set in the environment before it starts::

  GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:\
glibc.malloc.trim_threshold=1000000000000
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import resource
from typing import Optional

ENV = "RNEM_HOST_ALLOCATOR"
MODES = ("reuse", "system")

# glibc's malloc.h parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# (parameter, value): one arena, never mmap, never trim (-1 disables trimming).
_REUSE = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))

_state = {"mode": None}


def _glibc() -> Optional[ctypes.CDLL]:
  """The process's C library if it is glibc, else None."""
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return None
  try:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return None


def reuse_freed_memory(mode: Optional[str] = None) -> bool:
  """Makes glibc keep freed memory for reuse (see the module docstring). Idempotent.

  Args:
    mode: ``"reuse"`` or ``"system"`` (change nothing); default ``$RNEM_HOST_ALLOCATOR``,
      else ``"reuse"``.

  Returns:
    True if the settings are in effect (now or from an earlier call), False otherwise.
  """
  mode = mode or os.environ.get(ENV) or "reuse"
  if mode not in MODES:
    raise ValueError(f"{ENV} / host allocator mode must be one of {MODES}, got {mode!r}")
  if _state["mode"] == "reuse":
    return True
  if mode == "system":
    _state["mode"] = "system"
    return False
  libc = _glibc()
  if libc is None:
    return False
  if not all(libc.mallopt(param, value) == 1 for param, value in _REUSE):
    return False
  _state["mode"] = "reuse"
  return True


# glibc's defaults for the parameters that keep memory (M_ARENA_MAX only shares arenas).
_DEFAULTS = ((_M_MMAP_MAX, 65536), (_M_TRIM_THRESHOLD, 128 * 1024))


def restore_defaults() -> bool:
  """Undoes ``reuse_freed_memory``'s keeping of freed memory (large chunks mmap'ed and trimmed
  again, free pages returned now). For backends other than XLA:CPU, whose device buffers do not
  live in host memory: there the tuning would only keep the host's peak. Returns True if
  glibc's defaults are in effect afterwards."""
  if _state["mode"] != "reuse":
    return _state["mode"] is None or _state["mode"] == "system"
  libc = _glibc()
  if libc is None or not all(libc.mallopt(p, v) == 1 for p, v in _DEFAULTS):
    return False
  libc.malloc_trim(0)
  _state["mode"] = None
  return True


def for_backend(backend: str) -> bool:
  """Keeps the tuning only where it helps: on the ``"cpu"`` backend. Returns whether it is in
  effect. Call once the backend is known (``jax.default_backend()``)."""
  if backend != "cpu":
    restore_defaults()
  return in_effect()


def in_effect() -> bool:
  """Whether ``reuse_freed_memory`` has set glibc's parameters in this process."""
  return _state["mode"] == "reuse"


def release_free_memory() -> bool:
  """``malloc_trim(0)``: hands every free page back to the OS (the next use faults it in again).

  For measurement: called before each call, it gives back what ``reuse_freed_memory`` keeps.
  Returns False where the C library is not glibc.
  """
  libc = _glibc()
  if libc is None:
    return False
  libc.malloc_trim(0)
  return True


def minor_page_faults() -> int:
  """Minor page faults of this process so far (``getrusage``)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def heap_break() -> int:
  """The heap's break, ``sbrk(0)``: where glibc's main arena ends. 0 where libc is not glibc.

  With ``reuse_freed_memory`` in effect, a call that moves it by about one buffer carved that
  buffer from fresh memory (and faulted it in) instead of reusing a freed one.
  """
  libc = _glibc()
  if libc is None:
    return 0
  libc.sbrk.restype = ctypes.c_void_p
  return libc.sbrk(0)
