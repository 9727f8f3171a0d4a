#!/usr/bin/env bash
# Reproduce the paper's bouncing-balls comparison at CPU scale (issue: reproduction).
#
# Every (model, seed) run trains in its own workdir under $RUNS and resumes from its
# checkpoint, so the script can be stopped and started again across sittings; finished runs
# (evaluated at the full step budget) are skipped. Every run is evaluated (4-ball and 6-8-ball
# test sets, rollout; object permanence on curtain data) and its rollout ablation is
# computed. Then the runs are summarised into $OUT/summary.json (mean, std and seed count per
# model and metric), $OUT/summary.md (tables, the paper's claims checked) with seed-averaged
# figures, and the panels/GIFs of $FIGURE_RUNS are drawn into $OUT/figures/<model>.
#
#   bash launch/reproduce_cpu.sh                       # everything, defaults below
#   MODELS="rnem rnn_em" SEEDS="0 1 2" STEPS=6000 bash launch/reproduce_cpu.sh
#   JOBS=2 bash launch/reproduce_cpu.sh                # two 1-thread runs side by side
#   JOBS=1 THREADS=0 RUN_LIST="rnem:2" bash ...         # one run on every core (XLA's default)
#   RUN_LIST="rnem:0 rnn_em:0 rnn:0" bash launch/reproduce_cpu.sh   # explicit model:seed runs
#   CONFIG=configs/curtain.py MODELS="rnem lstm rnn" SEEDS=0 OUT=results/cpu_curtain bash ...
#   ARCHIVE=results/cpu/runs bash launch/reproduce_cpu.sh  # also keep each run's small outputs
#
# On this 2-core machine both ways give about the same throughput: R-NEM's 4000 cpu-scale steps
# took 67 minutes alone with THREADS=0 (0.99 steps/s, validation included), and two 1-thread
# runs side by side made 0.52 steps/s each (1.04 together; seed 0 of R-NEM and RNN-EM). One
# run on both cores finishes each run in half the time, which suits a sitting too short for two.
#
# ARCHIVE copies each run's JSON outputs and train_log.jsonl (tens of KB, no checkpoints) to
# $ARCHIVE/<model>_s<seed>: a run directory that rnem_jax.summarize reads like the original,
# so the summary can be regenerated (or pooled with new seeds) after the workdirs are gone.
#
# Runs go seed-major (every model's seed 0 first), so a partial sitting still covers every
# model. Raising STEPS later resumes the finished runs from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS=${MODELS:-"rnem rnem_k8 rnem_noatt rnn_em rnn lstm"}
SEEDS=${SEEDS:-"0 1 2"}
CONFIG=${CONFIG:-configs/balls.py}
SCALE=${SCALE:-cpu}
STEPS=${STEPS:-3000}
T=${T:-20}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}  # XLA CPU threads per run: 1 (default; pairs with JOBS=2) or 0 = XLA's own
RUNS=${RUNS:-$HOME/rnem_runs/cpu}
OUT=${OUT:-results/cpu}
DATA_DIR=${DATA_DIR:-${RNEM_DATA_DIR:-$HOME/tensorflow_datasets}}
mkdir -p "$RUNS"

run_one() {  # model seed
  local wd="$RUNS/$1_s$2"
  local args=(--config="$CONFIG:$1,$SCALE" --workdir="$wd" --config.seed="$2"
              --config.em.T="$T" --config.data_dir="$DATA_DIR"
              --config.train.max_steps="$STEPS" --config.train.max_minutes=0)
  if [ "$THREADS" = 1 ]; then
    export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  elif [ "$THREADS" != 0 ]; then
    echo "THREADS must be 1 or 0 (XLA's default: every core), got $THREADS" >&2; return 1
  fi
  if [ -f "$wd/rollout.json" ] && [ -d "$wd/checkpoints/latest/$STEPS" ]; then
    echo "[skip] $1 seed $2: trained and evaluated"
  else
    echo "[run] $1 seed $2 -> $wd"
    python -m rnem_jax.main "${args[@]}" --mode=all > "$wd.log" 2>&1 \
      || { echo "[fail] $1 seed $2: see $wd.log"; return 1; }
  fi
  if [ ! -f "$wd/rollout_ablation.json" ] || [ "$wd/rollout_ablation.json" -ot "$wd/rollout.json" ]
  then
    python -m rnem_jax.main "${args[@]}" --mode=rollout_ablation \
        --config.rollout.max_sequences="${ABLATION_SEQUENCES:-200}" >> "$wd.log" 2>&1 \
      || { echo "[fail] $1 seed $2 rollout ablation: see $wd.log"; return 1; }
  fi
  if [[ "$CONFIG" == *curtain* ]] && [ ! -f "$wd/occlusion.json" ]; then  # runs from before it
    python -m rnem_jax.main "${args[@]}" --mode=occlusion >> "$wd.log" 2>&1 \
      || { echo "[fail] $1 seed $2 occlusion: see $wd.log"; return 1; }
  fi
}
export -f run_one
export RUNS STEPS T SCALE DATA_DIR CONFIG THREADS
if [ -z "${RUN_LIST:-}" ]; then
  RUN_LIST=$(for s in $SEEDS; do for m in $MODELS; do echo -n "$m:$s "; done; done)
fi

# Build the datasets once, before parallel runs race to build them. The names come from the
# config; the build itself runs as `python -m rnem_jax.data build` because its worker processes
# are spawned and must be able to re-import the main module (a script read from stdin cannot).
datasets=$(python - "$SCALE" "$CONFIG" <<'PY'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("experiment", sys.argv[2])
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
cfg = m.get_config(sys.argv[1])
print(" ".join(filter(None, [cfg.dataset, cfg.extrapolation.dataset])))
PY
)
for name in $datasets; do python -m rnem_jax.data build "$name" --data_dir="$DATA_DIR"; done

for r in $RUN_LIST; do echo "${r%%:*} ${r##*:}"; done \
  | xargs -P "$JOBS" -L 1 bash -c 'run_one "$0" "$1"'

workdirs=$(for r in $RUN_LIST; do echo "$RUNS/${r%%:*}_s${r##*:}"; done)
if [ -n "${ARCHIVE:-}" ]; then
  for wd in $workdirs; do
    dest="$ARCHIVE/$(basename "$wd")"
    mkdir -p "$dest"
    for f in config.json train_log.jsonl metrics.json metrics_extrapolation.json rollout.json \
             rollout_ablation.json occlusion.json; do
      if [ -f "$wd/$f" ]; then cp "$wd/$f" "$dest/"; fi
    done
  done
fi
dirs=$(printf '%s,' $workdirs)
python -m rnem_jax.summarize --runs="$dirs" --out="$OUT/summary.json" --report_dir="$OUT"
for r in ${FIGURE_RUNS:-rnem:0 rnn_em:0 rnn:0}; do
  m=${r%%:*}; wd="$RUNS/${m}_s${r##*:}"
  [ -f "$wd/metrics.json" ] || continue
  python -m rnem_jax.main --mode=visualize --workdir="$wd" --figures_dir="$OUT/figures/$m"
done
