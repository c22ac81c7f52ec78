#!/usr/bin/env bash
# The demo: make a 12 s 3840x2160 test clip with moving objects, then score it on 3 ranks
# (vision / fusion / diffusion) with torchrun. Writes out/demo.wav, out/demo.json (run report)
# and out/demo_trace.json (Chrome/Perfetto trace).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out
if [ ! -s out/demo_4k.mp4 ]; then
  python scripts/make_clip.py --seconds 12 --width 3840 --height 2160 --fps 24 --out out/demo_4k.mp4
fi
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} torchrun --standalone --nproc_per_node=3 -m foley_dist generate \
  video=out/demo_4k.mp4 prompt="footsteps and bouncing balls on a wooden floor" \
  output=out/demo.wav trace=out/demo_trace.json "$@"
