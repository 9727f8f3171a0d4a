#!/usr/bin/env bash
# The GPU/TPU device check (rnem_jax/device_check.py): the paper-scale step with both
# convolution implementations, with and without remat, on one and all devices; the paper
# dataset built with every core; the input pipeline's rate; 300 paper-scale training steps.
# Within ~8 minutes; writes results/gpu/device_check.json (or $1) as it goes.
#   bash launch/device_check.sh [OUT.json] [--flag=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/gpu/device_check.json}"
shift || true
export RNEM_DATA_DIR="${RNEM_DATA_DIR:-$HOME/tensorflow_datasets}"
python3 -c "import jax; print('backend', jax.default_backend(), jax.devices())"
exec python3 -m rnem_jax.device_check --out="$out" "$@"
