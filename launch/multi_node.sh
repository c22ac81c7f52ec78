#!/usr/bin/env bash
# Several nodes, c10d rendezvous on the first one. Run the same command on every node:
#   NNODES=2 NPROC=4 RDZV_ENDPOINT=node0:29400 launch/multi_node.sh generate video=... layout.ranks=[...]
# Global rank order follows node order, so layout entries map to node 0's GPUs first.
set -euo pipefail
: "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of the first node}"
exec torchrun --nnodes="${NNODES:-2}" --nproc_per_node="${NPROC:-1}" \
  --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-foley_dist}" \
  --max-restarts="${MAX_RESTARTS:-0}" -m foley_dist "$@"
