"""Have the components split the Space Invaders scene, or do they all render all of it?

The reference loss, sum_k gamma_k BCE(psi_k, x) + (1 - gamma_k) (-log(1 - psi_k)) with gamma
held fixed, is minimised on an on-pixel by psi_k = gamma_k; the E-step then gives gamma_k =
psi_k / sum_j psi_j. So "every component predicts every on-pixel with probability 1/K, gamma =
1/K everywhere" is a fixed point of training and inference alike (the symmetric solution). This
script measures, per EM step t over the on-pixels of the target frame x_{t+1}, for each run
directory (e.g. copies of one run's workdir at several steps):

  psi_mean       mean_k psi_k        (1/K at the symmetric point; 1/K too when split cleanly)
  psi_max        max_k psi_k         (1/K at the symmetric point; -> 1 when one component owns it)
  psi_spread     max_k - min_k psi_k (0 at the symmetric point)
  gamma_max      max_k gamma_k       (= metrics.confidence on the frame; 1/K symmetric)
  components_used  metrics.components_used (K symmetric; 1 if one component takes everything)

on the first ``--num_sequences`` test sequences with the evaluation protocol (bit-flip noise,
random gamma0, eval seed). Writes ``--out`` (JSON) and prints a table of the last step.

It also computes the lowest training loss any symmetric state can reach on the validation subset
that training reports: per on-pixel sum_k [-(1/K) log psi - (1 - 1/K) log(1 - psi)] is smallest
at psi = 1/K, ln K + (K-1) ln(K/(K-1)) nats (2.25 for K=4), and off-pixels cost nothing at best;
times the mean number of on-pixels per target frame. A validation loss below it proves the
components differ. ``--figure`` plots each run family's validation loss (``train_log.jsonl`` of
the run directories named in ``--curves``) against that floor.

  python results/cpu_atari/symmetry.py --config=configs/atari.py:rnem,small --config.em.T=10 \
      --config.data_dir=$RNEM_DATA_DIR --runs=RUN_at1000,RUN_at2000,RUN \
      --out=results/cpu_atari/symmetry.json
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from rnem_jax import data, em, evaluate, metrics
from rnem_jax.model import build_network
from rnem_jax.train import make_mesh

flags.DEFINE_list("runs", [], "run directories (each with checkpoints/{best,latest})")
flags.DEFINE_string("out", "", "JSON output path")
flags.DEFINE_integer("num_sequences", 100, "test sequences (from the first)")
flags.DEFINE_integer("batch_size", 25, "sequences per batch")
flags.DEFINE_list("curves", [], "run directories whose validation loss to plot (label=DIR)")
flags.DEFINE_string("figure", "", "PNG path for the validation curves against the floor")
config_flags.DEFINE_config_file("config", "configs/atari.py:rnem,small", "experiment config")
FLAGS = flags.FLAGS
STATS = ("psi_mean", "psi_max", "psi_spread", "gamma_max", "components_used")


def step_stats(psi, gamma, x_next):
  """psi [B, K, H, W, 1], gamma [B, K, H, W, 1], x_next [B, H, W, 1] -> {stat: [B]}."""
  fg = (x_next > 0.5).astype(psi.dtype)[:, None]
  count = jnp.maximum(jnp.sum(fg, axis=(1, 2, 3, 4)), 1.0)
  on = lambda v: jnp.sum(fg * v, axis=(1, 2, 3, 4)) / count  # mean over on-pixels; v [B, 1, ...]
  return {
      "psi_mean": on(jnp.mean(psi, axis=1, keepdims=True)),
      "psi_max": on(jnp.max(psi, axis=1, keepdims=True)),
      "psi_spread": on(jnp.max(psi, axis=1, keepdims=True) - jnp.min(psi, axis=1, keepdims=True)),
      "gamma_max": metrics.confidence(x_next, gamma),
      "components_used": metrics.components_used(x_next, gamma),
  }


def symmetry_metrics(network, params, batch, key, *, K, num_real_steps=None, num_groups=16,
                     simulate_input=True, simulate_gamma=True, **em_kwargs):
  """``evaluate.step_metrics``'s signature, returning the ``step_stats`` curves ``[T, B]``."""
  del num_real_steps, num_groups, simulate_input, simulate_gamma   # a plain (real) EM rollout
  x = batch["features"]
  r = em.rollout(network, params, x, key, K=K, actions=batch.get("actions"), keep_outputs=True,
                 **em_kwargs)
  return jax.vmap(step_stats)(r.psi, r.gamma, x[1:])


def measure(config, workdir, num_sequences, batch_size):
  """{stat: [T] mean over sequences}, the checkpoint step of ``workdir``, the sequence count."""
  mesh = make_mesh()
  network = build_network(config.model)
  params, step = evaluate.restore_params(config, workdir, network, mesh)
  curves, n = evaluate.run_metrics(config, params, network, mesh, dataset=config.dataset,
                                   split="test", K=config.em.K, T=config.em.T,
                                   batch_size=batch_size, max_sequences=num_sequences,
                                   seed=config.eval.seed, metrics_fn=symmetry_metrics)
  return {k: v.tolist() for k, v in curves.items()}, step, n


def symmetric_floor(config):
  """(floor in nats, mean on-pixels per target frame) on the training's validation subset."""
  K, T = config.em.K, config.em.T
  per_pixel = np.log(K) + (K - 1) * np.log(K / (K - 1)) if K > 1 else 0.0
  on, n = 0.0, 0
  for batch in data.iterate_batches(config.dataset, "validation", config.train.valid_batch_size,
                                    seed=0, num_frames=T + 1, shuffle=False, num_epochs=1,
                                    shard_index=0, shard_count=1,
                                    data_dir=config.data_dir or None):
    if n >= config.train.valid_size:
      break
    on += float(np.sum(batch["features"][1:]))
    n += batch["features"].shape[1]
  mean_on = on / (n * T)
  return per_pixel * mean_on, mean_on


def plot_curves(curves, floor, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 4))
  for item in curves:
    label, wd = item.split("=", 1) if "=" in item else (os.path.basename(item), item)
    with open(os.path.join(wd, "train_log.jsonl")) as f:
      rows = [r for r in map(json.loads, f) if r["kind"] == "valid"]
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".", label=label)
  ax.axhline(floor, color="k", ls="--", lw=1, label="lowest loss of any symmetric state")
  ax.set_xlabel("training step")
  ax.set_ylabel("validation loss (nats per sequence step)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv):
  del argv
  config = FLAGS.config
  floor, mean_on = symmetric_floor(config)
  print(f"symmetric-state floor of the validation loss: {floor:.1f} nats "
        f"({mean_on:.1f} on-pixels per frame)")
  if FLAGS.figure:
    plot_curves(FLAGS.curves, floor, FLAGS.figure)
  record = {"K": config.em.K, "T": config.em.T, "dataset": config.dataset,
            "symmetric_floor_valid_loss": floor, "mean_on_pixels_per_frame": mean_on,
            "symmetric_point": {"psi_mean": 1 / config.em.K, "psi_max": 1 / config.em.K,
                                "psi_spread": 0.0, "gamma_max": 1 / config.em.K,
                                "components_used": float(config.em.K)},
            "runs": {}}
  print("| run | checkpoint step | " + " | ".join(STATS) + " (last step, on-pixels) |")
  print("|---|---|" + "---|" * len(STATS))
  for wd in FLAGS.runs:
    stats, step, n = measure(config, wd, FLAGS.num_sequences, FLAGS.batch_size)
    name = os.path.basename(os.path.normpath(wd))
    record["runs"][name] = {"checkpoint_step": step, "num_sequences": n, "per_step": stats}
    print(f"| {name} | {step} | " + " | ".join(f"{stats[s][-1]:.3f}" for s in STATS) + " |")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(record, f, indent=1)


if __name__ == "__main__":
  app.run(main)
