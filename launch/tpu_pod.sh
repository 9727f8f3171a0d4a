#!/bin/bash
# R-NEM on a Cloud TPU VM pod slice: the same command on every worker (multi-controller JAX).
#
#   TPU_NAME=rnem-pod ZONE=us-central2-b REPO_URL=https://github.com/YOUR_ORG/rnem_jax.git \
#     SHARED=/mnt/shared bash launch/tpu_pod.sh setup
#   TPU_NAME=rnem-pod ZONE=us-central2-b SHARED=/mnt/shared bash launch/tpu_pod.sh train \
#     configs/balls.py rnem_paper
#   TPU_NAME=rnem-pod ZONE=us-central2-b SHARED=/mnt/shared bash launch/tpu_pod.sh eval \
#     configs/balls.py rnem_paper
#
# SHARED must be a directory every worker sees (a Filestore NFS share or a gcsfuse-mounted
# bucket, mounted by you at the same path on all workers): run directories and datasets live
# there, because orbax checkpoints are written by all processes. On TPU VMs
# jax.distributed.initialize() needs no arguments (run by `rnem_jax.main --distributed`);
# config.train.batch_size must be a multiple of the number of TPU chips
# (cores on v2/v3) of the slice.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${SHARED:?set SHARED (shared mount path)}"
CMD=${1:?usage: tpu_pod.sh setup|train|eval [config] [run name] [flags...]}
CONFIG=${2:-configs/balls.py}
RUN=${3:-rnem_paper}
shift $(( $# < 3 ? $# : 3 ))
EXTRA="$*"
# The datasets the config reads (built once before training; the builders are deterministic).
DATASETS=${DATASETS:-"bouncing_balls/balls4mass64 bouncing_balls/balls678mass64"}
SSH=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE")
ENV="export RNEM_DATA_DIR=$SHARED/rnem_data; cd \$HOME/rnem_jax"

case "$CMD" in
  setup)  # clone and install on every worker; jax[tpu] matches the project's jax pin
    "${SSH[@]}" --worker=all --command="git clone ${REPO_URL:?set REPO_URL} \$HOME/rnem_jax \
      && cd \$HOME/rnem_jax && pip install -e . 'jax[tpu]>=0.10,<0.11'"
    ;;
  train)  # datasets once (worker 0, all its cores), then training on all workers
    "${SSH[@]}" --worker=0 --command="$ENV; for n in $DATASETS; do \
      python -m rnem_jax.data build \$n || exit 1; done"
    "${SSH[@]}" --worker=all --command="$ENV; python -m rnem_jax.main --distributed \
      --config=$CONFIG --workdir=$SHARED/runs/$RUN --mode=train $EXTRA"
    ;;
  eval)   # single process on worker 0: metrics, simulation and figures
    "${SSH[@]}" --worker=0 --command="$ENV; \
      python -m rnem_jax.main --config=$CONFIG --workdir=$SHARED/runs/$RUN --mode=eval $EXTRA \
      && python -m rnem_jax.main --config=$CONFIG --workdir=$SHARED/runs/$RUN --mode=rollout $EXTRA \
      && python -m rnem_jax.visualize --config=$CONFIG --workdir=$SHARED/runs/$RUN $EXTRA"
    ;;
  *) echo "unknown command $CMD (setup|train|eval)" >&2; exit 2 ;;
esac
