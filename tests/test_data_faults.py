"""Faults around the datasets (rnem_jax.data): interrupted builds, their leftovers, damaged
files and unwritable or full data directories each end in one clear message."""

import errno
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rnem_jax import data
from rnem_jax.sim import balls, builder_utils

TINY = "bouncing_balls/balls4mass32_tiny"
# 3000 sequences: ~15 s with 2 workers, so a signal after the first second meets a busy build.
SMALL = "bouncing_balls/balls4mass32_small"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("rnem_data"))
  data.build(TINY, path, num_workers=1)
  return path


# --- processes ---------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
  """Pids of the live (not zombie) child processes of ``pid``."""
  found = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        stat = Path(f"/proc/{entry}/stat").read_text()
      except OSError:
        continue
      state, ppid = stat.rsplit(")", 1)[1].split()[:2]
      if int(ppid) == pid and state != "Z":
        found.append(int(entry))
  return found


def _alive(pid: int) -> bool:
  try:
    stat = Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return False
  return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait(condition, timeout: float) -> bool:
  deadline = time.monotonic() + timeout
  while not condition():
    if time.monotonic() > deadline:
      return False
    time.sleep(0.05)
  return True


def _start_build(data_dir: Path):
  """``python -m rnem_jax.data build SMALL`` with 2 workers, once both work (+ its workers).

  Its stderr goes to ``data_dir/stderr.txt``."""
  with open(data_dir / "stderr.txt", "w") as stderr:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnem_jax.data", "build", SMALL, f"--data_dir={data_dir}",
         "--num_workers=2"],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True)  # its own process group, as a terminal's job
  try:
    assert _wait(lambda: len(_children(proc.pid)) >= 2, 60), "the workers did not start"
    time.sleep(1.0)  # the workers are generating, the writer is writing
    workers = _children(proc.pid)
  except BaseException:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise
  return proc, workers


def _leftovers(data_dir: Path) -> list[str]:
  config_dir = data_dir / SMALL
  return sorted(p.name for p in config_dir.iterdir()) if config_dir.is_dir() else []


@linux_only
@pytest.mark.parametrize("signum, target", [(signal.SIGINT, "group"), (signal.SIGTERM, "parent")])
def test_a_signal_stops_the_build_and_its_workers(tmp_path, signum, target):
  proc, workers = _start_build(tmp_path)
  start = time.monotonic()
  if target == "group":  # Ctrl-C in a terminal: SIGINT to the parent and its workers
    os.killpg(proc.pid, signum)
  else:  # kill PID, a scheduler's SIGTERM
    proc.send_signal(signum)
  try:
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  took = time.monotonic() - start
  err = (tmp_path / "stderr.txt").read_text()
  assert proc.returncode == 128 + signum, err[-2000:]
  assert took < 10, f"the build took {took:.1f} s to stop"
  name = signal.Signals(signum).name
  line = (f"interrupted ({name}): build of {SMALL} stopped; nothing was kept, the same command "
          "starts it again")
  assert err.count(line) == 1 and "Traceback" not in err, err[-2000:]
  assert _wait(lambda: not any(_alive(w) for w in workers), 5), "a worker outlived the build"
  assert _leftovers(tmp_path) == []  # TFDS removed its temporary folder
  print(f"{name}: exit {took:.2f} s after the signal")


@linux_only
def test_workers_die_with_a_killed_parent(tmp_path):
  proc, workers = _start_build(tmp_path)
  start = time.monotonic()
  proc.kill()
  proc.wait()
  gone = _wait(lambda: not any(_alive(w) for w in workers), 5)
  for w in workers:  # never leave them running, even when the test fails
    if _alive(w):
      os.kill(w, signal.SIGKILL)
  assert gone, "the workers outlived their SIGKILLed parent"
  print(f"workers gone {time.monotonic() - start:.2f} s after the parent's SIGKILL")
  # The killed build left TFDS's temporary folder, which the next build recognises as stale.
  stale = data._stale_build_dirs(data.get_builder(SMALL, str(tmp_path)))
  assert [p.name for p in stale] == _leftovers(tmp_path) and len(stale) == 1


def _die(seed):
  del seed
  os._exit(3)


def test_a_dead_worker_is_a_dataset_error():
  with pytest.raises(data.DatasetError, match="generation worker died"):
    list(builder_utils.generate_split(_die, num_examples=64, split="test", seed=0, num_workers=2))


def test_closing_the_generation_early_stops_the_workers():
  fn = functools.partial(balls.generate_sequence, balls.BallsConfig(image_size=32, num_frames=3))
  it = builder_utils.generate_split(fn, num_examples=640, split="test", seed=0, num_workers=2)
  next(it)
  (pool,) = builder_utils._LIVE_POOLS
  pids = [p.pid for p in pool._processes.values()]
  it.close()
  assert not builder_utils._LIVE_POOLS and pids
  assert not any(_alive(pid) for pid in pids)
  # The pool's manager thread has ended too: the interpreter's exit will not wait for it.
  assert not [t for t in threading.enumerate() if type(t).__name__ == "_ExecutorManagerThread"]


# --- leftovers of killed builds ------------------------------------------------------------------


def test_a_build_removes_stale_temporary_folders_under_its_lock(tmp_path, caplog):
  builder = data.get_builder(TINY, str(tmp_path))
  # What TFDS names the folder it generates into (a killed build leaves it).
  stale = Path(tfds.core.utils.file_utils._get_incomplete_dir(str(builder.data_path)))
  (stale / "x.array_record").parent.mkdir(parents=True)
  (stale / "x.array_record").write_bytes(b"half")
  other_config = tmp_path / "bouncing_balls/balls678mass32_tiny/incomplete.AB12CD_1.0.0"
  other_version = stale.parent / "incomplete.AB12CD_0.9.0"
  for keep in (other_config, other_version):
    keep.mkdir(parents=True)
  caplog.set_level(logging.WARNING, logger="rnem_jax.data")
  # While another process holds the build lock its temporary folder must survive.
  with data._build_lock(str(tmp_path), TINY):
    thread = threading.Thread(target=data.build, args=(TINY, str(tmp_path), 1))
    thread.start()
    assert _wait(lambda: "Another process is building" in caplog.text, 30)
    time.sleep(0.3)
    assert stale.is_dir()
  thread.join(120)
  assert not thread.is_alive() and not stale.exists()
  assert other_config.is_dir() and other_version.is_dir()
  removed = [r.getMessage() for r in caplog.records if "temporary folder" in r.getMessage()]
  assert len(removed) == 1 and str(stale) in removed[0] and f"build of {TINY}" in removed[0]
  assert len(data.load_source(TINY, "train", str(tmp_path))) == 32


# --- damaged files -------------------------------------------------------------------------------


def _damaged_copy(built, tmp_path) -> tuple[str, Path]:
  copy = tmp_path / "copy"
  shutil.copytree(built, copy)
  version_dir = Path(str(data.get_builder(TINY, str(copy)).data_path))
  (shard,) = version_dir.glob("*-train.array_record-*")
  raw = bytearray(shard.read_bytes())
  used = np.flatnonzero(np.frombuffer(bytes(raw), np.uint8))  # the file ends in zero padding
  middle = int(used[len(used) // 2])
  raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
  shard.write_bytes(bytes(raw))
  return str(copy), shard


def test_a_damaged_file_names_itself_when_read(built, tmp_path):
  copy, shard = _damaged_copy(built, tmp_path)
  data.ensure_built(TINY, copy)  # the start-up check reads only the ends of each split
  batches = data.iterate_batches(TINY, "train", 4, seed=0, num_epochs=1, shard_index=0,
                                 shard_count=1, data_dir=copy)  # 4 decoding threads
  with pytest.raises(data.DatasetError) as raised:
    for _ in batches:
      pass
  message = str(raised.value)
  assert f"{TINY}:train" in message and str(shard) in message and "\n" not in message
  assert f"delete {shard.parent} and build again" in message
  source = data.load_source(TINY, "train", copy)
  with pytest.raises(data.DatasetError, match=shard.name):
    for i in range(len(source)):
      source[i]  # noqa: B018


# --- unwritable and full data directories --------------------------------------------------------


def _cli_error(argv) -> str:
  with pytest.raises(SystemExit) as raised:
    data.main(argv)
  message = raised.value.code
  assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
  return message


def test_a_data_dir_under_a_file_is_one_clear_error(tmp_path):
  (tmp_path / "afile").write_text("")
  target = tmp_path / "afile" / "sub"
  want = (f"cannot write datasets to {target} ({tmp_path / 'afile'} is a file, not a "
          "directory): set --config.data_dir")
  for call in (data.build, data.ensure_built):
    with pytest.raises(data.DatasetError, match="RNEM_DATA_DIR to a writable directory") as e:
      call(TINY, str(target))
    assert str(e.value).startswith(want)
  assert _cli_error(["build", TINY, f"--data_dir={target}"]).startswith(f"error: {want}")


@pytest.mark.parametrize("code, reason", [(errno.EACCES, "permission denied"),
                                          (errno.EROFS, "read-only file system")])
def test_an_unwritable_data_dir_is_one_clear_error(tmp_path, monkeypatch, code, reason):
  mkdir = Path.mkdir

  def refuse(path, *args, **kwargs):  # tests run as root, where chmod stops nothing
    if str(path).startswith(str(tmp_path)):
      raise OSError(code, os.strerror(code), str(path))
    return mkdir(path, *args, **kwargs)

  monkeypatch.setattr(Path, "mkdir", refuse)
  target = tmp_path / "data"
  with pytest.raises(data.DatasetError) as e:
    data.ensure_built(TINY, str(target))
  assert str(e.value) == (f"cannot write datasets to {target} ({reason}): set --config.data_dir "
                          "(python -m rnem_jax.data: --data_dir) or $RNEM_DATA_DIR to a writable "
                          "directory")
  assert _cli_error(["build", TINY, f"--data_dir={target}"]) == f"error: {e.value}"


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device", "shard"),
    # What array_record raised when a 200 KiB tmpfs filled up during a real build:
    RuntimeError('Failed to finalize writing of split "validation": write() failed: No space '
                 'left on device; writing shard; at byte 4096; Failed to close chunk_writer'),
])
def test_a_full_disk_is_one_clear_error(tmp_path, monkeypatch, failure):

  def fail(self, **kwargs):
    raise failure

  monkeypatch.setattr(data.builder_class("bouncing_balls"), "download_and_prepare", fail)
  with pytest.raises(data.DatasetError) as e:
    data.build(TINY, str(tmp_path), num_workers=1)
  assert str(e.value).startswith(f"no space left on device in {tmp_path} while building")
  assert e.value.__cause__ is failure
  assert _cli_error(["build", TINY, f"--data_dir={tmp_path}", "--num_workers=1"
                    ]) == f"error: {e.value}"


def test_other_build_failures_are_not_disguised(tmp_path, monkeypatch):

  def fail(self, **kwargs):
    raise RuntimeError("a bug")

  monkeypatch.setattr(data.builder_class("bouncing_balls"), "download_and_prepare", fail)
  with pytest.raises(RuntimeError, match="^a bug$"):
    data.build(TINY, str(tmp_path), num_workers=1)
