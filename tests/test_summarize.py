"""Seed aggregation of evaluated runs (rnem_jax.summarize)."""

import json

import numpy as np
import pytest

from rnem_jax import summarize


def _run(path, name, seed_metrics, T=15, rollout=None, ext=None):
  path.mkdir()
  (path / "config.json").write_text(json.dumps({"name": name}))
  base = {"dataset": "bouncing_balls/balls4mass32_small", "split": "test", "T": T, "K": 5,
          "num_sequences": 500}
  (path / "metrics.json").write_text(json.dumps({**base, **seed_metrics}))
  if ext is not None:
    (path / "metrics_extrapolation.json").write_text(json.dumps({**base, "K": 8, **ext}))
  if rollout is not None:
    (path / "rollout.json").write_text(json.dumps({"bce_per_step": rollout, "num_real_steps": 2}))
  return str(path)


def test_mean_std_and_seeds_per_model(tmp_path):
  runs = [
      _run(tmp_path / "a0", "rnem_small", {"bce_last": 90.0, "ari_last": 0.8},
           rollout=[1.0, 2.0, 4.0], ext={"bce_last": 200.0}),
      _run(tmp_path / "a1", "rnem_small", {"bce_last": 100.0, "ari_last": 0.7},
           rollout=[3.0, 2.0, 6.0], ext={"bce_last": 210.0}),
      _run(tmp_path / "b0", "rnn_small", {"bce_last": 130.0}),
  ]
  s = summarize.summarize(runs)
  assert set(s) == {"rnem_small", "rnn_small"}
  assert s["rnem_small"]["bce_last"] == {"mean": 95.0, "std": pytest.approx(np.std([90, 100], ddof=1)),
                                         "seeds": 2}
  assert s["rnem_small"]["ari_last"]["mean"] == pytest.approx(0.75)
  assert s["rnem_small"]["bce_last_678"]["mean"] == 205.0
  assert s["rnem_small"]["rollout_bce"]["mean"] == [2.0, 2.0, 5.0]
  assert s["rnem_small"]["rollout_bce"]["std"][1] == 0.0
  assert s["rnn_small"]["bce_last"] == {"mean": 130.0, "std": 0.0, "seeds": 1}


def test_runs_scored_differently_are_refused(tmp_path):
  runs = [_run(tmp_path / "a0", "rnem_small", {"bce_last": 90.0}, T=15),
          _run(tmp_path / "a1", "rnem_small", {"bce_last": 91.0}, T=20)]
  with pytest.raises(ValueError, match="T takes the values"):
    summarize.summarize(runs)
  with pytest.raises(ValueError, match="not a run directory"):
    summarize.summarize([str(tmp_path)])
