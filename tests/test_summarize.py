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
  with pytest.raises(ValueError, match="the runs of rnem_small on metrics.json: T differs"):
    summarize.summarize(runs)
  with pytest.raises(ValueError, match="not a run directory"):
    summarize.summarize([str(tmp_path)])


@pytest.mark.parametrize("field, value", [("dataset", "bouncing_balls/balls678mass32_small"),
                                          ("T", 20), ("num_sequences", 100), ("split", "valid")])
def test_models_scored_on_different_test_sets_are_refused(tmp_path, field, value):
  """Models share one table only if they were scored on the same test set, the same way; K may
  differ (R-NEM K=8 is a model of Figure 3)."""
  a = _run(tmp_path / "a", "rnem_small", {"bce_last": 90.0})
  b = _run(tmp_path / "b", "rnem_k8_small", {"bce_last": 91.0})
  record = json.loads((tmp_path / "b" / "metrics.json").read_text())
  (tmp_path / "b" / "metrics.json").write_text(json.dumps({**record, "K": 8}))
  assert set(summarize.summarize([a, b])) == {"rnem_small", "rnem_k8_small"}
  (tmp_path / "b" / "metrics.json").write_text(json.dumps({**record, field: value}))
  with pytest.raises(ValueError, match=f"rnem_small on metrics.json: {field} differs"):
    summarize.summarize([a, b])


def _model_runs(tmp_path, values):
  """values: model -> list over seeds of (bce_rel, rel_rel, ari, bce_rel_678, rollout)."""
  runs = []
  for model, seeds in values.items():
    for s, (b, r, a, b678, roll) in enumerate(seeds):
      m = {"bce_last": 100 * b, "bce_last_rel": b, "relational_bce_last": 10 * r,
           "relational_bce_last_rel": r, "ari_seq": a, "ari_last": a, "baseline_bce_last": 100.0,
           "baseline_relational_bce_last": 10.0}
      path = _run(tmp_path / f"{model}_s{s}", f"{model}_cpu", m, rollout=roll,
                  ext={"bce_last": 200 * b678, "bce_last_rel": b678})
      (tmp_path / f"{model}_s{s}" / "rollout_ablation.json").write_text(json.dumps(
          {"bce_per_step": {"simulated": roll, "real": [1.0, 1.0, 1.0]}}))
      runs.append(path)
  return runs


def test_claims_are_checked_against_the_means(tmp_path):
  runs = _model_runs(tmp_path, {
      "rnem": [(0.10, 0.20, 0.80, 0.12, [1.0, 1.0, 5.0]), (0.12, 0.22, 0.76, 0.14, [1.0, 1.0, 7.0])],
      "rnn_em": [(0.13, 0.19, 0.70, 0.15, [1.0, 1.0, 4.0]), (0.13, 0.21, 0.72, 0.15,
                                                            [1.0, 1.0, 4.0])],
      "lstm": [(0.15, 0.30, 0.0, 0.40, [1.0, 1.0, 9.0])],
      "rnn": [(0.20, 0.35, 0.0, 0.25, [1.0, 1.0, 3.0])],
  })
  s = summarize.summarize(runs)
  assert s["rnem_cpu"]["rollout_ablation"]["simulated"]["mean"] == [1.0, 1.0, 6.0]
  assert s["rnem_cpu"]["rollout_ablation"]["real"]["seeds"] == 2
  claims = {c: (ok, ev) for c, ok, ev in summarize.claims(s)}
  assert claims["1. 4 balls: R-NEM BCE/baseline < RNN-EM"][0] is True
  # relational: R-NEM 0.21 vs RNN-EM 0.20 -> refuted; the gap in sigma uses both spreads
  ok, ev = claims["1. 4 balls: R-NEM relational BCE/baseline < RNN-EM"]
  assert ok is False
  sd = np.std([0.20, 0.22], ddof=1)
  assert f"{-0.01 / np.hypot(sd, sd):+.1f}σ" in ev
  assert "1 seed" in claims["1. 4 balls: R-NEM BCE/baseline < LSTM"][1]
  assert claims["2. R-NEM (K=5) ARI last ≈ 0.8 (≥ 0.75)"][0] is True
  assert claims["2. R-NEM K=8 ARI last > R-NEM K=5"] == (None, "not run")
  # degradation 6-8 / 4 balls: LSTM 0.40/0.15 = 2.67 is the worst
  assert claims["3. LSTM degrades most from 4 to 6-8 balls (BCE/baseline ratio 6-8 ÷ 4)"][0]
  assert claims["3. 6-8 balls: R-NEM BCE/baseline < R-NEM no att"] == (None, "not run")
  # rollout: R-NEM (mean 6) worse than RNN-EM (4) and RNN (3) at the only simulated step
  assert claims["4. rollout: R-NEM < RNN-EM at every simulated step"][0] is False
  assert claims["4. rollout: R-NEM < RNN at every simulated step"][0] is False
  md = summarize.summary_markdown(s)
  assert "| R-NEM | 2 | 11.0 ± 1.4 | 0.110 ± 0.014 |" in md
  assert md.index("| R-NEM |") < md.index("| RNN-EM |") < md.index("| LSTM |") < md.index("| RNN |")


def test_our_variants_are_tabulated_but_not_claimed(tmp_path):
  """The noisy-gamma variants sit after the paper's models and never enter its claims."""
  runs = _model_runs(tmp_path, {
      "rnem": [(0.10, 0.20, 0.80, 0.12, [1.0, 1.0, 5.0])],
      "lstm": [(0.15, 0.30, 0.0, 0.40, [1.0, 1.0, 9.0])],
      # degrades far more than LSTM (4.0 / 0.1): would flip claim 3 if it counted
      "rnem_noisy_gamma": [(0.10, 0.20, 0.75, 0.40, [1.0, 1.0, 2.0])],
  })
  s = summarize.summarize(runs)
  claims = {c: ok for c, ok, _ in summarize.claims(s)}
  assert claims["3. LSTM degrades most from 4 to 6-8 balls (BCE/baseline ratio 6-8 ÷ 4)"] is True
  assert not any("noisy" in c for c in claims)
  md = summarize.summary_markdown(s)
  assert md.index("| R-NEM |") < md.index("| LSTM |") < md.index("| R-NEM noisy γ |")


def test_report_files(tmp_path):
  runs = _model_runs(tmp_path, {"rnem": [(0.1, 0.2, 0.8, 0.1, [1.0, 2.0, 3.0])],
                                "rnn": [(0.2, 0.3, 0.0, 0.3, [1.0, 2.0, 2.5])]})
  paths = summarize.write_report(summarize.summarize(runs), str(tmp_path / "report"))
  assert set(paths) == {"summary_md", "figure3", "rollout", "rollout_ablation"}
  for key in ("figure3", "rollout", "rollout_ablation"):
    with open(paths[key], "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_runs_not_evaluated_yet_are_left_out(tmp_path):
  done = _run(tmp_path / "a0", "rnem_cpu", {"bce_last": 90.0})
  training = tmp_path / "b0"
  training.mkdir()
  (training / "config.json").write_text(json.dumps({"name": "rnn_cpu"}))
  assert set(summarize.summarize([done, str(training)])) == {"rnem_cpu"}


def test_rollout_references_come_from_any_run_that_has_them(tmp_path):
  old = _run(tmp_path / "a0", "rnem_cpu", {"bce_last": 90.0}, rollout=[1.0, 2.0, 3.0])
  new = _run(tmp_path / "a1", "rnem_cpu", {"bce_last": 91.0}, rollout=[1.0, 2.0, 5.0])
  rec = json.loads((tmp_path / "a1" / "rollout.json").read_text())
  rec["blank_bce_per_step"] = [7.0, 7.0, 7.0]
  (tmp_path / "a1" / "rollout.json").write_text(json.dumps(rec))
  s = summarize.summarize([old, new])
  assert s["rnem_cpu"]["rollout_references"] == {"blank_bce_per_step": [7.0, 7.0, 7.0]}
  assert "| *empty frame* | | 7 |" in summarize.summary_markdown(s)   # step 1 of 3 shown


def test_curtain_claims_and_the_experiment_of_runs(tmp_path):
  runs = _model_runs(tmp_path, {"rnem": [(0.10, 0.20, 0.8, 0.1, [1.0, 2.0, 3.0])],
                                "lstm": [(0.20, 0.15, 0.0, 0.3, [1.0, 2.0, 2.5])],
                                "rnn": [(0.40, 0.30, 0.0, 0.3, [1.0, 2.0, 2.5])]})
  for r in runs:
    cfg = json.loads(open(f"{r}/config.json").read())
    open(f"{r}/config.json", "w").write(json.dumps({**cfg, "dataset": "curtain/balls3curtain32_cpu"}))
  assert summarize.experiment_of(runs) == "curtain"
  for r, full in zip(runs, (0.30, 0.10, 0.05)):   # rnem, lstm, rnn: R-NEM keeps hidden balls
    open(f"{r}/occlusion.json", "w").write(json.dumps(
        {"dataset": "curtain/balls3curtain32_cpu", "K": 5, "T": 15, "visible_prob": 0.5,
         "hidden_partial_prob": 0.2, "hidden_full_prob": full, "empty_curtain_prob": 0.01,
         "reappearing_prob": 0.1, "reappearing_bce_per_pixel": 4.0,
         "reappearing_baseline_bce_per_pixel": 13.8}))
  s = summarize.summarize(runs)
  assert s["rnem_cpu"]["hidden_full_prob"] == {"mean": 0.30, "std": 0.0, "seeds": 1}
  claims = {c: (ok, ev) for c, ok, ev in summarize.claims(s, "curtain")}
  assert claims["5. curtain: R-NEM BCE < LSTM"][0] is True
  assert claims["5. curtain: R-NEM relational BCE < LSTM"][0] is False   # 0.20 vs 0.15
  assert claims["5. curtain: LSTM BCE < RNN"][0] is True
  # ours 0.10 / 0.20 beside the paper's 46.22 / 59.32
  assert "ratio 0.50 (paper 0.78)" in claims["5. curtain: R-NEM BCE < LSTM"][1]
  assert not any(c.startswith("1.") for c in claims)
  assert claims["5. curtain: R-NEM keeps drawing fully hidden balls more than LSTM"][0] is True
  assert claims["5. curtain: R-NEM predicts where hidden balls come out more than RNN"][0] is False
  md = summarize.summary_markdown(s, experiment="curtain")
  assert "Curtain test set" in md and "4-ball" not in md and "5. curtain" in md
  assert "| R-NEM | 1 | 0.500 | 0.200 | 0.300 | 0.010 | 0.100 | 4.00 |" in md
  assert "pays 13.80 nats per pixel" in md
  assert summarize.claims(s, "atari") == []
  balls = _run(tmp_path / "x0", "rnem_cpu", {"bce_last": 1.0})
  open(f"{balls}/config.json", "w").write(json.dumps(
      {"name": "rnem_cpu", "dataset": "bouncing_balls/balls4mass32_cpu"}))
  with pytest.raises(ValueError, match="different experiments"):
    summarize.experiment_of(runs + [balls])


def test_report_of_runs_without_collisions_or_groups(tmp_path):
  """Space Invaders: BCE only (no collision flags, no ground-truth groups)."""
  run = _run(tmp_path / "a0", "rnem_small", {"bce_last": 2200.0, "bce_last_rel": 0.8,
                                             "baseline_bce_last": 2750.0})
  open(f"{run}/config.json", "w").write(json.dumps(
      {"name": "rnem_small", "dataset": "space_invaders/atari_small"}))
  assert summarize.experiment_of([run]) == "atari"
  s = summarize.summarize([run])
  md = summarize.summary_markdown(s, experiment="atari")
  assert "| R-NEM | 1 | 2200.0 | 0.800 | – | – |" in md
  assert "Copy-last-frame baseline: BCE 2750.0 (the same" in md and "claims" not in md
  paths = summarize.write_report(s, str(tmp_path / "report"), "atari")
  assert set(paths) == {"summary_md", "figure3"}
  assert "Grouping without ground truth" not in md        # no split metrics in these runs
  # with the split metrics (evaluate's fg_confidence, components_used): a table of them,
  # two seeds of R-NEM as mean ± std, the A1 diagnostic under its own label
  runs = []
  for i, (name, conf, used) in enumerate([("rnem_small", 0.5, 3.9), ("rnem_small", 0.6, 3.7),
                                          ("rnem_reference_actions_small", 0.55, 3.95)]):
    runs.append(_run(tmp_path / f"b{i}", name, {"bce_last": 2000.0, "bce_last_rel": 0.7,
                                                "fg_confidence_last": conf,
                                                "components_used_last": used}))
  md = summarize.summary_markdown(summarize.summarize(runs), experiment="atari")
  assert "### Grouping without ground truth" in md
  assert "| R-NEM | 2 | 0.550 ± 0.071 | 3.80 ± 0.14 |" in md
  assert "| R-NEM, reference action tiling (A1) | 1 | 0.550 | 3.95 |" in md


def _budget_run(path, name, seed, steps, valid, evaluated, metrics, resumed_twice_at=None):
  """A run trained to ``steps`` whose log holds ``valid`` ({step: loss}), evaluated at
  ``evaluated``; ``resumed_twice_at`` logs that step a second time with another loss."""
  _run(path, name, {"checkpoint_step": evaluated, **metrics}, rollout=[5.0, 7.0, 30.0, 40.0],
       ext={"bce_last_rel": 2 * metrics["bce_last_rel"]})
  (path / "config.json").write_text(json.dumps({"name": name, "seed": seed}))
  for step in (steps // 2, steps):
    (path / "checkpoints" / "latest" / str(step)).mkdir(parents=True)
  lines = [{"step": s, "kind": "train", "loss": 1e6} for s in valid]
  lines += [{"step": s, "kind": "valid", "loss": v} for s, v in valid.items()]
  if resumed_twice_at is not None:
    lines.insert(0, {"step": resumed_twice_at, "kind": "valid", "loss": -1.0})
  (path / "train_log.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
  return str(path)


def test_budget_records_one_row_per_run_in_model_seed_budget_order(tmp_path):
  m = {"bce_last_rel": 0.1, "relational_bce_last_rel": 0.2, "ari_last": 0.7}
  runs = [
      _budget_run(tmp_path / "rnn_long", "rnn_cpu", 0, 400, {200: 9.0, 400: 8.0}, 400, m),
      _budget_run(tmp_path / "rnem_long", "rnem_cpu", 0, 400,
                  {200: 5.0, 300: 3.0, 400: 4.0}, 300, m, resumed_twice_at=300),
      _budget_run(tmp_path / "rnem_short", "rnem_cpu", 0, 200, {200: 5.0}, 200, m),
      _budget_run(tmp_path / "rnem_s1", "rnem_cpu", 1, 200, {200: 6.0}, 200, m),
  ]
  records = summarize.budget_records(runs)
  assert [(r["name"], r["seed"], r["trained_steps"]) for r in records] == [
      ("rnem_cpu", 0, 200), ("rnem_cpu", 0, 400), ("rnem_cpu", 1, 200), ("rnn_cpu", 0, 400)]
  long = records[1]
  # the log's later entry for a step wins (a resumed run re-logs it); the evaluated
  # checkpoint's validation loss is read off the curve
  assert long["valid_curve"] == [[200, 5.0], [300, 3.0], [400, 4.0]]
  assert (long["checkpoint_step"], long["valid_loss"]) == (300, 3.0)
  assert long["bce_last_rel_678"] == pytest.approx(0.2)
  assert (long["rollout_real_last"], long["rollout_sim_last"]) == (7.0, 40.0)
  rows = summarize.budget_table(records)
  assert len(rows) == 2 + 4
  assert rows[3] == "| R-NEM | 0 | 400 | 300 | 3.0 | 0.100 | 0.200 | 0.700 | 0.200 | 7 | 40 |"
  assert "| RNN | 0 | 400 | 400 | 8.0 | 0.100 | 0.200 | – |" in rows[5]   # no ARI for K=1
  with pytest.raises(ValueError, match="not an evaluated run"):
    summarize.budget_records([str(tmp_path)])


def test_budget_cli_writes_table_json_and_curves(tmp_path):
  m = {"bce_last_rel": 0.1, "relational_bce_last_rel": 0.2, "ari_last": 0.7}
  runs = [_budget_run(tmp_path / "a", "rnem_cpu", 0, 200, {100: 5.0, 200: 4.0}, 200, m),
          _budget_run(tmp_path / "b", "rnem_cpu", 0, 400, {100: 5.0, 200: 4.0, 400: 3.5}, 400, m)]
  out = tmp_path / "budget"
  summarize.main([f"--runs={','.join(runs)}", f"--budget_dir={out}"])
  assert len(json.loads((out / "budget.json").read_text())) == 2
  assert "| R-NEM | 0 | 400 | 400 | 3.5 |" in (out / "budget.md").read_text()
  assert (out / "validation_curves.png").stat().st_size > 1000
  assert not (tmp_path / "summary.json").exists()
  with pytest.raises(SystemExit):
    summarize.main([f"--runs={runs[0]}"])   # neither --out nor --budget_dir


def _seeded_run(path, name, seed, bce, rollout, ablation):
  wd = _run(path, name, {"bce_last": bce, "ari_last": bce / 200}, rollout=rollout)
  (path / "config.json").write_text(json.dumps({"name": name, "seed": seed}))
  (path / "rollout_ablation.json").write_text(json.dumps(
      {"dataset": "d", "bce_per_step": {"full": ablation, "true_gamma": [a / 2 for a in ablation]}}))
  return wd


def test_pooling_two_summaries_equals_summarizing_all_their_runs(tmp_path):
  rng = np.random.default_rng(0)
  runs = {}
  for name, seeds in (("rnem_cpu", range(5)), ("rnn_cpu", range(2))):
    for s in seeds:
      runs[(name, s)] = _seeded_run(tmp_path / f"{name}{s}", name, s, float(rng.uniform(80, 120)),
                                    rng.uniform(0, 9, 4).tolist(), rng.uniform(0, 9, 3).tolist())
  first = [runs[("rnem_cpu", s)] for s in (0, 1)] + [runs[("rnn_cpu", 0)], runs[("rnn_cpu", 1)]]
  second = [runs[("rnem_cpu", s)] for s in (2, 3, 4)]
  pooled = summarize.pool(summarize.summarize(first), summarize.summarize(second))
  full = summarize.summarize(list(runs.values()))
  assert pooled.keys() == full.keys()
  for name in full:
    assert pooled[name].keys() == full[name].keys(), name
  for metric in ("bce_last", "ari_last"):
    for field in ("mean", "std"):
      assert pooled["rnem_cpu"][metric][field] == pytest.approx(full["rnem_cpu"][metric][field])
    assert pooled["rnem_cpu"][metric]["seeds"] == 5
  np.testing.assert_allclose(pooled["rnem_cpu"]["rollout_bce"]["std"],
                             full["rnem_cpu"]["rollout_bce"]["std"])
  assert pooled["rnem_cpu"]["rollout_bce"]["num_real_steps"] == 2
  for variant in ("full", "true_gamma"):
    np.testing.assert_allclose(pooled["rnem_cpu"]["rollout_ablation"][variant]["mean"],
                               full["rnem_cpu"]["rollout_ablation"][variant]["mean"])
  assert pooled["rnem_cpu"]["seed_ids"] == [0, 1, 2, 3, 4]
  assert pooled["rnn_cpu"] == full["rnn_cpu"]  # on one side only: as it was
  # One seed alone pools like any other set (its std is 0 with 1 seed).
  one = summarize.summarize([runs[("rnem_cpu", 4)]])
  four = summarize.summarize([runs[("rnem_cpu", s)] for s in range(4)])
  assert summarize.pool(four, one)["rnem_cpu"]["bce_last"]["std"] == pytest.approx(
      full["rnem_cpu"]["bce_last"]["std"])


def test_pooling_the_same_seed_twice_is_refused(tmp_path):
  a = _seeded_run(tmp_path / "a", "rnem_cpu", 1, 90.0, [1.0, 2.0], [1.0])
  b = _seeded_run(tmp_path / "b", "rnem_cpu", 1, 95.0, [1.0, 2.0], [1.0])
  with pytest.raises(ValueError, match="seed"):
    summarize.pool(summarize.summarize([a]), summarize.summarize([b]))


def test_cli_pools_an_earlier_summary(tmp_path):
  a = _seeded_run(tmp_path / "a", "rnem_cpu", 0, 90.0, [1.0, 2.0], [1.0])
  b = _seeded_run(tmp_path / "b", "rnem_cpu", 1, 100.0, [3.0, 2.0], [3.0])
  earlier = tmp_path / "earlier.json"
  earlier.write_text(json.dumps(summarize.summarize([a])))
  out = tmp_path / "pooled.json"
  summarize.main([f"--runs={b}", f"--pool={earlier}", f"--out={out}"])
  pooled = json.loads(out.read_text())
  assert pooled["rnem_cpu"]["bce_last"]["mean"] == pytest.approx(95.0)
  assert pooled["rnem_cpu"]["bce_last"]["std"] == pytest.approx(np.std([90, 100], ddof=1))
  with pytest.raises(SystemExit):
    summarize.main([f"--runs={b}", f"--pool={tmp_path / 'missing.json'}", f"--out={out}"])


def test_object_curves_pool_over_seeds_and_steps_nothing_measured_stay_empty(tmp_path):
  """rollout.json's balls kept / position error per step: mean and std over the seeds that
  measured each step (None: no ball kept, nothing to measure); a table at simulated steps."""
  runs = []
  for seed, (kept, err) in enumerate([([1.0, 0.5, 0.0], [1.0, 3.0, None]),
                                      ([1.0, 0.25, 0.0], [2.0, 5.0, None])]):
    runs.append(_run(tmp_path / f"r{seed}", "rnem_sim_cpu", {"bce_last": 90.0},
                     rollout=[10.0, 20.0, 30.0]))
    rec = json.loads((tmp_path / f"r{seed}" / "rollout.json").read_text())
    rec.update(balls_kept_per_step=kept, position_error_px_per_step=err,
               swap_rate_per_step=[None, 0.0, 0.0], held_balls_kept_per_step=[1.0, 0.5, 0.5])
    (tmp_path / f"r{seed}" / "rollout.json").write_text(json.dumps(rec))
  s = summarize.summarize(runs)["rnem_sim_cpu"]
  assert s["rollout_balls_kept"]["mean"] == [1.0, 0.375, 0.0]
  assert s["rollout_position_error_px"]["mean"][:2] == [1.5, 4.0]
  assert s["rollout_position_error_px"]["mean"][2] is None
  assert s["rollout_position_error_px"]["std"][1] == pytest.approx(np.std([3, 5], ddof=1))
  assert s["rollout_position_error_px"]["seeds_per_step"] == [2, 2, 0]
  assert s["rollout_references"]["held_balls_kept_per_step"] == [1.0, 0.5, 0.5]
  table = summarize.simulation_table({"rnem_sim_cpu": s}, sim_steps=(1,))
  assert table[2] == "| R-NEM sim-trained | 2 | 30 ± 0 | 0.00 ± 0.00 | – | – |"   # no mass curve
  from rnem_jax import visualize
  fig = visualize.rollout_summary_figure({"rnem_sim_cpu": s})
  assert len(fig.axes) == 1 + len(visualize.OBJECT_PANELS) == 5


def test_the_simulation_claim_compares_balls_kept_at_simulated_steps(tmp_path):
  runs = []
  for name, kept in (("rnem_sim_cpu", [1.0, 0.9, 0.8]), ("rnn_sim_cpu", [1.0, 0.9, 0.85])):
    runs.append(_run(tmp_path / name, name, {"bce_last": 90.0}, rollout=[1.0, 2.0, 3.0]))
    rec = json.loads((tmp_path / name / "rollout.json").read_text())
    rec["balls_kept_per_step"] = kept
    (tmp_path / name / "rollout.json").write_text(json.dumps(rec))
  checked = {c: (ok, ev) for c, ok, ev in summarize.claims(summarize.summarize(runs))}
  ok, evidence = checked["4. sim-trained: R-NEM sim-trained keeps more balls than RNN "
                         "sim-trained at simulated step 1"]
  assert ok is False and evidence == "R-NEM sim-trained 0.80 vs RNN sim-trained 0.85"
  assert checked["4. sim-trained: R-NEM sim-trained keeps more balls than RNN-EM sim-trained "
                 "at simulated step 1"] == (None, "not run")
  # Rollout BCE 3.0 vs 3.0 at the one simulated step: not lower.
  assert checked["4. sim-trained rollout: R-NEM sim-trained < RNN sim-trained at every "
                 "simulated step"] == (False, "lower at 0 of 1 simulated steps; last step 3 vs 3")
  plain = [c for c, _, _ in summarize.claims(summarize.summarize(runs[:0] or [
      _run(tmp_path / "ref", "rnem_cpu", {"bce_last": 90.0})]))]
  assert not any("sim-trained" in c for c in plain)


def test_a_step_one_seed_measured_reads_as_one_seed_and_pools_per_step(tmp_path):
  """Position error is measured only where a ball is kept: a step one seed measured is shown
  as that seed's value (no "± 0"), and pooling another summary merges each step over the seeds
  that measured it, as summarizing all runs together does (no NaN where one side is empty)."""
  curves = {0: ([1.0, 0.5, 0.25, 0.0], [1.0, 2.0, 3.0, None]),
            1: ([1.0, 0.5, 0.0, 0.0], [2.0, 4.0, None, None]),
            2: ([1.0, 0.25, 0.25, 0.25], [4.0, 2.0, 5.0, 6.0]),
            3: ([1.0, 0.0, 0.0, 0.0], [3.0, None, None, None])}
  runs = {}
  for seed, (kept, err) in curves.items():
    wd = tmp_path / f"r{seed}"
    runs[seed] = _run(wd, "rnem_sim_cpu", {"bce_last": 90.0 + seed},
                      rollout=[10.0, 20.0, 30.0, 40.0])
    rec = json.loads((wd / "rollout.json").read_text())
    rec.update(balls_kept_per_step=kept, position_error_px_per_step=err)
    (wd / "rollout.json").write_text(json.dumps(rec))
    (wd / "config.json").write_text(json.dumps({"name": "rnem_sim_cpu", "seed": seed}))
  two = summarize.summarize([runs[0], runs[1]])["rnem_sim_cpu"]
  err = two["rollout_position_error_px"]
  assert err["seeds_per_step"] == [2, 2, 1, 0] and err["std"][2] == 0.0
  assert summarize.step_stat(err, 2) == {"mean": 3.0, "std": 0.0, "seeds": 1}
  assert summarize.step_stat(err, 3) is None
  row = summarize.simulation_table({"rnem_sim_cpu": two}, sim_steps=(1,))[2]
  assert row.endswith("| 3.0 |"), row   # one seed measured it: its value, no spread
  full = summarize.summarize(list(runs.values()))
  pooled = summarize.pool(summarize.summarize([runs[0], runs[1]]),
                          summarize.summarize([runs[2], runs[3]]))
  for key in ("rollout_position_error_px", "rollout_balls_kept", "rollout_bce"):
    a, b = pooled["rnem_sim_cpu"][key], full["rnem_sim_cpu"][key]
    assert a["seeds_per_step"] == b["seeds_per_step"], key
    for field in ("mean", "std"):
      np.testing.assert_allclose(np.asarray(a[field], float), np.asarray(b[field], float),
                                 err_msg=f"{key} {field}")
  assert pooled["rnem_sim_cpu"]["rollout_position_error_px"]["mean"][3] == 6.0
  json.dumps(pooled, allow_nan=False)   # valid JSON: no NaN
