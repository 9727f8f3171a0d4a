"""Separates "more components" from "more balls" in the 6-8-ball extrapolation test.

Each run (trained on 4 balls with K=5, or with K=8 for R-NEM K=8) is evaluated on the 2x2 of test
balls and test K: 4 balls and 6-8 balls, each with K=5 and K=8. A run's own evaluations are
metrics.json (4 balls at its training K) and metrics_extrapolation.json (6-8 balls, K=8); the other
cells come from `--mode=eval --config.eval.dataset=bouncing_balls/<name> --config.eval.K=<K>`,
which writes metrics_<name>_K<K>.json. Each cell is found by the dataset and K recorded inside the
metrics files, so it does not matter which file holds it. A cell with no metrics file (a run whose
checkpoints were gone before it was evaluated there) is null in the JSON and "not evaluated" in
the table, and named on stderr. Writes k_swap.json beside this script (with the training K of each
run) and prints a table.

  R=results/cpu/seeds_4000/runs
  python results/cpu/seeds_4000/k_swap.py $R/rnem_noatt_s{0,1,2} $R/rnem_s2 $R/rnn_em_s2 \
    $R/rnem_k8_s{0,1}
"""
import glob
import json
import os
import sys

CELLS = {"4 balls, K=5": ("bouncing_balls/balls4mass32_cpu", 5),
         "4 balls, K=8": ("bouncing_balls/balls4mass32_cpu", 8),
         "6-8 balls, K=5": ("bouncing_balls/balls678mass32_cpu", 5),
         "6-8 balls, K=8": ("bouncing_balls/balls678mass32_cpu", 8)}
KEYS = ("bce_last", "bce_last_rel", "relational_bce_last", "relational_bce_last_rel", "ari_last")


def main(runs):
  out = {}
  print("| run | test | BCE (nats) | BCE / baseline | relational (nats) | relational / baseline "
        "| ARI last |\n|---|---|---|---|---|---|---|")
  for run in runs:
    name = os.path.basename(os.path.normpath(run))
    found = {}
    for f in sorted(glob.glob(os.path.join(run, "metrics*.json"))):
      with open(f) as fh:
        m = json.load(fh)
      found.setdefault((m["dataset"], m["K"]), m)
    with open(os.path.join(run, "config.json")) as fh:
      out[name] = {"train_K": json.load(fh)["em"]["K"]}
    for label, cell in CELLS.items():
      if cell not in found:
        print(f"{run}: no metrics file for {cell[0]} with K={cell[1]} (--mode=eval writes it)",
              file=sys.stderr)
        out[name][label] = None
        print(f"| {name} | {label} | not evaluated | | | | |")
        continue
      m = found[cell]
      out[name][label] = {"K": m["K"], "dataset": m["dataset"],
                          "checkpoint_step": m["checkpoint_step"], **{k: m[k] for k in KEYS}}
      v = out[name][label]
      print(f"| {name} | {label} | {v['bce_last']:.1f} | {v['bce_last_rel']:.3f} | "
            f"{v['relational_bce_last']:.2f} | {v['relational_bce_last_rel']:.3f} | "
            f"{v['ari_last']:.3f} |")
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "k_swap.json"), "w") as fh:
    json.dump(out, fh, indent=1)


if __name__ == "__main__":
  if len(sys.argv) < 2:
    raise SystemExit(__doc__)
  main(sys.argv[1:])
