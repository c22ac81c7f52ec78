#!/usr/bin/env bash
# One node, one process per GPU (or per CPU rank): NPROC ranks, layout from config.
#   NPROC=4 launch/single_node.sh generate video=clip.mp4 prompt="rain" layout=replicated
set -euo pipefail
exec torchrun --standalone --nproc_per_node="${NPROC:-3}" -m foley_dist "$@"
