"""Why simulated rollouts lose their balls: the area the simulated E-step calls "ball".

In a simulated step the E-step's target is [max_k psi > 0.1] (rnem_jax.em.simulated_e_step).
For each run, on the first 100 test sequences (5 real + 10 simulated steps, the evaluation's
noise and gamma0 seed), this prints and writes per predicted frame: the mean number of pixels
with max_k psi > 0.1 ("area") and the share of the true balls' pixels among them
("ball_cover"), for the full simulation and for own input with the true-frame gamma.

  python results/cpu/seed0_4000/threshold_diagnostic.py --data_dir=~/rnem_data \
      --out=results/cpu/seed0_4000/threshold_diagnostic.json \
      rnem:~/rnem_runs/cpu/rnem_s0 rnem:~/rnem_runs/cpu_4000/rnem_s0 rnn_em:~/rnem_runs/cpu_4000/rnn_em_s0
"""
import argparse
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from rnem_jax import data, em, evaluate
from rnem_jax.model import build_network
from rnem_jax.train import em_options, make_mesh

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("runs", nargs="+", help="model:workdir (models of configs/balls.py, cpu scale)")
parser.add_argument("--data_dir", required=True)
parser.add_argument("--out", required=True)
parser.add_argument("--sequences", type=int, default=100)
args = parser.parse_args()

spec = importlib.util.spec_from_file_location("balls", "configs/balls.py")
balls = importlib.util.module_from_spec(spec)
spec.loader.exec_module(balls)
out = {}
for run in args.runs:
  model, workdir = run.split(":", 1)
  workdir = os.path.expanduser(workdir)
  config = balls.get_config(f"{model},cpu")
  config.data_dir = os.path.expanduser(args.data_dir)
  network = build_network(config.model)
  params, step = evaluate.restore_params(config, workdir, network, make_mesh())
  n_real, n_sim = config.rollout.num_real_steps, config.rollout.num_sim_steps
  batch = next(iter(data.iterate_batches(
      config.dataset, "test", args.sequences, seed=0, num_frames=n_real + n_sim + 1,
      shuffle=False, num_epochs=1, drop_remainder=False, data_dir=config.data_dir)))
  x = jnp.asarray(batch["features"])
  truth = np.asarray(x[1:])[..., 0] > 0.5                      # [T, B, H, W]
  record = {"checkpoint_step": step, "true_ball_area": truth.sum((2, 3)).mean(1).round(1).tolist()}
  for name, simulate_gamma in (("full simulation", True), ("own input, true-frame gamma", False)):
    r = em.rollout(network, params, x, jax.random.key(config.rollout.seed), K=config.em.K,
                   num_real_steps=n_real, keep_outputs=True, simulate_gamma=simulate_gamma,
                   **em_options(config))
    called_ball = np.asarray(jnp.max(r.psi, axis=2))[..., 0] > 0.1   # psi: [T, B, K, H, W, 1]
    record[name] = {
        "area": called_ball.sum((2, 3)).mean(1).round(1).tolist(),
        "ball_cover": ((called_ball & truth).sum((1, 2, 3)) / truth.sum((1, 2, 3))).round(3).tolist()}
  out[f"{model}@{step}"] = record
  print(f"{model}@{step}", json.dumps(record), flush=True)
with open(args.out, "w") as f:
  json.dump(out, f, indent=1)
