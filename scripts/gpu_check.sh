#!/usr/bin/env bash
# GPU check (issue 10, item 9): run whenever a CUDA GPU is available; under 8 minutes on one GPU.
#   1. the CUDA tests (tests/gpu),
#   2. a bf16 `generate` with a random full-size XL DiT (model=tiny encoders + the built-in XL config),
#   3. per-stage peak GPU memory next to `foley-dist plan`'s figure, and the DiT step time
#      (scripts/gpu_stage_memory.py, random release-size weights, no checkpoint needed).
# usage: bash scripts/gpu_check.sh [OUTDIR]   (default out/gpu_check; a python with foley_dist on PATH or $PYTHON)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${1:-out/gpu_check}"
XL_CONFIG="foley_dist/models/configs/hunyuanvideo-foley-xl.yaml"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1

"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: nothing to check")'
"$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, {p.total_memory / 1e9:.0f} GB, torch {torch.__version__}")'

echo "== 1/3 CUDA tests"
timeout 200 "$PYTHON" -m pytest -q tests/gpu

echo "== 2/3 bf16 generate, random full-size XL DiT"
CLIP="$OUT/clip.mp4"
"$PYTHON" scripts/make_clip.py --out "$CLIP" --seconds 5 --width 640 --height 360
timeout 120 "$PYTHON" -m foley_dist generate video="$CLIP" prompt="footsteps on gravel" model=tiny \
  model.config="$XL_CONFIG" model.steps=10 hardware=gpu hardware.precision=bf16 vision.cache=off \
  progress=false output="$OUT/xl_random.wav"
"$PYTHON" - "$OUT/xl_random.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
rank = report["ranks"][0]
print(f"generate: wall {report['wall_s']} s, stage busy {report['stage_busy_s']}, "
      f"CUDA peak {rank.get('cuda_peak_allocated_mb')} MB")
PY

echo "== 3/3 peak memory per stage vs plan, DiT step time"
timeout 120 "$PYTHON" scripts/gpu_stage_memory.py --video "$CLIP" --model hunyuan_xl --json "$OUT/stage_memory.json"
"$PYTHON" -m foley_dist plan video="$CLIP" gpus=1 gpu_memory=80GB model=hunyuan_xl
echo "gpu_check: done ($OUT)"
