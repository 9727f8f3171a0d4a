"""Aggregates evaluated runs over seeds: ``{model: {metric: {"mean", "std", "seeds"}}}``.

Each run directory holds ``config.json`` and what ``--mode=eval``/``rollout``
wrote: ``metrics.json`` (test set), ``metrics_extrapolation.json`` (6-8 balls;
its metrics get the suffix ``_678``), ``rollout.json`` (per-step BCE, as
``rollout_bce`` with per-step mean/std lists; the object curves as ``rollout_balls_kept`` etc.,
whose ``seeds_per_step`` counts the runs that measured each step) and, where present,
``rollout_ablation.json`` (as ``rollout_ablation``: variant -> mean/std
lists). Runs are grouped by the config's
``name`` (``<model>_<scale>``); runs of one group scored on different datasets,
T or K are refused rather than averaged.

  python -m rnem_jax.summarize --runs=DIR1,DIR2,... --out=results/cpu/summary.json \
      [--report_dir=results/cpu]

``--report_dir`` also writes ``summary.md`` (mean ± std tables and the paper's
claims checked against them), ``figure3_seeds.png`` and ``rollout_seeds.png``.

``--pool=SUMMARY.json`` merges the summary of other seeds of the same models (whose run
directories may be gone) into this one, exactly: the mean and the ddof=1 standard deviation of
the union of the seeds, from each side's mean, std and count (``pool``):

  python -m rnem_jax.summarize --runs=RUNS/cpu_4000/rnem_s2,RUNS/cpu_4000/rnn_em_s2 \
      --pool=EARLIER/summary.json --out=OUT/summary.json

``--budget_dir`` compares training budgets run by run instead (the same model and seed
evaluated after different numbers of steps, from copies of its workdir):

  python -m rnem_jax.summarize --runs=RUNS/cpu/rnem_s0,RUNS/cpu_4000/rnem_s0 \
      --budget_dir=OUT/budget
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Optional, Sequence

import numpy as np

from rnem_jax.config import (MODEL_LABELS, MODEL_TRAIN_SIM, PAPER_MODELS, ROLLOUT_REFERENCES,
                             check_same, in_report_order, is_mixture, label, model_of,
                             model_rank)

METRICS = ("bce_last", "bce_last10", "bce_last_rel", "bce_last10_rel", "relational_bce_last",
           "relational_bce_last10", "relational_bce_last_rel", "relational_bce_last10_rel",
           "ari_seq", "ari_last", "confidence_last", "fg_confidence_last",
           "components_used_last", "baseline_bce_last",
           "baseline_relational_bce_last")
# Object-level rollout curves of balls runs (rnem_jax.objects; rollout.json's "<name>_per_step").
ROLLOUT_OBJECT_CURVES = ("balls_kept", "ball_mass", "position_error_px", "swap_rate")

FILES = (("metrics.json", ""), ("metrics_extrapolation.json", "_678"))
# occlusion.json (curtain runs; rnem_jax.evaluate.occlusion): object permanence.
OCCLUSION_METRICS = ("visible_prob", "hidden_partial_prob", "hidden_full_prob",
                     "empty_curtain_prob", "reappearing_prob", "reappearing_bce_per_pixel",
                     "reappearing_baseline_bce_per_pixel")


def _read(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _stats(values: Sequence[float]) -> dict:
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "seeds": int(len(v))}


SAME_WITHIN = ("dataset", "split", "T", "K", "num_sequences")   # seeds of one model
SAME_ACROSS = ("dataset", "split", "T", "num_sequences", "num_real_steps")   # models compared


def _records(dirs: Sequence[str], filename: str, name: str) -> list[dict]:
  """The ``filename`` records of the run directories ``dirs`` (one model's seeds) that have
  one, checked to be scored alike (``SAME_WITHIN``)."""
  found = {d: r for d, r in ((d, _read(os.path.join(d, filename))) for d in dirs) if r}
  if found:
    check_same(found, SAME_WITHIN, f"the runs of {name} on {filename}",
               "evaluate them alike before averaging")
  return list(found.values())


def summarize(workdirs: Sequence[str]) -> dict:
  """``{model: {metric: {"mean", "std", "seeds"}}}`` over the runs in ``workdirs``."""
  groups: dict[str, list[str]] = {}
  for wd in workdirs:
    config = _read(os.path.join(wd, "config.json"))
    if config is None:
      raise ValueError(f"{wd} has no config.json: not a run directory")
    groups.setdefault(config["name"], []).append(wd)
  summary = {}
  firsts: dict[str, dict[str, dict]] = {}   # file -> model -> its first record
  for name, dirs in sorted(groups.items()):
    out = {}
    seeds = [(_read(os.path.join(d, "config.json")) or {}).get("seed") for d in dirs]
    for filename, suffix in FILES:
      records = _records(dirs, filename, name)
      if not records:
        continue
      firsts.setdefault(filename, {})[name] = records[0]
      for metric in METRICS:
        values = [r[metric] for r in records if metric in r]
        if values:
          out[metric + suffix] = _stats(values)
    occlusions = _records(dirs, "occlusion.json", name)
    if occlusions:
      firsts.setdefault("occlusion.json", {})[name] = occlusions[0]
      for metric in OCCLUSION_METRICS:
        values = [r[metric] for r in occlusions if metric in r]
        if values:
          out[metric] = _stats(values)
    rollouts = _records(dirs, "rollout.json", name)
    if rollouts:
      firsts.setdefault("rollout.json", {})[name] = rollouts[0]
      out["rollout_bce"] = {**_curve_stats([r["bce_per_step"] for r in rollouts]),
                            "num_real_steps": rollouts[0]["num_real_steps"]}
      for curve in ROLLOUT_OBJECT_CURVES:   # balls datasets (rnem_jax.objects)
        if all(f"{curve}_per_step" in r for r in rollouts):
          out[f"rollout_{curve}"] = _curve_stats([r[f"{curve}_per_step"] for r in rollouts])
      for key in [k for k, _ in ROLLOUT_REFERENCES] + [
          f"held_{c}_per_step" for c in ROLLOUT_OBJECT_CURVES]:   # data only: any run's
        ref = next((r[key] for r in rollouts if key in r), None)
        if ref is not None:
          out.setdefault("rollout_references", {})[key] = ref
    ablations = _records(dirs, "rollout_ablation.json", name)
    if ablations:
      out["rollout_ablation"] = {
          variant: _curve_stats([a["bce_per_step"][variant] for a in ablations])
          for variant in ablations[0]["bce_per_step"]}
    if out:   # runs still training (nothing evaluated yet) are left out
      if None not in seeds:
        out["seed_ids"] = sorted(seeds)
      summary[name] = out
  for filename, records in firsts.items():   # the models of one table share its test set
    check_same(records, SAME_ACROSS, f"the models {', '.join(records)} on {filename}",
               "compare only models evaluated on the same test set, the same way")
  return summary


def _pool_stats(a: dict, b: dict) -> dict:
  """Mean and ddof=1 std of the union of two disjoint seed sets, from their stats (scalars or
  per-step lists): the combined sum of squares is each side's plus the between-means term.
  Per step, a curve pools over the sides that measured the step (``seeds_per_step``)."""
  def side(s):   # mean, std, seed count per step; a scalar is one step
    mean = np.atleast_1d(np.asarray(s["mean"], np.float64))   # None -> NaN
    std = np.atleast_1d(np.asarray(s["std"], np.float64))
    count = np.where(np.isnan(mean), 0.0, s.get("seeds_per_step", s["seeds"]))
    return np.nan_to_num(mean), np.nan_to_num(std), count

  (ma, sa, na), (mb, sb, nb) = side(a), side(b)
  n = na + nb
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = (na * ma + nb * mb) / n
    ss = (np.maximum(na - 1, 0) * sa ** 2 + np.maximum(nb - 1, 0) * sb ** 2
          + na * nb / n * (ma - mb) ** 2)
    std = np.where(n > 1, np.sqrt(ss / (n - 1)), 0.0)
  if np.ndim(a["mean"]) == 0:
    return {**a, "mean": float(mean[0]), "std": float(std[0]), "seeds": int(n[0])}
  none = lambda v, keep: [float(x) if k else None for x, k in zip(v, keep)]
  return {**a, "mean": none(mean, n > 0), "std": none(std, n > 0),
          "seeds": int(a["seeds"] + b["seeds"]), "seeds_per_step": n.astype(int).tolist()}


def _is_stats(v) -> bool:
  return isinstance(v, dict) and {"mean", "std", "seeds"} <= set(v)


def pool(a: dict, b: dict) -> dict:
  """Merges two summaries (``summarize``'s format) of disjoint seeds into one, exactly.

  Per model and metric the result is what ``summarize`` gives on the union of the runs: the
  mean over all seeds and the ddof=1 standard deviation. A metric (or model) on one side only
  is kept as it is. Raises ValueError when both sides name their seeds (``seed_ids``) and
  share one, or when a per-step curve differs in length; where a side does not name its
  seeds (summaries written before ``seed_ids``), disjointness is the caller's to ensure.
  """
  out = {}
  for name in sorted(set(a) | set(b)):
    if name not in a or name not in b:
      out[name] = dict(a.get(name) or b[name])
      continue
    ma, mb = a[name], b[name]
    ids_a, ids_b = ma.get("seed_ids"), mb.get("seed_ids")
    if ids_a is not None and ids_b is not None and set(ids_a) & set(ids_b):
      raise ValueError(f"{name}: both summaries hold seed(s) {sorted(set(ids_a) & set(ids_b))}; "
                       "pool disjoint seeds only")
    merged = {}
    for key in sorted(set(ma) | set(mb)):
      va, vb = ma.get(key), mb.get(key)
      if key == "seed_ids":
        continue
      if va is None or vb is None:
        merged[key] = va if vb is None else vb
      elif _is_stats(va):
        if np.shape(va["mean"]) != np.shape(vb["mean"]):
          raise ValueError(f"{name}.{key}: curves of different lengths cannot be pooled")
        merged[key] = _pool_stats(va, vb)
      elif key == "rollout_ablation":
        merged[key] = pool({"_": va}, {"_": vb})["_"]
      else:  # data-only references, num_real_steps: the same on both sides
        merged[key] = va
    if ids_a is not None and ids_b is not None:
      merged["seed_ids"] = sorted(ids_a + ids_b)
    out[name] = merged
  return out


# ---------------------------------------------------------------------------
# Training budget: the same model and seed evaluated after different numbers of steps.

BUDGET_METRICS = ("bce_last_rel", "relational_bce_last_rel", "ari_last", "bce_last_rel_678")


def _steps_in(directory: str) -> list[int]:
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) \
      if os.path.isdir(directory) else []


def budget_records(workdirs: Sequence[str]) -> list[dict]:
  """One record per evaluated run, to compare training budgets run by run (no averaging).

  Each record: ``name`` (config name), ``seed``, ``workdir``, ``trained_steps`` (the latest
  checkpoint), ``checkpoint_step`` (the one evaluated), ``valid_loss`` at that step,
  ``valid_curve`` (``[[step, loss], ...]`` from ``train_log.jsonl``, the last entry per step
  where a resumed run logged one twice), the ``BUDGET_METRICS``, and the rollout BCE of the
  last real (``rollout_real_last``) and last simulated (``rollout_sim_last``) predicted
  frames. Sorted by model (paper order), seed and budget. Raises ValueError for a directory
  that is not an evaluated run.
  """
  records = []
  for wd in workdirs:
    config = _read(os.path.join(wd, "config.json"))
    metrics = _read(os.path.join(wd, "metrics.json"))
    if config is None or metrics is None:
      raise ValueError(f"{wd} is not an evaluated run directory (config.json, metrics.json)")
    record = {"name": config["name"], "seed": config.get("seed"), "workdir": wd,
              "trained_steps": (_steps_in(os.path.join(wd, "checkpoints", "latest")) or [None])[-1],
              "checkpoint_step": metrics.get("checkpoint_step")}
    valid = {}
    log = os.path.join(wd, "train_log.jsonl")
    if os.path.exists(log):
      with open(log) as f:
        for line in f:
          entry = json.loads(line)
          if entry.get("kind") == "valid":
            valid[int(entry["step"])] = float(entry["loss"])
    record["valid_curve"] = [[s, valid[s]] for s in sorted(valid)]
    record["valid_loss"] = valid.get(record["checkpoint_step"])
    extrapolation = _read(os.path.join(wd, "metrics_extrapolation.json")) or {}
    for metric in BUDGET_METRICS:
      source, key = ((extrapolation, metric[:-4]) if metric.endswith("_678") else (metrics, metric))
      record[metric] = source.get(key)
    rollout = _read(os.path.join(wd, "rollout.json"))
    if rollout:
      record["rollout_real_last"] = rollout["bce_per_step"][rollout["num_real_steps"] - 1]
      record["rollout_sim_last"] = rollout["bce_per_step"][-1]
    records.append(record)
  return sorted(records, key=lambda r: (model_rank(r["name"]), r["name"], r["seed"] or 0,
                                        r["trained_steps"] or 0))


def budget_table(records: Sequence[dict]) -> list[str]:
  """Markdown rows of ``budget_records``: one per run, the model's budgets one under another."""
  rows = ["| model | seed | steps trained | evaluated checkpoint | validation loss | "
          "BCE / baseline | relational / baseline | ARI last | BCE / baseline, 6–8 | "
          "rollout, last real step | rollout, last simulated step |", "|---" * 11 + "|"]
  fmt = lambda v, d: "–" if v is None else f"{v:.{d}f}"
  for r in records:
    ari = fmt(r["ari_last"], 3) if is_mixture(r["name"]) else "–"
    rows.append(f"| {label(r['name'])} | {r['seed']} | {r['trained_steps']} | "
                f"{r['checkpoint_step']} | {fmt(r['valid_loss'], 1)} | "
                f"{fmt(r['bce_last_rel'], 3)} | {fmt(r['relational_bce_last_rel'], 3)} | {ari} | "
                f"{fmt(r['bce_last_rel_678'], 3)} | {fmt(r.get('rollout_real_last'), 0)} | "
                f"{fmt(r.get('rollout_sim_last'), 0)} |")
  return rows


def write_budget_report(records: Sequence[dict], out_dir: str) -> dict:
  """``budget.json``, ``budget.md`` and ``validation_curves.png`` in ``out_dir``."""
  from rnem_jax import visualize

  os.makedirs(out_dir, exist_ok=True)
  paths = {name: os.path.join(out_dir, name)
           for name in ("budget.json", "budget.md", "validation_curves.png")}
  with open(paths["budget.json"], "w") as f:
    json.dump(list(records), f, indent=2)
  with open(paths["budget.md"], "w") as f:
    f.write("# Training budget: the same runs evaluated after different numbers of steps\n\n"
            "BCE of the last predicted frame as a ratio to the copy-last-frame baseline (lower "
            "is better); rollout BCE in nats (5 real + 10 simulated steps). The evaluated "
            "checkpoint is the best-validation one among those trained.\n\n"
            + "\n".join(budget_table(records)) + "\n\n![validation loss](validation_curves.png)\n")
  visualize.validation_curves_figure(records).savefig(paths["validation_curves.png"])
  return paths


def _curve_stats(curves: Sequence[Sequence[Optional[float]]]) -> dict:
  """Per-step mean and std over runs, and ``seeds_per_step``: how many runs measured each step.

  A step no run could measure (None: no ball kept, say) stays None; a step one run measured
  has std 0, like a one-seed scalar.
  """
  c = np.asarray([[np.nan if v is None else v for v in curve] for curve in curves], np.float64)
  count = np.sum(~np.isnan(c), 0)
  with np.errstate(invalid="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN steps, one-value ddof=1
    mean = np.nanmean(c, 0)
    std = np.where(count > 1, np.nanstd(c, 0, ddof=1), np.where(count == 1, 0.0, np.nan))
  none = lambda a: [None if np.isnan(v) else float(v) for v in a]
  return {"mean": none(mean), "std": none(std), "seeds": int(len(c)),
          "seeds_per_step": count.astype(int).tolist()}


def step_stat(curve: dict, i: int) -> Optional[dict]:
  """Step ``i`` of a per-step curve's stats as a scalar stat (``seeds``: the runs that measured
  it), or None where no run did."""
  if curve["mean"][i] is None:
    return None
  seeds = curve["seeds_per_step"][i] if "seeds_per_step" in curve else curve["seeds"]
  return {"mean": curve["mean"][i], "std": curve["std"][i] or 0.0, "seeds": int(seeds)}


# ---------------------------------------------------------------------------
# The report: tables and the paper's claims (paper §4 and Figures 3-6).

def ordered(summary: dict) -> list[str]:
  """Config names of ``summary`` in report order (unknown models last)."""
  return in_report_order(summary)


def _pm(stat: Optional[dict], digits: int = 1) -> str:
  if not stat:
    return "–"
  if stat["seeds"] > 1:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
  return f"{stat['mean']:.{digits}f}"


def metrics_table(summary: dict, suffix: str = "") -> list[str]:
  """Markdown rows: absolute BCEs beside their ratio to the copy baseline, and ARI."""
  rows = ["| model | seeds | BCE last | / baseline | relational BCE last | / baseline | "
          "ARI seq | ARI last |", "|---|---|---|---|---|---|---|---|"]
  for name in ordered(summary):
    m = summary[name]
    if f"bce_last{suffix}" not in m:
      continue
    ari = lambda k: _pm(m.get(k + suffix), 3) if is_mixture(name) else "–"
    rows.append(f"| {label(name)} | {m['bce_last' + suffix]['seeds']} | "
                f"{_pm(m.get('bce_last' + suffix))} | {_pm(m.get('bce_last_rel' + suffix), 3)} | "
                f"{_pm(m.get('relational_bce_last' + suffix), 2)} | "
                f"{_pm(m.get('relational_bce_last_rel' + suffix), 3)} | "
                f"{ari('ari_seq')} | {ari('ari_last')} |")
  first = next((summary[n] for n in ordered(summary) if f"baseline_bce_last{suffix}" in summary[n]),
               None)
  if first:
    rel = first.get("baseline_relational_bce_last" + suffix)   # no collisions in Atari
    rows += ["", f"Copy-last-frame baseline: BCE {first['baseline_bce_last' + suffix]['mean']:.1f}"
             + (f", relational BCE {rel['mean']:.2f}" if rel else "")
             + " (the same test data for every model)."]
  return rows


def split_table(summary: dict, suffix: str = "") -> list[str]:
  """Markdown rows: whether the components split the scene, on the target frame's on-pixels
  (``evaluate``'s ``fg_confidence`` and ``components_used``; no ground truth needed)."""
  rows = ["| model | seeds | max_k γ on the frame, last step | components used, last step |",
          "|---|---|---|---|"]
  for name in ordered(summary):
    m = summary[name]
    if not is_mixture(name) or f"fg_confidence_last{suffix}" not in m:
      continue
    rows.append(f"| {label(name)} | {m['fg_confidence_last' + suffix]['seeds']} | "
                f"{_pm(m['fg_confidence_last' + suffix], 3)} | "
                f"{_pm(m.get('components_used_last' + suffix), 2)} |")
  if len(rows) == 2:
    return []
  return rows + ["", "The symmetric solution (every component renders the whole frame) gives "
                 "1/K and K; each on-pixel held by one component gives 1 and the number of "
                 "components in use."]


def rollout_table(summary: dict, steps: Sequence[int] = (1, 5, 6, 8, 10, 15)) -> list[str]:
  """Markdown rows: per-step rollout BCE (1-based predicted frame) mean ± std."""
  names = [n for n in ordered(summary) if "rollout_bce" in summary[n]]
  if not names:
    return []
  n_steps = len(summary[names[0]]["rollout_bce"]["mean"])
  steps = [s for s in steps if s <= n_steps]
  n_real = summary[names[0]]["rollout_bce"]["num_real_steps"]
  head = [f"{s}{' (sim)' if s > n_real else ''}" for s in steps]
  rows = ["| model | seeds | " + " | ".join(head) + " |", "|---" * (len(steps) + 2) + "|"]
  for name in names:
    r = summary[name]["rollout_bce"]
    cells = [_pm(step_stat(r, s - 1), 0) for s in steps]
    rows.append(f"| {label(name)} | {r['seeds']} | " + " | ".join(cells) + " |")
  refs = rollout_references(summary)
  for key, text in ROLLOUT_REFERENCES:
    ref = refs.get(key)
    if ref:
      rows.append(f"| *{text}* | | " + " | ".join(f"{ref[s - 1]:.0f}" for s in steps) + " |")
  return rows


def simulation_table(summary: dict, sim_steps: Sequence[int] = (1, 5, 10)) -> list[str]:
  """Markdown rows: at simulated steps ``sim_steps`` (1 = the first simulated frame), the rollout
  BCE, the share of balls still rendered and the position error (px) of those rendered."""
  names = [n for n in ordered(summary) if "rollout_balls_kept" in summary[n]]
  if not names:
    return []
  n_real = summary[names[0]]["rollout_bce"]["num_real_steps"]
  n_steps = len(summary[names[0]]["rollout_bce"]["mean"])
  sim_steps = [s for s in sim_steps if n_real + s <= n_steps]
  cols = [("BCE", "rollout_bce", 0), ("balls kept", "rollout_balls_kept", 2),
          ("ball mass", "rollout_ball_mass", 2),
          ("position error px", "rollout_position_error_px", 1)]
  head = [f"{what} @ sim {s}" for what, _, _ in cols for s in sim_steps]
  rows = ["| model | seeds | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
  for name in names:
    cells = []
    for _, key, digits in cols:
      r = summary[name].get(key)
      if r is None:   # runs evaluated before the curve existed
        cells += ["–"] * len(sim_steps)
        continue
      for s in sim_steps:
        cells.append(_pm(step_stat(r, n_real + s - 1), digits))
    rows.append(f"| {label(name)} | {summary[name]['rollout_bce']['seeds']} | "
                + " | ".join(cells) + " |")
  return rows + ["", "Balls kept: the share of true balls whose disc the predicted frame still "
                 "covers (mean intensity > 0.5); ball mass: that mean intensity on the true discs "
                 "(a fading ball loses mass before it is lost); position error: the distance "
                 "from the true "
                 "centre of the predicted intensity's centroid near each kept ball "
                 "(`rnem_jax.objects`)."]


def occlusion_table(summary: dict) -> list[str]:
  """Markdown rows of the object-permanence metrics (curtain runs with ``occlusion.json``)."""
  names = [n for n in ordered(summary) if "hidden_full_prob" in summary[n]]
  if not names:
    return []
  cols = [("visible_prob", "visible balls"), ("hidden_partial_prob", "hidden part of a visible ball"),
          ("hidden_full_prob", "fully hidden ball"), ("empty_curtain_prob", "curtain, no ball"),
          ("reappearing_prob", "ball coming out"),
          ("reappearing_bce_per_pixel", "BCE / pixel, ball coming out")]
  rows = ["| model | seeds | " + " | ".join(c for _, c in cols) + " |",
          "|---" * (len(cols) + 2) + "|"]
  for name in names:
    m = summary[name]
    rows.append(f"| {label(name)} | {m['hidden_full_prob']['seeds']} | " +
                " | ".join(_pm(m.get(k), 2 if "bce" in k else 3) for k, _ in cols) + " |")
  base = summary[names[0]].get("reappearing_baseline_bce_per_pixel")
  rows += ["", "Every column but the first is a pixel the frame shows as 0: the curtain hides it, "
           "so drawing a ball there costs BCE; a model that still represents the ball draws it "
           "anyway (the curtain's empty pixels are the control). \"Ball coming out\": the visible "
           "pixels of a ball that was entirely hidden in the previous frame (and seen before)"
           + (f"; the copy baseline pays {base['mean']:.2f} nats per pixel there." if base else ".")]
  return rows


def rollout_references(summary: dict) -> dict[str, list[float]]:
  """The data-only rollout curves (``ROLLOUT_REFERENCES``), from any group that has each:
  they are the same for every model, but runs made before a curve existed lack it."""
  refs = {}
  for name in ordered(summary):
    for key, curve in summary[name].get("rollout_references", {}).items():
      refs.setdefault(key, curve)
  return refs


def _find(summary: dict, model: str) -> Optional[dict]:
  return next((summary[n] for n in summary if model_of(n) == model), None)


def _compare(summary: dict, better: str, worse: str, metric: str) -> Optional[tuple[bool, str]]:
  """Is ``better``'s mean ``metric`` lower than ``worse``'s? With the gap in units of spread."""
  a, b = _find(summary, better), _find(summary, worse)
  if not a or not b or metric not in a or metric not in b:
    return None
  ma, mb = a[metric], b[metric]
  gap = mb["mean"] - ma["mean"]
  spread = float(np.hypot(ma["std"], mb["std"]))
  if ma["seeds"] > 1 and mb["seeds"] > 1 and spread > 0:
    strength = f"gap {gap:+.3g} = {gap / spread:+.1f}σ"
  else:
    strength = f"gap {gap:+.3g} (no spread: 1 seed)"
  return gap > 0, (f"{MODEL_LABELS[better]} {_pm(ma, 3)} vs {MODEL_LABELS[worse]} {_pm(mb, 3)}; {strength}")


EXPERIMENTS = {"bouncing_balls": "balls", "curtain": "curtain", "space_invaders": "atari"}
# experiment -> (report title, test-set heading, test-set label under the Figure 3 bars)
EXPERIMENT_NAMES = {
    "balls": ("CPU reproduction: summary", "4-ball test set", "4 balls"),
    "curtain": ("CPU reproduction, occlusion (curtain): summary",
                "Curtain test set (3 balls, occluder)", "curtain (3 balls)"),
    "atari": ("CPU reproduction, Space Invaders: summary", "Space Invaders test set",
              "Space Invaders"),
}
# Paper §4, "Hidden Factors" (numbers in the text; 64x64, paper scale): test BCE / relational BCE.
PAPER_CURTAIN = {"rnem": (46.22, 2.33), "lstm": (59.32, 2.72), "rnn": (94.64, 4.14)}


def experiment_of(workdirs: Sequence[str]) -> str:
  """``"balls"``, ``"curtain"`` or ``"atari"``: the experiment the runs' dataset belongs to.

  Raises ValueError for runs of different experiments (their claims differ)."""
  kinds = set()
  for wd in workdirs:
    config = _read(os.path.join(wd, "config.json")) or {}
    family = str(config.get("dataset", "")).split("/", 1)[0]
    kinds.add(EXPERIMENTS.get(family, "balls"))
  if len(kinds) > 1:
    raise ValueError(f"runs of different experiments {sorted(kinds)}: summarise them apart")
  return kinds.pop() if kinds else "balls"


# The paper's claims (§4) as data, per experiment: (kind, arguments). Kinds:
#   lower: (better, worse, metric)            better's mean metric < worse's
#   at_least: (model, metric, threshold, text) model's mean metric >= threshold
#   degrades_most: (model, metric_4, metric_678) the largest ratio 6-8 balls / 4 balls
#   rollout: (better, worse)                  lower rollout BCE at every simulated step
#   kept: (better, worse, step)               more balls kept at simulated step `step`
#   ratio_to_paper: (better, worse, metric, i) lower, with our ratio beside the paper's
# The claim's text is derived from its kind; claim numbers follow docs/reproduction.md.
CLAIMS = {
    "balls": (
        *[("lower", "1. 4 balls", ("rnem", other, metric))
          for other in ("rnn_em", "lstm", "rnn")
          for metric in ("bce_last_rel", "relational_bce_last_rel")],
        ("at_least", "2.", ("rnem", "ari_last", 0.75, "R-NEM (K=5) ARI last ≈ 0.8 (≥ 0.75)")),
        ("higher", "2.", ("rnem_k8", "rnem", "ari_last")),
        ("lower", "2.", ("rnem_k8", "rnem", "relational_bce_last_rel")),
        *[("lower", "3. 6-8 balls", ("rnem", other, "bce_last_rel_678"))
          for other in ("rnn_em", "lstm", "rnn", "rnem_noatt")],
        ("degrades_most", "3.", ("lstm", "bce_last_rel", "bce_last_rel_678")),
        *[("rollout", "4.", pair) for pair in (("rnem", "rnn_em"), ("rnn_em", "rnn"),
                                              ("rnem", "rnn"))],
        # simulation-trained variants (issue: simulation that holds its objects)
        *[("rollout", "4. sim-trained", pair) for pair in (
            ("rnem_sim", "rnn_em_sim"), ("rnn_em_sim", "rnn_sim"), ("rnem_sim", "rnn_sim"))],
        *[("kept", "4. sim-trained", (better, worse, step))
          for better, worse in (("rnem_sim", "rnn_em_sim"), ("rnem_sim", "rnn_sim"))
          for step in (1, 5, 10)],
    ),
    "curtain": (
        *[("ratio_to_paper", "5. curtain", (better, worse, metric, i))
          for better, worse in (("rnem", "lstm"), ("lstm", "rnn"), ("rnem", "rnn"))
          for i, metric in enumerate(("bce_last_rel", "relational_bce_last_rel"))],
        # object permanence (occlusion.json): higher is better
        *[("higher", "5. curtain", ("rnem", other, metric, what))
          for other in ("lstm", "rnn")
          for metric, what in (("hidden_partial_prob", "completes partly hidden balls"),
                               ("hidden_full_prob", "keeps drawing fully hidden balls"),
                               ("reappearing_prob", "predicts where hidden balls come out"))],
    ),
}
METRIC_WORDS = {"bce_last_rel": "BCE/baseline", "relational_bce_last_rel":
                "relational BCE/baseline", "bce_last_rel_678": "BCE/baseline",
                "ari_last": "ARI last"}
CURTAIN_WORDS = {"bce_last_rel": "BCE", "relational_bce_last_rel": "relational BCE"}


def _check(summary: dict, kind: str, prefix: str, args: tuple) -> tuple[str, Optional[bool], str]:
  """One claim of ``CLAIMS``: ``(text, holds (None = not run), evidence)``."""
  L = MODEL_LABELS
  if kind in ("lower", "higher") and prefix.startswith("5."):
    better, other, metric, what = args
    text = f"{prefix}: {L[better]} {what} more than {L[other]}"
    c = _compare(summary, other, better, metric)
  elif kind == "lower":
    better, worse, metric = args
    subject = "R-NEM K=8" if better == "rnem_k8" else L[better]
    text = (f"{prefix}: {subject} {METRIC_WORDS[metric]} < {L[worse]}"
            if prefix != "2." else f"2. {subject} {METRIC_WORDS[metric]} < R-NEM K=5")
    c = _compare(summary, better, worse, metric)
  elif kind == "higher":
    better, worse, metric = args
    text = f"2. R-NEM K=8 {METRIC_WORDS[metric]} > R-NEM K=5"
    c = _compare(summary, worse, better, metric)
  elif kind == "ratio_to_paper":
    better, worse, metric, i = args
    text = f"{prefix}: {L[better]} {CURTAIN_WORDS[metric]} < {L[worse]}"
    c = _compare(summary, better, worse, metric)
    if c is not None:
      ours = _find(summary, better)[metric]["mean"] / _find(summary, worse)[metric]["mean"]
      paper = PAPER_CURTAIN[better][i] / PAPER_CURTAIN[worse][i]
      c = (c[0], f"{c[1]}; ratio {ours:.2f} (paper {paper:.2f})")
  elif kind == "at_least":
    model, metric, threshold, text = args
    text = f"{prefix} {text}"
    r = _find(summary, model)
    c = None if not r or metric not in r else (
        r[metric]["mean"] >= threshold, f"{L[model]} {_pm(r[metric], 3)}")
  elif kind == "degrades_most":
    model, m4, m678 = args
    text = f"{prefix} LSTM degrades most from 4 to 6-8 balls (BCE/baseline ratio 6-8 ÷ 4)"
    degr = {m: s[m678]["mean"] / s[m4]["mean"]
            for m, s in ((m, _find(summary, m)) for m in PAPER_MODELS)
            if s and m678 in s and m4 in s}
    c = None if model not in degr or len(degr) < 2 else (
        max(degr, key=degr.get) == model,
        ", ".join(f"{L[m]} {v:.2f}" for m, v in degr.items()))
  elif kind == "rollout":
    better, worse = args
    a, b = _find(summary, better), _find(summary, worse)
    if not a or not b or "rollout_bce" not in a or "rollout_bce" not in b:
      return f"{prefix} rollout: {L[better]} < {L[worse]} at every step", None, "not run"
    text = f"{prefix} rollout: {L[better]} < {L[worse]} at every simulated step"
    n_real = a["rollout_bce"]["num_real_steps"]
    ma, mb = np.asarray(a["rollout_bce"]["mean"]), np.asarray(b["rollout_bce"]["mean"])
    wins = int(np.sum(ma[n_real:] < mb[n_real:]))
    c = (wins == len(ma) - n_real, f"lower at {wins} of {len(ma) - n_real} simulated steps; "
         f"last step {ma[-1]:.0f} vs {mb[-1]:.0f}")
  elif kind == "kept":
    better, worse, step = args
    text = f"{prefix}: {L[better]} keeps more balls than {L[worse]} at simulated step {step}"
    a, b = _find(summary, better), _find(summary, worse)
    c = None
    if a and b and "rollout_balls_kept" in a and "rollout_balls_kept" in b:
      i = a["rollout_bce"]["num_real_steps"] + step - 1
      ka, kb = (r["rollout_balls_kept"] for r in (a, b))
      if i >= len(ka["mean"]) or ka["mean"][i] is None or kb["mean"][i] is None:
        return text, None, "not measured at this step"
      c = (ka["mean"][i] > kb["mean"][i],
           f"{L[better]} {_pm(step_stat(ka, i), 2)} vs {L[worse]} {_pm(step_stat(kb, i), 2)}")
  else:
    raise ValueError(f"unknown claim kind {kind!r}")
  return (text, None, "not run") if c is None else (text, c[0], c[1])


def claims(summary: dict, experiment: str = "balls") -> list[tuple[str, Optional[bool], str]]:
  """The paper's claims for ``experiment`` (``experiment_of``; ``CLAIMS``), each
  ``(claim, holds (None = not run), evidence)``. Space Invaders' claim is visual only (no
  ground-truth groups), so it has none here."""
  present = {model_of(n) for n in summary}
  return [_check(summary, kind, prefix, args)
          for kind, prefix, args in CLAIMS.get(experiment, ())
          # the simulation-trained variants' claims only where one of them was run
          if not set(args[:2]) & set(MODEL_TRAIN_SIM) or present & set(args[:2])]


def summary_markdown(summary: dict, title: str = "CPU reproduction: summary",
                     experiment: str = "balls") -> str:
  """The report body: tables (mean ± std over seeds) and the claims table."""
  lines = [f"# {title}", "", "Mean ± standard deviation over seeds (a single value: one seed). "
           "BCE in nats summed over the pixels of the last predicted frame; `/ baseline` is the "
           "ratio to the copy-last-frame baseline (lower is better).", ""]
  lines += [f"## {EXPERIMENT_NAMES[experiment][1]}", ""] + metrics_table(summary) + [""]
  split = [] if any("ari_last" in m for m in summary.values()) else split_table(summary)
  if split:   # no ground-truth groups, but the split metrics
    lines += ["### Grouping without ground truth", ""] + split + [""]
  if any("bce_last_678" in m for m in summary.values()):
    lines += ["## 6-8-ball test set (K=8 for the mixture models)", ""]
    lines += metrics_table(summary, "_678") + [""]
  rows = occlusion_table(summary)
  if rows:
    lines += ["## Object permanence (mean predicted probability max_k ψ per pixel)", ""]
    lines += rows + [""]
  rows = rollout_table(summary)
  if rows:
    lines += ["## Rollout: per-step BCE (5 real + 10 simulated steps)", ""] + rows + [""]
  rows = simulation_table(summary)
  if rows:
    lines += ["## Simulation: what happens to the balls", ""] + rows + [""]
  checked = claims(summary, experiment)
  if not checked:
    return "\n".join(lines) + "\n"
  lines += ["## The paper's claims on our runs", "", "| claim | holds | evidence |",
            "|---|---|---|"]
  for claim, ok, evidence in checked:
    mark = "not run" if ok is None else ("yes" if ok else "**no**")
    lines.append(f"| {claim} | {mark} | {evidence} |")
  return "\n".join(lines) + "\n"


def write_report(summary: dict, out_dir: str, experiment: str = "balls",
                 title: str = "") -> dict:
  """``summary.md``, ``figure3_seeds.png`` and ``rollout_seeds.png`` in ``out_dir``."""
  from rnem_jax import visualize

  os.makedirs(out_dir, exist_ok=True)
  paths = {"summary_md": os.path.join(out_dir, "summary.md")}
  with open(paths["summary_md"], "w") as f:
    f.write(summary_markdown(summary, title or EXPERIMENT_NAMES[experiment][0], experiment))
  paths["figure3"] = os.path.join(out_dir, "figure3_seeds.png")
  visualize.figure3_summary(summary, test_set=EXPERIMENT_NAMES[experiment][2]).savefig(paths["figure3"])
  if any("rollout_bce" in m for m in summary.values()):
    paths["rollout"] = os.path.join(out_dir, "rollout_seeds.png")
    visualize.rollout_summary_figure(summary, rollout_references(summary)).savefig(paths["rollout"])
  if any("rollout_ablation" in m for m in summary.values()):
    paths["rollout_ablation"] = os.path.join(out_dir, "rollout_ablation.png")
    visualize.rollout_ablation_figure(summary).savefig(paths["rollout_ablation"])
  return paths


def _flags():
  """The command line's flags (absl, as every rnem_jax command), on their own FlagValues so
  that ``main`` can be called more than once in a process."""
  from absl import flags

  fv = flags.FlagValues()
  flags.DEFINE_list("runs", None, "Run directories.", flag_values=fv, required=True)
  flags.DEFINE_string("out", "", "Summary JSON to write.", flag_values=fv)
  flags.DEFINE_string("report_dir", "", "Also write summary.md and the seed-averaged figures "
                      "here.", flag_values=fv)
  flags.DEFINE_list("pool", [], "Summary JSONs of other (disjoint) seeds of the same models, "
                    "merged into this summary exactly (see pool).", flag_values=fv)
  flags.DEFINE_string("budget_dir", "", "Write budget.{json,md} and validation_curves.png "
                      "here: one row per run (e.g. one seed after 800 and after 4000 steps), "
                      "no averaging.", flag_values=fv)
  return fv


def main(argv=None) -> None:
  import sys

  from absl import flags

  fv = _flags()
  argv = sys.argv[1:] if argv is None else argv
  if {"--help", "-h", "--helpfull"} & set(argv):
    print(f"{__doc__}\nflags:\n{fv.get_help()}")
    return
  try:
    fv(["rnem_jax.summarize", *argv])
  except flags.Error as e:
    sys.exit(f"error: {e} (python -m rnem_jax.summarize --help)")
  workdirs = [d for d in fv.runs if d]
  if not (fv.out or fv.budget_dir):
    sys.exit("error: give --out (the seed summary) or --budget_dir (the per-run budget table)")
  if fv.budget_dir:
    for path in write_budget_report(budget_records(workdirs), fv.budget_dir).values():
      print(f"wrote {path}")
  if not fv.out:
    return
  summary = summarize(workdirs)
  for path in fv.pool:
    if not os.path.exists(path):
      sys.exit(f"error: --pool: no such file {path}")
    summary = pool(_read(path), summary)
  os.makedirs(os.path.dirname(os.path.abspath(fv.out)), exist_ok=True)
  tmp = fv.out + ".tmp"
  with open(tmp, "w") as f:
    json.dump(summary, f, indent=2)
  os.replace(tmp, fv.out)
  print(f"wrote {fv.out}: {', '.join(summary)}")
  if fv.report_dir:
    for path in write_report(summary, fv.report_dir, experiment_of(workdirs)).values():
      print(f"wrote {path}")


if __name__ == "__main__":
  main()
