"""Experiment configs as data: the base config and the paper's model variants.

``configs/{balls,curtain,atari}.py`` call :func:`make_config` with their
dataset names; the ``:variant`` after the file name selects a model and a
scale, comma-separated, e.g. ``configs/balls.py:rnn_em,small``.

Models (paper §4): ``rnem`` (default, K=5), ``rnem_k8``, ``rnem_noatt``,
``rnn_em`` (K=5), ``rnn`` (K=1), ``lstm`` (K=1); ``rnem_noisy_gamma`` and
``rnn_em_noisy_gamma`` are a variant of ours, not the paper's: gamma from the
noisy next frame (``em.e_step_target``); ``rnem_reference_actions`` (Atari) is
a diagnostic: R-NEM with the authors' code's action tiling, bug A1
(``em.action_tiling``, docs/design.md#a1-action-tiling), which gives the
components of one sequence different actions. ``rnem_sim``, ``rnn_em_sim``,
``rnn_sim`` and ``lstm_sim`` (ours) are rnem, rnn_em, rnn and lstm trained for
simulation: the last ``em.train_sim_steps`` = T // 2 of the T training steps run
as the rollout does (input sum_k gamma psi, gamma from the thresholded max psi;
paper §4 "Simulation"), the loss still against the true frames (``em.rollout``).
Our variants: docs/design.md#our-variants.
Scales: ``paper`` (default: 64x64, B=64, T=30), ``small`` (32x32, B=16, T=15,
a 30-minute wall-clock budget on a CPU), ``cpu`` (the CPU reproduction protocol:
32x32 at 2 px/frame, B=16, T=20, a fixed step budget; see
launch/reproduce_cpu.sh), ``tiny`` (for tests).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import ml_collections

from rnem_jax.model import default_model_config

# model name -> (cell, K, K used on the extrapolation test set)
MODELS = {
    "rnem": ("rnem", 5, 8),
    "rnem_k8": ("rnem", 8, 8),
    "rnem_noatt": ("rnem_noatt", 5, 8),
    "rnn_em": ("rnn", 5, 8),
    "rnn": ("rnn", 1, 1),
    "lstm": ("lstm", 1, 1),
    "rnem_noisy_gamma": ("rnem", 5, 8),
    "rnn_em_noisy_gamma": ("rnn", 5, 8),
    "rnem_reference_actions": ("rnem", 5, 8),
    "rnem_sim": ("rnem", 5, 8),
    "rnn_em_sim": ("rnn", 5, 8),
    "rnn_sim": ("rnn", 1, 1),
    "lstm_sim": ("lstm", 1, 1),
}
# model name -> its ``em`` settings that differ from the reference: the *_noisy_gamma variants
# run the E-step against the noisy next frame, so the input mask never sees a clean frame.
MODEL_EM = {
    "rnem_noisy_gamma": {"e_step_target": "noisy"},
    "rnn_em_noisy_gamma": {"e_step_target": "noisy"},
    "rnem_reference_actions": {"action_tiling": "reference"},
}
# model name -> the share of the T training steps run as simulation, the last ones:
# em.train_sim_steps = int(T * share), fixed when the config is built (T = 20 at the cpu scale:
# 10 real + 10 simulated steps, the 10-step simulated horizon of the 5 + 10 rollout; half the loss
# terms still train the grouping on real frames). Overriding em.T on the command line leaves
# train_sim_steps as it is (em.rollout refuses S > T - 1). Why T // 2:
# docs/design.md#measured-choices.
MODEL_TRAIN_SIM = {"rnem_sim": 0.5, "rnn_em_sim": 0.5, "rnn_sim": 0.5, "lstm_sim": 0.5}
# em.sim_gradient: False, the fed-back sum_k gamma psi is an input like a real frame (no
# gradient through it); why: docs/design.md#measured-choices.
SIM_GRADIENT = False
SCALES = ("paper", "small", "cpu", "tiny")

# The models of the paper (§4), in the order its tables and figures use; every model's label in
# reports, in report order: the paper's models, then our variants (left out of its claims).
PAPER_MODELS = ("rnem", "rnem_k8", "rnem_noatt", "rnn_em", "lstm", "rnn")
MODEL_LABELS = {"rnem": "R-NEM", "rnem_k8": "R-NEM K=8", "rnem_noatt": "R-NEM no att",
                "rnn_em": "RNN-EM", "lstm": "LSTM", "rnn": "RNN",
                "rnem_noisy_gamma": "R-NEM noisy γ", "rnn_em_noisy_gamma": "RNN-EM noisy γ",
                "rnem_reference_actions": "R-NEM, reference action tiling (A1)",
                "rnem_sim": "R-NEM sim-trained", "rnn_em_sim": "RNN-EM sim-trained",
                "lstm_sim": "LSTM sim-trained", "rnn_sim": "RNN sim-trained"}
# The data-only reference curves of rollout.json (the same for every model) and their labels.
ROLLOUT_REFERENCES = (("baseline_bce_per_step", "copy last frame"),
                      ("held_bce_per_step", "hold last observed frame"),
                      ("blank_bce_per_step", "empty frame"))


def check_same(records: Mapping[str, dict], fields: Sequence[str], what: str, why: str) -> None:
  """Refuses to put records scored differently side by side (in one mean, curve or table).

  Args:
    records: label (a run or a model) -> its record (metrics.json, rollout.json, ...).
    fields: the record fields that must agree, e.g. ``("dataset", "T")``.
    what: what would be compared, for the message.
    why: the fix, for the message.

  Raises:
    ValueError: naming the first field on which they differ, with each record's value.
  """
  if not records:
    raise ValueError(f"no records to compare for {what}")
  for field in fields:
    values = {label: rec.get(field) for label, rec in records.items()}
    if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
      raise ValueError(f"refusing to compare {what}: {field} differs ({values}); {why}")


def model_of(name: str) -> str:
  """A run's config name -> its model: ``"rnem_k8_cpu"`` -> ``"rnem_k8"`` (config names are
  ``<model>_<scale>``)."""
  return name.rsplit("_", 1)[0] if "_" in name else name


def model_rank(name: str) -> int:
  """Position of config ``name``'s model in report order (unknown models last)."""
  order = list(MODEL_LABELS)
  return order.index(model_of(name)) if model_of(name) in order else len(order)


def is_mixture(name: str) -> bool:
  """Whether config ``name``'s model is a mixture (K > 1 components, so a grouping and an ARI);
  RNN and LSTM and their variants are K = 1."""
  return MODELS.get(model_of(name), (None, 2))[1] > 1


def label(name: str) -> str:
  """Config ``name``'s model as reports write it."""
  return MODEL_LABELS.get(model_of(name), name)


def in_report_order(names) -> list[str]:
  """Config names sorted in report order (unknown models last)."""
  return sorted(names, key=lambda n: (model_rank(n), n))


def parse_variant(variant: str) -> tuple[str, str]:
  """``"rnn_em,small"`` -> ``("rnn_em", "small")``; missing parts take the defaults."""
  model, scale = "rnem", "paper"
  for part in filter(None, (p.strip() for p in (variant or "").split(","))):
    if part in MODELS:
      model = part
    elif part in SCALES:
      scale = part
    else:
      raise ValueError(
          f"unknown config variant {part!r}; models: {sorted(MODELS)}, scales: {list(SCALES)}")
  return model, scale


def make_config(variant: str, *, datasets: dict[str, str], architecture: str = "balls",
                image_size: dict[str, int], em: dict, train: dict,
                num_actions: int = 0) -> ml_collections.ConfigDict:
  """Builds a locked config.

  Args:
    variant: "<model>[,<scale>]".
    datasets: per scale, ``"<scale>"`` -> train dataset name and, optionally,
      ``"<scale>_extrapolation"`` -> the extrapolation test set.
    image_size: per scale.
    em: per-scale overrides of the ``em`` section (e.g. ``{"small": {"T": 15}}``)
      plus shared entries under ``"all"``.
    train: same, for the ``train`` section.
  """
  model, scale = parse_variant(variant)
  if scale not in datasets:
    raise ValueError(f"scale {scale!r} is not defined for this config; it has "
                     f"{[s for s in SCALES if s in datasets]}")
  cell, K, K_extrapolation = MODELS[model]
  c = ml_collections.ConfigDict()
  c.name = f"{model}_{scale}"
  c.dataset = datasets[scale]
  c.data_dir = ""                      # "" = $RNEM_DATA_DIR or ~/tensorflow_datasets
  c.seed = 0
  c.model = default_model_config(architecture=architecture, image_size=image_size[scale],
                                 cell=cell, num_actions=num_actions)
  c.em = ml_collections.ConfigDict(dict(
      K=K, T=30, noise_prob=0.2, e_step="bernoulli", prior=0.0, inter_weight=1.0,
      e_step_target="clean",            # "noisy": gamma from x~_{t+1} (see em.rollout)
      action_tiling="per_sequence",     # "reference": bug A1 reproduced, a diagnostic
      train_sim_steps=0,                # the last S of the T training steps simulated (*_sim)
      sim_gradient=SIM_GRADIENT))       # gradients through the fed-back reconstruction
  c.em.update(MODEL_EM.get(model, {}))
  c.em.update(em.get("all", {}))
  c.em.update(em.get(scale, {}))
  if model in MODEL_TRAIN_SIM:
    c.em.train_sim_steps = int(c.em.T * MODEL_TRAIN_SIM[model])
  c.train = ml_collections.ConfigDict(dict(
      batch_size=64,
      learning_rate=1e-3,
      max_epochs=500,
      steps_per_epoch=0,               # 0 = train size // batch size
      max_steps=0,                     # 0 = no limit
      max_minutes=0.0,                 # training-time budget (all resumes); 0 = no limit
      patience=10,                     # early stopping, in epochs
      valid_size=1000,                 # fixed validation subset (first sequences), every process
      valid_batch_size=64,             # any size: batches are padded to a multiple of the devices
      log_every=10,
      checkpoint_every=100,            # steps between "latest" checkpoints
      # EM scan: rolled + remat at paper scale (a fraction of the memory and a faster step on
      # CPU); unrolled for the small CPU runs (faster steps, longer compiles). Measurements:
      # docs/design.md#measured-choices.
      unroll=1,
      remat=True,
      # Independent batch slices per EM step (em.rollout's batch_splits; same maths):
      # lets XLA:CPU's threads run two slices' small ops side by side. 1 = off.
      batch_splits=1,
  ))
  c.train.update(train.get("all", {}))
  c.train.update(train.get(scale, {}))
  c.eval = ml_collections.ConfigDict(dict(
      dataset="",                      # "" = the training dataset
      split="test",
      K=0,                             # 0 = the training K
      batch_size=100 if scale == "paper" else 50,
      max_sequences=0,                 # 0 = the whole split
      T=0,                             # 0 = em.T
      seed=1234,
      checkpoint="best",               # or "latest" (the last one saved)
      output="",                       # "" = metrics.json (or metrics_<dataset>_K<K>.json)
  ))
  c.extrapolation = ml_collections.ConfigDict(dict(
      dataset=datasets.get(f"{scale}_extrapolation", ""), K=K_extrapolation))
  c.rollout = ml_collections.ConfigDict(dict(
      num_real_steps=5, num_sim_steps=10, batch_size=c.eval.batch_size, max_sequences=0,
      seed=4321, dataset=""))
  c.lock()
  return c
