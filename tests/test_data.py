"""Building, checking and reading the TFDS datasets (rnem_jax.data)."""

import itertools
import os
import shutil
import zlib

import numpy as np
import pytest

from rnem_jax import data

BALLS = "bouncing_balls/balls4mass32_tiny"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("rnem_data"))
  data.ensure_built(BALLS, path)
  return path


def _all_examples(name, split, data_dir):
  source = data.load_source(name, split, data_dir)
  return [source[i] for i in range(len(source))]


def test_build_is_deterministic(data_dir, tmp_path):
  data.build(BALLS, str(tmp_path), num_workers=1)
  for split in ("train", "test"):
    first, second = (_all_examples(BALLS, split, d) for d in (data_dir, str(tmp_path)))
    assert len(first) == len(second) == dict(train=32, test=16)[split]
    for a, b in zip(first, second):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(first[0]["features"], first[1]["features"])


def test_stored_example_fields(data_dir):
  ex = data.load_source(BALLS, "validation", data_dir)[0]
  assert ex["features"].shape == (21, 32, 32, 1) and ex["features"].dtype == np.uint8
  assert ex["positions"].shape == (21, 4, 2) and ex["masses"].shape == (4,)
  assert np.all(ex["features"][ex["groups"] > 0] == 1)


def test_ensure_built_is_a_noop_when_present(data_dir):
  path = data.get_builder(BALLS, data_dir).data_path
  before = {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)}
  data.ensure_built(BALLS, data_dir)
  assert before == {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)}


def test_missing_dataset_gives_clear_error(tmp_path):
  with pytest.raises(data.DatasetError, match="not built"):
    data.load_source(BALLS, "train", str(tmp_path))
  with pytest.raises(ValueError, match="unknown config"):
    data.ensure_built("bouncing_balls/nope", str(tmp_path))
  with pytest.raises(ValueError, match="<dataset>/<config>"):
    data.ensure_built("balls4mass32_tiny", str(tmp_path))


def _copy(data_dir, tmp_path):
  shutil.copytree(data_dir, tmp_path / "copy")
  copy = str(tmp_path / "copy")
  return copy, str(data.get_builder(BALLS, copy).data_path)


def test_half_written_dataset_gives_clear_error_and_is_kept(data_dir, tmp_path):
  copy, path = _copy(data_dir, tmp_path)
  os.remove(os.path.join(path, "dataset_info.json"))
  with pytest.raises(data.DatasetError, match="dataset_info.json"):
    data.ensure_built(BALLS, copy)
  with pytest.raises(data.DatasetError):
    data.load_source(BALLS, "train", copy)
  assert os.listdir(path)  # nothing was deleted


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_damaged_shard_gives_clear_error(data_dir, tmp_path, damage):
  copy, path = _copy(data_dir, tmp_path)
  shard = next(os.path.join(path, f) for f in os.listdir(path) if "-train." in f)
  if damage == "remove":
    os.remove(shard)
  else:
    with open(shard, "r+b") as f:
      f.truncate(os.path.getsize(shard) // 2)
  with pytest.raises(data.DatasetError, match="never deleted automatically"):
    data.ensure_built(BALLS, copy)
  assert os.path.exists(path)


def test_batches_are_time_major_and_cropped(data_dir):
  it = data.iterate_batches(BALLS,
                            "train",
                            8,
                            seed=0,
                            num_frames=11,
                            shuffle=False,
                            shard_index=0,
                            shard_count=1,
                            data_dir=data_dir)
  batch = next(it)
  assert set(batch) == {"features", "groups", "collisions"}
  assert batch["features"].shape == (11, 8, 32, 32, 1) and batch["features"].dtype == np.float32
  assert batch["groups"].dtype == np.int32 and batch["collisions"].dtype == np.float32
  source = data.load_source(BALLS, "train", data_dir)
  for b in range(8):
    np.testing.assert_array_equal(batch["features"][:, b], source[b]["features"][:11])
    np.testing.assert_array_equal(batch["groups"][:, b], source[b]["groups"][:11])


def _ids(batches):
  """Sequence identity = (bytes of) its first frame."""
  return [
      batch["features"][0, b].tobytes()
      for batch in batches
      for b in range(batch["features"].shape[1])
  ]


def test_shuffle_is_seeded_and_reshuffles_each_epoch(data_dir):

  def run(seed):
    it = data.iterate_batches(BALLS,
                              "train",
                              8,
                              seed=seed,
                              num_frames=2,
                              num_epochs=2,
                              shard_index=0,
                              shard_count=1,
                              data_dir=data_dir)
    return _ids(it)

  a, b, c = run(1), run(1), run(2)
  assert a == b and a != c
  assert len(a) == 64 and len(set(a[:32])) == 32
  assert set(a[:32]) == set(a[32:]) and a[:32] != a[32:]


def test_shards_are_disjoint_and_cover_the_split(data_dir):
  shards = [
      _ids(
          data.iterate_batches(BALLS,
                               "train",
                               4,
                               seed=0,
                               num_frames=2,
                               num_epochs=1,
                               shard_index=i,
                               shard_count=2,
                               data_dir=data_dir)) for i in range(2)
  ]
  assert len(shards[0]) == len(shards[1]) == 16
  assert not set(shards[0]) & set(shards[1])
  assert len(set(shards[0]) | set(shards[1])) == 32


def test_evaluation_order_keeps_the_last_partial_batch(data_dir):
  batches = list(
      data.iterate_batches(BALLS,
                           "test",
                           5,
                           seed=0,
                           shuffle=False,
                           num_epochs=1,
                           drop_remainder=False,
                           shard_index=0,
                           shard_count=1,
                           data_dir=data_dir))
  assert [b["features"].shape[1] for b in batches] == [5, 5, 5, 1]
  source = data.load_source(BALLS, "test", data_dir)
  assert _ids(batches) == [source[i]["features"][0].astype(np.float32).tobytes() for i in range(16)]


def test_default_shard_is_this_process(data_dir):
  batch = next(
      data.iterate_batches(BALLS, "validation", 16, seed=0, num_epochs=1, data_dir=data_dir))
  assert batch["features"].shape[1] == 16  # one process reads everything


def _previous_batches(name, split, batch_size, *, seed, num_frames, data_dir, shuffle=True,
                      num_epochs=None, drop_remainder=True, start_batch=0):
  """The single-process pipeline before global batches, rebuilt from grain and load_source."""
  import grain

  keys = data.dataset_info(name, data_dir).keys
  dtypes = {"features": np.float32, "groups": np.int32, "collisions": np.float32}
  ds = grain.MapDataset.source(data.load_source(name, split, data_dir))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  ds = ds.map(lambda ex: {k: ex[k][:num_frames] for k in keys})
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)[start_batch:]
  for i in range(len(ds)):
    yield {k: np.ascontiguousarray(np.swapaxes(v, 0, 1), dtype=dtypes[k]) for k, v in ds[i].items()}


@pytest.mark.parametrize("kwargs", [
    dict(split="train", batch_size=5, num_epochs=None, start_batch=3),
    dict(split="train", batch_size=6, num_epochs=2),
    dict(split="test", batch_size=5, shuffle=False, num_epochs=1, drop_remainder=False),
],
                         ids=["forever", "two_epochs", "evaluation"])
def test_one_process_yields_the_previous_batches_byte_for_byte(data_dir, kwargs):
  kwargs = dict(kwargs, seed=3, num_frames=4, data_dir=data_dir)
  split, batch_size = kwargs.pop("split"), kwargs.pop("batch_size")
  new = data.iterate_batches(BALLS, split, batch_size, shard_index=0, shard_count=1, **kwargs)
  old = _previous_batches(BALLS, split, batch_size, **kwargs)
  pairs = list(itertools.islice(itertools.zip_longest(new, old), 12))
  assert len(pairs) == (12 if kwargs.get("num_epochs") is None else len(pairs))
  for a, b in pairs:
    assert a is not None and b is not None and list(a) == list(b)
    for k in a:
      assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
      assert a[k].tobytes() == b[k].tobytes()


def _process_batches(shard_count, batch_size, num_batches, split="train", **kwargs):
  """Per process, its first ``num_batches`` batches (fewer if the order ends)."""
  return [
      list(
          itertools.islice(
              data.iterate_batches(BALLS,
                                   split,
                                   batch_size,
                                   shard_index=i,
                                   shard_count=shard_count,
                                   **kwargs), num_batches)) for i in range(shard_count)
  ]


@pytest.mark.parametrize("shard_count", [2, 4])
@pytest.mark.parametrize("start_batch", [0, 2])
def test_global_batches_do_not_depend_on_the_process_count(data_dir, shard_count, start_batch):
  batch_size, num_batches, num_train = 3, 7, 32
  global_batch = batch_size * shard_count
  # The batches read straddle the end of the first epoch (a new permutation follows).
  assert start_batch * global_batch < num_train < (start_batch + num_batches) * global_batch
  kwargs = dict(seed=7, num_frames=3, start_batch=start_batch, data_dir=data_dir)
  (single,) = _process_batches(1, global_batch, num_batches, **kwargs)
  parts = _process_batches(shard_count, batch_size, num_batches, **kwargs)
  assert len(single) == num_batches and all(len(p) == num_batches for p in parts)
  for j, batch in enumerate(single):
    assert set(batch) == {"features", "groups", "collisions"}
    for k, v in batch.items():
      assert all(p[j][k].shape[1] == batch_size for p in parts)
      np.testing.assert_array_equal(np.concatenate([p[j][k] for p in parts], axis=1), v)


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_processes_split_a_finite_order_alike(data_dir, drop_remainder):
  # 16 test sequences in global batches of 4 x 3 = 12: one full batch and 4 left over.
  kwargs = dict(seed=0, num_frames=2, num_epochs=1, shuffle=False, data_dir=data_dir,
                drop_remainder=drop_remainder)
  (single,) = _process_batches(1, 12, 99, split="test", **kwargs)
  parts = _process_batches(4, 3, 99, split="test", **kwargs)
  if drop_remainder:
    assert len(single) == 1 and [len(p) for p in parts] == [1, 1, 1, 1]
  else:
    assert len(single) == 2 and [len(p) for p in parts] == [2, 2, 1, 1]
    assert [p[1]["features"].shape[1] for p in parts[:2]] == [3, 1]
  for j, batch in enumerate(single):
    for k, v in batch.items():
      np.testing.assert_array_equal(np.concatenate([p[j][k] for p in parts if len(p) > j], 1), v)


def _count_zlib_calls(monkeypatch):
  import grain  # noqa: F401 (imported before counting: imports may decompress too)

  calls = []
  decompress = zlib.decompress

  def counting(*args, **kwargs):
    calls.append(1)
    return decompress(*args, **kwargs)

  monkeypatch.setattr(zlib, "decompress", counting)
  return calls


def test_only_the_keys_asked_for_are_decoded(data_dir, monkeypatch):
  kwargs = dict(seed=0, num_frames=5, num_epochs=1, data_dir=data_dir)
  calls = _count_zlib_calls(monkeypatch)
  full = list(data.iterate_batches(BALLS, "validation", 4, shard_index=0, shard_count=1, **kwargs))
  assert len(calls) == 16 * 3  # features, groups, collisions of each sequence
  del calls[:]
  only = list(
      data.iterate_batches(BALLS,
                           "validation",
                           4,
                           shard_index=0,
                           shard_count=1,
                           keys=("features",),
                           **kwargs))
  assert len(calls) == 16  # features only: groups, collisions, positions... stay encoded
  assert len(only) == len(full) == 4
  for a, b in zip(only, full):
    assert list(a) == ["features"] and a["features"].dtype == np.float32
    np.testing.assert_array_equal(a["features"], b["features"])
  del calls[:]
  mine = list(
      data.iterate_batches(BALLS,
                           "validation",
                           4,
                           shard_index=1,
                           shard_count=2,
                           keys=["collisions", "features"],
                           **kwargs))
  assert len(mine) == 2 and list(mine[0]) == ["collisions", "features"]
  assert len(calls) == 8 * 2  # this process's half of each global batch, two keys


def test_read_ahead_is_a_few_batches(data_dir, monkeypatch):
  import time

  calls = _count_zlib_calls(monkeypatch)
  it = data.iterate_batches(BALLS,
                            "train",
                            4,
                            seed=0,
                            num_threads=2,
                            shard_index=0,
                            shard_count=1,
                            keys=("features",),
                            data_dir=data_dir)
  next(it)
  seen = -1
  while seen != len(calls):  # until the prefetch threads are idle
    seen = len(calls)
    time.sleep(0.3)
  assert 4 <= len(calls) <= 4 * (1 + 2)  # the batch returned + max(2, num_threads) ahead


def test_bad_keys(data_dir):
  for keys in (("features", "positions"), ("nope",), ()):
    with pytest.raises(ValueError, match="features, groups, collisions"):
      next(data.iterate_batches(BALLS, "train", 4, seed=0, keys=keys, data_dir=data_dir))
  with pytest.raises(ValueError, match="sequence of key names"):
    next(data.iterate_batches(BALLS, "train", 4, seed=0, keys="features", data_dir=data_dir))


def test_bad_arguments(data_dir):
  with pytest.raises(ValueError, match="num_frames"):
    next(data.iterate_batches(BALLS, "train", 4, seed=0, num_frames=99, data_dir=data_dir))
  with pytest.raises(ValueError, match="too few"):
    next(data.iterate_batches(BALLS, "test", 64, seed=0, num_epochs=1, data_dir=data_dir))
  with pytest.raises(ValueError, match="too few for a global batch of 18"):
    next(
        data.iterate_batches(BALLS,
                             "test",
                             9,
                             seed=0,
                             num_epochs=1,
                             shard_index=0,
                             shard_count=2,
                             data_dir=data_dir))
  with pytest.raises(ValueError, match="num_epochs"):
    next(data.iterate_batches(BALLS, "test", 4, seed=0, num_epochs=0, data_dir=data_dir))
  with pytest.raises(ValueError, match="splits"):
    data.load_source(BALLS, "nope", data_dir)


def test_dataset_info():
  info = data.dataset_info("bouncing_balls/balls678mass32_tiny")
  assert info.image_size == (32, 32) and info.num_frames == 21
  assert info.splits == {"test": 16} and info.max_balls == 8 and info.num_actions == 0
  info = data.dataset_info("space_invaders/atari")
  assert info.image_size == (84, 84) and info.num_frames == 26 and info.num_actions == 6
  assert info.splits == {"train": 50_000, "validation": 10_000, "test": 10_000}
  assert data.dataset_info("curtain/balls3curtain64").max_balls == 3


def test_curtain_and_extrapolation_builds(tmp_path):
  data.ensure_built("curtain/balls3curtain32_tiny", str(tmp_path))
  ex = data.load_source("curtain/balls3curtain32_tiny", "train", str(tmp_path))[0]
  assert ex["curtain"].shape == (4,)
  data.ensure_built("bouncing_balls/balls678mass32_tiny", str(tmp_path))
  counts = {
      len(e["masses"])
      for e in _all_examples("bouncing_balls/balls678mass32_tiny", "test", str(tmp_path))
  }
  assert counts <= {6, 7, 8} and len(counts) > 1


def test_space_invaders_pipeline(tmp_path):
  name = "space_invaders/atari_tiny"
  data.ensure_built(name, str(tmp_path))
  batch = next(
      data.iterate_batches(name,
                           "train",
                           4,
                           seed=0,
                           shard_index=0,
                           shard_count=1,
                           data_dir=str(tmp_path)))
  assert batch["features"].shape == (26, 4, 84, 84, 1)
  assert batch["actions"].shape == (26, 4) and batch["actions"].dtype == np.int32
  assert set(np.unique(batch["features"])) <= {0.0, 1.0}
  actions = next(
      data.iterate_batches(name,
                           "train",
                           4,
                           seed=0,
                           shard_index=0,
                           shard_count=1,
                           keys=("actions",),
                           data_dir=str(tmp_path)))
  assert list(actions) == ["actions"]
  np.testing.assert_array_equal(actions["actions"], batch["actions"])


def test_cli_info(capsys):
  data.main(["info", BALLS])
  assert "image_size=(32, 32)" in capsys.readouterr().out


def test_default_build_workers_follow_the_allocation(monkeypatch):
  from rnem_jax.sim import builder_utils

  monkeypatch.delenv("RNEM_BUILD_WORKERS", raising=False)
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
  assert builder_utils.default_num_workers() == 3  # e.g. a SLURM job's cores
  monkeypatch.setenv("RNEM_BUILD_WORKERS", "7")
  assert builder_utils.default_num_workers() == 7
  monkeypatch.setenv("RNEM_BUILD_WORKERS", "")
  assert builder_utils.default_num_workers() == 3  # empty = unset
  for bad in ("0", "-2", "two", "1.5"):
    monkeypatch.setenv("RNEM_BUILD_WORKERS", bad)
    with pytest.raises(ValueError, match="RNEM_BUILD_WORKERS must be a positive integer"):
      builder_utils.default_num_workers()
  with pytest.raises(SystemExit, match="RNEM_BUILD_WORKERS"):  # the CLI's one-line error
    data.main(["build", BALLS, "--data_dir", "/nonexistent/never/written"])
  monkeypatch.delenv("RNEM_BUILD_WORKERS")
  monkeypatch.delattr(os, "sched_getaffinity", raising=False)
  monkeypatch.setattr(os, "cpu_count", lambda: 5)
  assert builder_utils.default_num_workers() == 5


def test_generation_uses_the_default_workers(monkeypatch):
  import concurrent.futures
  import functools

  from rnem_jax.sim import balls, builder_utils

  pools = []

  def thread_pool(max_workers, mp_context=None):  # records the size; threads start fast
    del mp_context
    pools.append(max_workers)
    return concurrent.futures.ThreadPoolExecutor(max_workers)

  monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", thread_pool)
  monkeypatch.setenv("RNEM_BUILD_WORKERS", "3")
  fn = functools.partial(balls.generate_sequence, balls.BallsConfig(image_size=32, num_frames=2))
  assert len(list(builder_utils.generate_split(fn, num_examples=64, split="test", seed=0))) == 64
  assert pools == [3]


def test_cli_build_help(capsys):
  with pytest.raises(SystemExit):
    data.main(["build", "--help"])
  assert "the cores this process may use" in " ".join(capsys.readouterr().out.split())


def test_parallel_generation_matches_serial():
  import functools

  from rnem_jax.sim import balls, builder_utils

  fn = functools.partial(balls.generate_sequence, balls.BallsConfig(image_size=32, num_frames=3))
  runs = [[
      e["positions"] for _, e in builder_utils.generate_split(
          fn, num_examples=80, split="validation", seed=3, num_workers=w)
  ] for w in (1, 2)]
  assert len(runs[0]) == len(runs[1]) == 80
  for a, b in zip(*runs):
    np.testing.assert_array_equal(a, b)


def test_beam_build_writes_the_same_bytes_as_a_local_build(tmp_path):
  pytest.importorskip("apache_beam")
  name = "bouncing_balls/balls4mass32_tiny"
  data.build(name, str(tmp_path / "local"), num_workers=1)
  data.build(name, str(tmp_path / "beam"), beam_runner="DirectRunner")
  for split in ("train", "validation", "test"):
    a = data.load_source(name, split, str(tmp_path / "local"))
    b = data.load_source(name, split, str(tmp_path / "beam"))
    assert len(a) == len(b)
    for i in range(len(a)):
      for k in a[i]:
        np.testing.assert_array_equal(a[i][k], b[i][k])
