"""Separates "more components" from "more balls" in the 6-8-ball extrapolation test.

Each run (trained with K=5 on 4 balls) is evaluated on the 2x2 of test balls and test K: 4 balls
with K=5 (metrics.json), 4 balls with K=8 (metrics_balls4mass32_cpu_K8.json, from `--mode=eval
--config.eval.dataset=bouncing_balls/balls4mass32_cpu --config.eval.K=8`), 6-8 balls with K=5
(metrics_balls678mass32_cpu_K5.json, likewise) and 6-8 balls with K=8
(metrics_extrapolation.json). Writes k_swap.json beside this script and prints a table.

  python results/cpu/seeds_4000/k_swap.py results/cpu/seeds_4000/runs/{rnem_noatt_s0,rnem_s2,rnn_em_s2}
"""
import json
import os
import sys

FILES = {"4 balls, K=5": "metrics.json", "4 balls, K=8": "metrics_balls4mass32_cpu_K8.json",
         "6-8 balls, K=5": "metrics_balls678mass32_cpu_K5.json",
         "6-8 balls, K=8": "metrics_extrapolation.json"}
KEYS = ("bce_last", "bce_last_rel", "relational_bce_last", "relational_bce_last_rel", "ari_last")


def main(runs):
  out = {}
  print("| run | test | BCE (nats) | BCE / baseline | relational (nats) | relational / baseline "
        "| ARI last |\n|---|---|---|---|---|---|---|")
  for run in runs:
    name = os.path.basename(os.path.normpath(run))
    out[name] = {}
    for label, f in FILES.items():
      with open(os.path.join(run, f)) as fh:
        m = json.load(fh)
      out[name][label] = {"K": m["K"], "dataset": m["dataset"],
                          "checkpoint_step": m["checkpoint_step"], **{k: m[k] for k in KEYS}}
      v = out[name][label]
      print(f"| {name} | {label} | {v['bce_last']:.1f} | {v['bce_last_rel']:.3f} | "
            f"{v['relational_bce_last']:.2f} | {v['relational_bce_last_rel']:.3f} | "
            f"{v['ari_last']:.3f} |")
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "k_swap.json"), "w") as fh:
    json.dump(out, fh, indent=1)


if __name__ == "__main__":
  main(sys.argv[1:])
