"""Configs: every model at every scale loads; the CPU reproduction protocol's data is as specified."""

import numpy as np
import pytest

from conftest import load_config
from rnem_jax import config as config_lib
from rnem_jax import data


@pytest.mark.parametrize("name", ["balls", "curtain"])
@pytest.mark.parametrize("scale", config_lib.SCALES)
def test_every_model_loads_at_every_scale(name, scale):
  for model, (_, K, _) in config_lib.MODELS.items():
    cfg = load_config(name, f"{model},{scale}")
    assert cfg.name == f"{model}_{scale}" and cfg.em.K == K
    assert cfg.model.image_size == (64 if scale == "paper" else 32)


def test_cpu_scale_is_the_reproduction_protocol():
  cfg = load_config("balls", "rnem,cpu")
  assert cfg.dataset == "bouncing_balls/balls4mass32_cpu"
  assert cfg.extrapolation.dataset == "bouncing_balls/balls678mass32_cpu"
  assert (cfg.em.T, cfg.train.batch_size, cfg.train.max_minutes) == (20, 16, 0.0)
  assert cfg.train.max_steps > 0          # a step budget, the same for every model
  assert cfg.train.patience > cfg.train.max_steps // cfg.train.steps_per_epoch  # no early stop
  assert load_config("curtain", "lstm,cpu").dataset == "curtain/balls3curtain32_cpu"


def test_scale_missing_from_a_config_is_a_clear_error():
  with pytest.raises(ValueError, match="scale 'cpu' is not defined.*paper"):
    load_config("atari", "rnem,cpu")
  with pytest.raises(ValueError, match="unknown config variant"):
    load_config("balls", "rnem,huge")


def test_reference_action_tiling_is_an_atari_diagnostic():
  from rnem_jax.train import validate_config
  cfg = load_config("atari", "rnem_reference_actions,small")
  assert cfg.em.action_tiling == "reference" and cfg.em.K == 4
  validate_config(cfg, 1)
  assert load_config("atari", "rnem,small").em.action_tiling == "per_sequence"  # the default
  with pytest.raises(ValueError, match="num_actions=0"):
    validate_config(load_config("balls", "rnem_reference_actions,tiny"), 1)
  bad = load_config("atari", "rnem,small")
  with bad.unlocked():
    bad.em.action_tiling = "tiled"
  with pytest.raises(ValueError, match="action_tiling must be one of"):
    validate_config(bad, 1)


def test_batch_splits_must_divide_each_devices_batch():
  from rnem_jax.train import validate_config
  cfg = load_config("balls", "rnem,small")
  assert cfg.train.batch_splits == 1                      # off by default
  with cfg.unlocked():
    cfg.train.batch_splits = 2
  validate_config(cfg, 1)                                 # 16 sequences: 2 slices of 8
  validate_config(cfg, 2)                                 # 8 per device: 2 slices of 4
  with cfg.unlocked():
    cfg.train.batch_splits = 3
  with pytest.raises(ValueError, match=r"batch_splits=3 must divide each device's batch \(16"):
    validate_config(cfg, 1)
  with cfg.unlocked():
    cfg.train.batch_splits = 0
  with pytest.raises(ValueError, match="batch_splits=0"):
    validate_config(cfg, 1)


@pytest.mark.parametrize("name,n_balls", [("bouncing_balls/balls4mass32_cpu", (4, 4)),
                                          ("bouncing_balls/balls678mass32_cpu", (6, 8)),
                                          ("curtain/balls3curtain32_cpu", (3, 3))])
def test_cpu_datasets_move_2px_per_frame_with_frequent_collisions(name, n_balls):
  from rnem_jax.sim import balls
  dataset, config_name = name.split("/")
  configs = {c.name: c for c in data.builder_class(dataset).BUILDER_CONFIGS}
  sim = configs[config_name].sim
  assert (sim.image_size, sim.min_balls, sim.max_balls) == (32, *n_balls)
  assert sim.num_frames >= 21 and sim.radius == 2.5   # T=20 and the 5+10 rollout fit
  speeds, colliding = [], []
  for i in range(40):
    ex = balls.generate_sequence(sim, i)
    speeds.append(np.linalg.norm(ex["velocities"][0], axis=-1))
    c = ex["collisions"][:-1]
    colliding.append(c.reshape(len(c), -1).any(-1).mean())
  assert np.mean(np.concatenate(speeds)) == pytest.approx(2.0, rel=0.05)   # px / frame
  if n_balls == (4, 4):
    # the protocol asks for collisions in ~20% of the steps (1.25 px/frame gives ~16%)
    assert 0.18 <= np.mean(colliding) <= 0.35


def _shipped():
  from rnem_jax.config import MODELS, SCALES
  for name in ("balls", "curtain", "atari"):
    for scale in SCALES:
      for model in MODELS:
        try:
          cfg = load_config(name, f"{model},{scale}")
        except ValueError as e:          # a scale the file does not define, or an Atari-only
          assert "is not defined" in str(e) or "num_actions" in str(e)
          continue
        yield name, model, scale, cfg


def test_every_shipped_config_validates_on_1_to_16_devices_and_1_to_4_processes():
  """The real validation of every config file, model and scale. Each runs wherever its batch
  splits over the devices; the paper, small and cpu scales on every count up to 16 except the
  Atari small batch of 8; otherwise one line that names the fix."""
  from rnem_jax.train import validate_config
  refused = set()
  count = 0
  for name, model, scale, cfg in _shipped():
    if cfg.em.action_tiling == "reference" and not cfg.model.num_actions:
      continue
    for devices in (1, 2, 4, 8, 16):
      for processes in (1, 2, 4):
        if devices % processes:
          continue
        count += 1
        if cfg.train.batch_size % devices == 0:
          validate_config(cfg, devices, processes)
        else:
          with pytest.raises(ValueError, match=r"must be a positive multiple of the number of "
                             r"devices .* or run on fewer devices"):
            validate_config(cfg, devices, processes)
          refused.add((name, scale, devices))
  assert count > 500
  assert {(n, s) for n, s, _ in refused} <= {("atari", "small"), ("balls", "tiny"),
                                              ("curtain", "tiny"), ("atari", "tiny")}
  assert ("atari", "small", 8) not in refused


def test_paper_scale_evaluation_needs_no_divisible_batch():
  """Validation and evaluation pad their batches: 1000 validation sequences in batches of 64 and
  evaluation batches of 100 run on 8 or 16 devices."""
  from rnem_jax.train import validate_config
  cfg = load_config("balls", "rnem")
  assert (cfg.train.valid_size, cfg.train.valid_batch_size, cfg.eval.batch_size) == (1000, 64, 100)
  validate_config(cfg, 16, 4)
  for field in ("train.valid_size", "train.log_every", "train.checkpoint_every",
                "eval.batch_size"):
    bad = load_config("balls", "rnem", **{field: 0})
    with pytest.raises(ValueError, match=f"{field} must be >= 1"):
      validate_config(bad, 1)
  with pytest.raises(ValueError, match="learning_rate must be > 0"):
    validate_config(load_config("balls", "rnem", **{"train.learning_rate": -1e-3}), 1)
  with pytest.raises(ValueError, match="unknown conv implementation"):
    validate_config(load_config("balls", "rnem", **{"model.conv_impl": "cudnn"}), 1)


SIM_MODELS = {"rnem_sim": "rnem", "rnn_em_sim": "rnn_em", "rnn_sim": "rnn", "lstm_sim": "lstm"}


@pytest.mark.parametrize("sim_model,base", sorted(SIM_MODELS.items()))
def test_sim_models_are_their_base_model_trained_on_simulated_steps(sim_model, base):
  """``<model>_sim``: the base model's cell, K and every setting, plus the last T // 2 training
  steps simulated (em.train_sim_steps) with the config's gradient choice (em.sim_gradient)."""
  from rnem_jax import em
  for name in ("balls", "curtain", "atari"):
    for scale in config_lib.SCALES:
      try:
        cfg = load_config(name, f"{sim_model},{scale}")
      except ValueError as e:
        assert "is not defined" in str(e)
        continue
      ref = load_config(name, f"{base},{scale}")
      assert cfg.name == f"{sim_model}_{scale}" and ref.em.train_sim_steps == 0
      assert cfg.em.train_sim_steps == cfg.em.T // 2 >= 1
      assert cfg.em.sim_gradient is config_lib.SIM_GRADIENT is ref.em.sim_gradient
      em.check_train_sim_steps(cfg.em.T, cfg.em.train_sim_steps)
      got, want = cfg.to_dict(), ref.to_dict()
      got["em"]["train_sim_steps"] = 0
      got["name"] = want["name"]
      assert got == want
  cpu = load_config("balls", f"{sim_model},cpu")   # the CPU protocol: T=20, rollout 5 + 10
  assert (cpu.em.T, cpu.em.train_sim_steps) == (20, 10)
  assert (cpu.rollout.num_real_steps, cpu.rollout.num_sim_steps) == (5, 10)
  assert (load_config("balls", f"{sim_model},small").em.train_sim_steps,
          load_config("balls", sim_model).em.train_sim_steps,
          load_config("balls", f"{sim_model},tiny").em.train_sim_steps) == (7, 15, 2)


def test_sim_fields_are_overridable_and_validated_by_the_rollout():
  from rnem_jax import em
  from rnem_jax.train import validate_config
  cfg = load_config("balls", "rnem,cpu", **{"em.train_sim_steps": 5, "em.sim_gradient": False})
  assert (cfg.em.train_sim_steps, cfg.em.sim_gradient) == (5, False)
  bad = load_config("balls", "rnem_sim,cpu", **{"em.T": 8})     # S = 10 stays: too many
  with pytest.raises(ValueError, match=r"train_sim_steps must be in \[0, T - 1\] = \[0, 7\]"):
    em.check_train_sim_steps(bad.em.T, bad.em.train_sim_steps)
  with pytest.raises(ValueError, match=r"train_sim_steps must be in \[0, T - 1\]"):
    validate_config(bad, 1)   # refused before anything is built or written


def test_every_model_has_a_report_label_and_rank():
  """Model names and their labels live in one place (rnem_jax.config)."""
  for model in config_lib.MODELS:
    assert model in config_lib.MODEL_LABELS, model
    assert config_lib.model_rank(f"{model}_cpu") < len(config_lib.MODEL_LABELS)
  assert config_lib.model_of("rnn_em_sim_cpu") == "rnn_em_sim"
  assert [config_lib.is_mixture(f"{m}_cpu") for m in ("rnem", "rnn_em_sim", "rnn_sim", "lstm")] \
      == [True, True, False, False]
  assert config_lib.in_report_order(["rnn_cpu", "rnem_sim_cpu", "lstm_cpu", "rnem_cpu"]) == [
      "rnem_cpu", "lstm_cpu", "rnn_cpu", "rnem_sim_cpu"]
