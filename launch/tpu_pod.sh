#!/bin/bash
# R-NEM on a Cloud TPU VM pod slice: the same command on every worker (multi-controller JAX).
#
#   export TPU_NAME=rnem-pod ZONE=us-central2-b SHARED=/mnt/shared
#   REPO_URL=https://github.com/<you>/rnem_jax.git bash launch/tpu_pod.sh setup
#   bash launch/tpu_pod.sh all configs/balls.py rnem_paper     # train, eval, rollout, figures
#
# Commands: setup (clone, venv, `pip install -e "<repo>[tpu]"` on every worker; idempotent), all
# (datasets, then train + eval + rollout on every worker, then figures), train (datasets, then
# training on every worker), eval (eval + rollout on every worker, then figures). Arguments after
# the command: config (default configs/balls.py), run name (default rnem_paper; the run directory
# is $SHARED/runs/<name>), then flags for rnem_jax.main (e.g. --config.train.batch_size=128).
#
# On the workers: the checkout RNEM_REPO_DIR (default $HOME/rnem_jax) and the virtual environment
# RNEM_VENV (default $HOME/.venvs/rnem_jax-tpu; both expanded on the workers, no spaces). setup
# creates the venv only if missing (from PYTHON, default the workers' python3 if it is 3.11 or
# newer, else python3.11 installed with apt) and reinstalls only when pyproject.toml changed.
# RNEM_DRY_RUN=1 prints the gcloud commands instead of running them.
#
# SHARED must be a directory every worker sees (a Filestore NFS share or a gcsfuse-mounted
# bucket, mounted by you at the same path on all workers): run directories and datasets live
# there, because orbax checkpoints are written by all processes. On TPU VMs
# jax.distributed.initialize() needs no arguments (run by `rnem_jax.main --distributed`);
# config.train.batch_size must be a multiple of the number of TPU chips
# (cores on v2/v3) of the slice. Every process takes part in every step, evaluation included:
# each rnem_jax.main command runs with --worker=all.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${SHARED:?set SHARED (shared mount path)}"
CMD=${1:?usage: tpu_pod.sh setup|all|train|eval [config] [run name] [flags...]}
CONFIG=${2:-configs/balls.py}
RUN=${3:-rnem_paper}
shift $(( $# < 3 ? $# : 3 ))
EXTRA="$*"
# The datasets the config reads (built once before training; the builders are deterministic).
DATASETS=${DATASETS:-"bouncing_balls/balls4mass64 bouncing_balls/balls678mass64"}
REPO_DIR=${RNEM_REPO_DIR:-\$HOME/rnem_jax}
VENV=${RNEM_VENV:-\$HOME/.venvs/rnem_jax-tpu}
PY=$VENV/bin/python3
SSH=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE")
ENV="set -e; export RNEM_DATA_DIR=$SHARED/rnem_data; cd $REPO_DIR"
MAIN="$PY -m rnem_jax.main --distributed --config=$CONFIG --workdir=$SHARED/runs/$RUN"
run() {  # the command, or with RNEM_DRY_RUN=1 its shell-quoted form after "+ "
  if [ "${RNEM_DRY_RUN:-0}" = 1 ]; then printf '+'; printf ' %q' "$@"; echo; else "$@"; fi
}

datasets() {  # once, on worker 0 with all its cores, before the processes that read them
  run "${SSH[@]}" --worker=0 --command="$ENV; for n in $DATASETS; do \
    $PY -m rnem_jax.data build \$n; done"
}
figures() {  # one ordinary (not distributed) process, from the checkpoint
  run "${SSH[@]}" --worker=0 --command="$ENV; \
    $PY -m rnem_jax.main --mode=visualize --config=$CONFIG --workdir=$SHARED/runs/$RUN $EXTRA"
}

case "$CMD" in
  setup)  # on every worker: clone if missing, venv if missing, install if pyproject.toml changed
    NEW_ENOUGH="python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'"  # jax 0.10 needs it
    STAMP=$VENV/.rnem_jax_installed
    run "${SSH[@]}" --worker=all --command="set -e; \
      if [ ! -d $REPO_DIR/.git ]; then git clone ${REPO_URL:?set REPO_URL} $REPO_DIR; fi; \
      if [ ! -x $PY ]; then \
        py=${PYTHON:-python3}; \
        if [ -z '${PYTHON:-}' ] && ! $NEW_ENOUGH; then py=python3.11; \
          sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv; fi; \
        mkdir -p \$(dirname $VENV); \
        \$py -m venv $VENV || { sudo apt-get install -y -q python3-venv && \$py -m venv $VENV; }; \
        $PY -m pip install -q --upgrade pip; fi; \
      stamp=\"\$(sha256sum $REPO_DIR/pyproject.toml | cut -d' ' -f1) tpu\"; \
      if [ \"\$(cat $STAMP 2>/dev/null)\" != \"\$stamp\" ]; then \
        $PY -m pip install -q -e \"$REPO_DIR[tpu,atari]\" && echo \"\$stamp\" > $STAMP; \
      else echo \"rnem_jax[tpu] already installed in $VENV\"; fi"
    ;;
  all)    # datasets, then training, evaluation and rollout on every worker, then figures
    datasets
    run "${SSH[@]}" --worker=all --command="$ENV; $MAIN --mode=all $EXTRA"
    figures
    ;;
  train)  # datasets, then training on every worker
    datasets
    run "${SSH[@]}" --worker=all --command="$ENV; $MAIN --mode=train $EXTRA"
    ;;
  eval)   # metrics and the rollout on every worker (one multi-process job each), then figures
    run "${SSH[@]}" --worker=all --command="$ENV; $MAIN --mode=eval $EXTRA; \
      $MAIN --mode=rollout $EXTRA"
    figures
    ;;
  *) echo "unknown command $CMD (setup|all|train|eval)" >&2; exit 2 ;;
esac
