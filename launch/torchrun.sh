#!/usr/bin/env bash
# Launch mmdlrm training on this machine with torchrun: one process per GPU, or NPROC processes on CPU.
#   launch/torchrun.sh configs/debug.yaml [key=value ...]
#   NPROC=4 launch/torchrun.sh configs/ml25m.yaml sharding.plan=table_wise
# Several machines: set NNODES, NODE_RANK and MASTER_ADDR (MASTER_PORT) on each, as torchrun documents.
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:?usage: launch/torchrun.sh CONFIG [key=value ...]}"
shift
if [ -z "${NPROC:-}" ]; then
  gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
  NPROC=$(( gpus > 0 ? gpus : 2 ))
fi
exec "${VENV:-.venv}/bin/torchrun" \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --nproc_per_node="$NPROC" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
  -m mmdlrm train --config "$config" "$@"
