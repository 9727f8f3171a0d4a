"""Occlusion (paper §4 "Hidden Factors", Fig. 5): 3 equal-mass balls behind an invisible curtain.

Usage:
  python -m rnem_jax.main --config=configs/curtain.py[:<model>[,<scale>]] --workdir=DIR
models: rnem (default) | rnem_k8 | rnem_noatt | rnn_em | rnn | lstm (and the
*_noisy_gamma variants and the simulation-trained rnem_sim | rnn_em_sim | rnn_sim | lstm_sim,
the last T // 2 training steps simulated); scales: paper | small | cpu | tiny

paper: balls3curtain64, 64x64, B=64, T=30 (GPU/TPU job). Paper's test numbers:
  R-NEM BCE 46.22 / relational 2.33; LSTM 59.32 / 2.72; RNN 94.64 / 4.14.
small: balls3curtain32_small, 32x32, B=16, T=15, a 30-minute budget on a CPU.
cpu: balls3curtain32_cpu (2 px/frame), T=20, B=16, a fixed step budget (the CPU
  reproduction protocol, launch/reproduce_cpu.sh; expected result: results/cpu_curtain/).
tiny: for tests.
"""

from rnem_jax.config import make_config


def get_config(variant: str = ""):
  return make_config(
      variant,
      datasets={
          "paper": "curtain/balls3curtain64",
          "small": "curtain/balls3curtain32_small",
          "cpu": "curtain/balls3curtain32_cpu",
          "tiny": "curtain/balls3curtain32_tiny",
      },
      image_size={"paper": 64, "small": 32, "cpu": 32, "tiny": 32},
      em={"small": {"T": 15}, "cpu": {"T": 20}, "tiny": {"T": 5}},
      train={
          "small": dict(batch_size=16, max_minutes=30.0, unroll=True, remat=False,
                        valid_size=500, valid_batch_size=50),
          "cpu": dict(batch_size=16, max_steps=3000, unroll=True, remat=False, valid_size=500,
                      valid_batch_size=50, checkpoint_every=100, steps_per_epoch=200,
                      patience=1000),
          "tiny": dict(batch_size=4, max_steps=6, remat=False, steps_per_epoch=3, valid_size=8,
                       valid_batch_size=4, log_every=1, checkpoint_every=2),
      },
  )
