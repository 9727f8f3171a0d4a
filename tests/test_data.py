"""Building, checking and reading the TFDS datasets (rnem_jax.data)."""

import os
import shutil

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


def test_bad_arguments(data_dir):
  with pytest.raises(ValueError, match="num_frames"):
    next(data.iterate_batches(BALLS, "train", 4, seed=0, num_frames=99, data_dir=data_dir))
  with pytest.raises(ValueError, match="too few"):
    next(data.iterate_batches(BALLS, "test", 64, seed=0, num_epochs=1, data_dir=data_dir))
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


def test_cli_info(capsys):
  data.main(["info", BALLS])
  assert "image_size=(32, 32)" in capsys.readouterr().out


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
