"""Bouncing balls (paper §4, appendix A.1): R-NEM and its baselines on balls4mass64.

Usage:
  python -m rnem_jax.main --config=configs/balls.py[:<model>[,<scale>]] --workdir=DIR
models: rnem (default, K=5) | rnem_k8 | rnem_noatt | rnn_em | rnn (K=1) | lstm (K=1)
  | rnem_noisy_gamma | rnn_em_noisy_gamma (a variant: gamma from the noisy next frame)
  | rnem_sim | rnn_em_sim | rnn_sim | lstm_sim (a variant: trained with the last T // 2 steps
    simulated, em.train_sim_steps, e.g. 10 of T=20 at the cpu scale; see rnem_jax/config.py)
scales: paper (default) | small | cpu | tiny

paper: 64x64, B=64, T=30, Adam 1e-3, bit-flip noise 0.2, early stopping
  (patience 10 epochs of 781 steps). A GPU/TPU job. Expected (paper Fig. 3 and
  §4 "Comparison"): R-NEM ARI ~0.8 and the lowest BCE and relational BCE
  relative to the copy-frame baseline.

small: 32x32, 4 balls, K=5, T=15, B=16, 30-minute wall-clock budget on a CPU,
  then evaluation on the 500 test sequences (+ 6-8 balls, K=8) and a 5+10-step
  rollout:
    python -m rnem_jax.main --config=configs/balls.py:small --workdir=/tmp/rnem_small
  Expected result: results/balls_small_rnem/ (metrics.json, metrics_extrapolation.json).

cpu: the CPU reproduction protocol (launch/reproduce_cpu.sh, results/cpu/):
  balls4mass32_cpu (4 balls at 2 px/frame, so that collisions are frequent),
  T=20, B=16, a fixed step budget (max_steps) instead of a wall-clock one;
  6-8-ball test set balls678mass32_cpu.

tiny: a few steps on 32 sequences; used by the tests.
"""

from rnem_jax.config import make_config


def get_config(variant: str = ""):
  return make_config(
      variant,
      datasets={
          "paper": "bouncing_balls/balls4mass64",
          "paper_extrapolation": "bouncing_balls/balls678mass64",
          "small": "bouncing_balls/balls4mass32_small",
          "small_extrapolation": "bouncing_balls/balls678mass32_small",
          "cpu": "bouncing_balls/balls4mass32_cpu",
          "cpu_extrapolation": "bouncing_balls/balls678mass32_cpu",
          "tiny": "bouncing_balls/balls4mass32_tiny",
          "tiny_extrapolation": "bouncing_balls/balls678mass32_tiny",
      },
      image_size={"paper": 64, "small": 32, "cpu": 32, "tiny": 32},
      em={"small": {"T": 15}, "cpu": {"T": 20}, "tiny": {"T": 5}},
      train={
          "small": dict(batch_size=16, max_minutes=30.0, unroll=True, remat=False,
                        valid_size=500, valid_batch_size=50,
                        checkpoint_every=100),
          "cpu": dict(batch_size=16, max_steps=3000, unroll=True, remat=False, valid_size=500,
                      valid_batch_size=50, checkpoint_every=100, steps_per_epoch=200,
                      patience=1000),
          "tiny": dict(batch_size=4, max_steps=6, remat=False, steps_per_epoch=3, valid_size=8,
                       valid_batch_size=4, log_every=1, checkpoint_every=2),
      },
  )
