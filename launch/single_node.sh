#!/usr/bin/env bash
# One node, one process per GPU (or per CPU rank): NPROC ranks, layout from config. Exits with the
# failing rank's code (2 bad input, 3 a rank died, 4 batch partly failed, 143 terminated).
#   NPROC=4 launch/single_node.sh generate video=clip.mp4 prompt="rain" layout=replicated
set -euo pipefail
exec "${PYTHON:-python}" -m foley_dist launch --standalone --nproc-per-node="${NPROC:-3}" -- "$@"
