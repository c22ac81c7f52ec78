#!/usr/bin/env bash
# GPU check (issue 10 item 9, issue 17 item 9): run whenever a CUDA GPU is available; at most 11.5 minutes on one GPU.
#   1. the CUDA tests (tests/gpu),
#   2. a bf16 `generate` with a random full-size XL DiT (model=tiny encoders + the built-in XL config),
#   3. per-stage GPU memory next to `foley-dist plan`'s figures, and the DiT step time
#      (scripts/gpu_stage_memory.py, random release-size weights, no checkpoint needed).
# Each step has its own time limit, and a failed or timed-out step does not stop the others: every
# figure is printed, then a summary line per step; the exit status is 1 if any step failed.
# usage: bash scripts/gpu_check.sh [OUTDIR]   (default out/gpu_check; a python with foley_dist on PATH or $PYTHON)
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
PYTHON="${PYTHON:-python}"
OUT="${1:-out/gpu_check}"
XL_CONFIG="foley_dist/models/configs/hunyuanvideo-foley-xl.yaml"
CLIP="$OUT/clip.mp4"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
declare -a SUMMARY=()
FAILED=0

# step NAME SECONDS CMD...: run CMD under its own time limit and record how it ended.
step() {
  local name="$1" limit="$2" rc
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  case $rc in
    0) SUMMARY+=("ok      $name") ;;
    124|137) SUMMARY+=("TIMEOUT $name (over ${limit}s)"); FAILED=1 ;;
    *) SUMMARY+=("FAILED  $name (exit $rc)"); FAILED=1 ;;
  esac
}

"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: nothing to check")' || exit 2
"$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, {p.total_memory / 1e9:.0f} GB, torch {torch.__version__}")'

step "1/3 CUDA tests" 240 "$PYTHON" -m pytest -q tests/gpu
step "make the clip" 60 "$PYTHON" scripts/make_clip.py --out "$CLIP" --seconds 5 --width 640 --height 360
step "2/3 bf16 generate, random full-size XL DiT" 150 "$PYTHON" -m foley_dist generate video="$CLIP" \
  prompt="footsteps on gravel" model=tiny model.config="$XL_CONFIG" model.steps=10 hardware=gpu \
  hardware.precision=bf16 vision.cache=off progress=false output="$OUT/xl_random.wav"
step "3/3 GPU memory per stage vs plan, DiT step time" 180 "$PYTHON" scripts/gpu_stage_memory.py --video "$CLIP" \
  --model hunyuan_xl --json "$OUT/stage_memory.json"
step "plan for the same clip" 60 "$PYTHON" -m foley_dist plan video="$CLIP" gpus=1 gpu_memory=80GB model=hunyuan_xl

echo "== figures"
"$PYTHON" - "$OUT/xl_random.json" "$OUT/stage_memory.json" <<'PY'
import json, sys
from pathlib import Path

report, memory = (Path(p) for p in sys.argv[1:])
if report.is_file():
    r = json.loads(report.read_text())
    rank = r["ranks"][0]
    print(f"generate: wall {r['wall_s']} s, stage busy {r['stage_busy_s']}, CUDA peak "
          f"{rank.get('cuda_peak_allocated_mb')} MB, NVML peak {rank.get('nvml_used_peak_mb')} MB, "
          f"GPU utilisation {rank.get('gpu_utilization_pct')} %")
else:
    print(f"generate: no report ({report} missing)")
if memory.is_file():
    for row in json.loads(memory.read_text())["stages"]:
        print("stage memory: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
else:
    print(f"stage memory: no figures ({memory} missing)")
PY
echo "== summary"
printf '%s\n' "${SUMMARY[@]}"
if [ "$FAILED" = 0 ]; then echo "gpu_check: done ($OUT)"; else echo "gpu_check: some steps failed ($OUT)"; fi
exit $FAILED
