#!/usr/bin/env bash
# Several nodes. Run the same command on every node:
#   NNODES=2 NPROC=4 RDZV_ENDPOINT=node0:29400 launch/multi_node.sh generate video=... layout.ranks=[...]
# c10d rendezvous decides which node gets which global ranks. To pin them (layout entries map to node
# 0's ranks first), also set NODE_RANK=0,1,... per node: static rendezvous at RDZV_ENDPOINT.
# Exits with the failing rank's code (2 bad input, 3 a rank died, 4 batch partly failed, 143 terminated).
set -euo pipefail
: "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of the first node}"
if [ -n "${NODE_RANK:-}" ]; then
  rdzv=(--node-rank="$NODE_RANK" --master-addr="${RDZV_ENDPOINT%:*}" --master-port="${RDZV_ENDPOINT##*:}")
else
  rdzv=(--rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-foley_dist}")
fi
exec "${PYTHON:-python}" -m foley_dist launch --nnodes="${NNODES:-2}" --nproc-per-node="${NPROC:-1}" "${rdzv[@]}" \
  --max-restarts="${MAX_RESTARTS:-0}" -- "$@"
