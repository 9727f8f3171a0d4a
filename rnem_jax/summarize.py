"""Aggregates evaluated runs over seeds: ``{model: {metric: {"mean", "std", "seeds"}}}``.

Each run directory holds ``config.json`` and what ``--mode=eval``/``rollout``
wrote: ``metrics.json`` (test set), ``metrics_extrapolation.json`` (6-8 balls;
its metrics get the suffix ``_678``) and ``rollout.json`` (per-step BCE, as
``rollout_bce`` with per-step mean/std lists). Runs are grouped by the config's
``name`` (``<model>_<scale>``); runs of one group scored on different datasets,
T or K are refused rather than averaged.

  python -m rnem_jax.summarize --runs=DIR1,DIR2,... --out=results/cpu/summary.json
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np

METRICS = ("bce_last", "bce_last10", "bce_last_rel", "bce_last10_rel", "relational_bce_last",
           "relational_bce_last10", "relational_bce_last_rel", "relational_bce_last10_rel",
           "ari_seq", "ari_last", "confidence_last")
FILES = (("metrics.json", ""), ("metrics_extrapolation.json", "_678"))


def _read(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _stats(values: Sequence[float]) -> dict:
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "seeds": int(len(v))}


def _check_same(records: list[dict], name: str, what: str) -> None:
  for field in ("dataset", "split", "T", "K", "num_sequences"):
    seen = {r.get(field) for r in records}
    if len(seen) > 1:
      raise ValueError(f"runs of {name} were scored differently on {what}: {field} takes the "
                       f"values {sorted(map(str, seen))}; evaluate them alike before averaging")


def summarize(workdirs: Sequence[str]) -> dict:
  """``{model: {metric: {"mean", "std", "seeds"}}}`` over the runs in ``workdirs``."""
  groups: dict[str, list[str]] = {}
  for wd in workdirs:
    config = _read(os.path.join(wd, "config.json"))
    if config is None:
      raise ValueError(f"{wd} has no config.json: not a run directory")
    groups.setdefault(config["name"], []).append(wd)
  summary = {}
  for name, dirs in sorted(groups.items()):
    out = {}
    for filename, suffix in FILES:
      records = [r for r in (_read(os.path.join(d, filename)) for d in dirs) if r is not None]
      if not records:
        continue
      _check_same(records, name, filename)
      for metric in METRICS:
        values = [r[metric] for r in records if metric in r]
        if values:
          out[metric + suffix] = _stats(values)
    rollouts = [r for r in (_read(os.path.join(d, "rollout.json")) for d in dirs) if r]
    if rollouts:
      curves = np.asarray([r["bce_per_step"] for r in rollouts], np.float64)
      out["rollout_bce"] = {
          "mean": curves.mean(0).tolist(),
          "std": (curves.std(0, ddof=1) if len(curves) > 1 else np.zeros(curves.shape[1])).tolist(),
          "seeds": len(curves), "num_real_steps": rollouts[0]["num_real_steps"]}
    summary[name] = out
  return summary


def main(argv=None) -> None:
  import argparse

  parser = argparse.ArgumentParser(prog="python -m rnem_jax.summarize", description=__doc__)
  parser.add_argument("--runs", required=True, help="comma-separated run directories")
  parser.add_argument("--out", required=True, help="summary JSON to write")
  args = parser.parse_args(argv)
  summary = summarize([d for d in args.runs.split(",") if d])
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(summary, f, indent=2)
  print(f"wrote {args.out}: {', '.join(summary)}")


if __name__ == "__main__":
  main()
