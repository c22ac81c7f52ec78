#!/usr/bin/env python
"""Rewrite foley_dist/planning/host_calibration.json: host seconds per frame on THIS machine's class.

Run it on a node of the class the jobs will run on (the GPU nodes' CPUs), on an otherwise idle machine:

    python scripts/calibrate_host.py [--out foley_dist/planning/host_calibration.json] [--workdir /tmp/foley_cal]
        [--cuda-tflops 350]

It makes noise-heavy, high-bitrate clips (camera-like: the expensive case for a decoder) at 540p and
1080p in H.264 and, when PyAV's FFmpeg has libx265, HEVC; times each operation of the release-exact
preparation on one thread (scripts/bench_host_prep.py `ops`: decoding without codec threads, RGB
conversion, SigLIP2 and Synchformer resizes) and fits milliseconds per frame as a line in megapixels.
It also times a 1024^3 fp32 matmul on one torch thread (CPU stages' device seconds). The CUDA
throughput is not measured here (no GPU needed): it keeps --cuda-tflops, an effective bf16 figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import av
import torch

import bench_host_prep as bench

from foley_dist.media.frameprep import affinity_cores

SIZES = {"540p": (960, 540), "1080p": (1920, 1080)}
OPS = {  # calibration op -> the bench's per-frame ops summed into it
    "rgb24": ("RGB conversion (rgb24)",),
    "siglip_pil": ("fromarray", "SigLIP2 resize, PIL", "tensor packing (SigLIP2 slot)"),
    "siglip_torch": ("SigLIP2 resize, torch",),
    "sync": ("Synchformer resize + crop",),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def line(points: list[tuple[float, float]]) -> list[float]:
    """[intercept, slope] of the line through two (megapixels, ms) points, intercept >= 0."""
    (x0, y0), (x1, y1) = points
    slope = (y1 - y0) / (x1 - x0)
    return [round(max(0.0, y0 - slope * x0), 4), round(slope, 4)]


def matmul_gflops() -> float:
    torch.set_num_threads(1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    return round(5 * 2 * 1024**3 / (time.perf_counter() - start) / 1e9, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "foley_dist/planning/host_calibration.json"))
    ap.add_argument("--workdir", default="/tmp/foley_cal")
    ap.add_argument("--cuda-tflops", type=float, default=350.0)
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    codecs = ["h264"] + (["hevc"] if "libx265" in av.codecs_available else [])
    measured: dict[str, list[tuple[float, float]]] = {}
    for codec in codecs:
        for name, (w, h) in SIZES.items():
            path = work / f"noise_{name}_{codec}.mp4"
            if not path.exists():
                bench.noise_clip(path, w, h, codec)
            out = work / "ops.json"
            subprocess.run([sys.executable, bench.__file__, "--child", str(path), "ops", str(out)], check=True,
                           env={**bench.os.environ, **bench.ENV})
            ops = json.loads(out.read_text())
            mpx = w * h / 1e6
            measured.setdefault(f"decode_{codec}", []).append((mpx, ops["decode (+ pick)"]))
            if codec == "h264":
                for op, parts in OPS.items():
                    measured.setdefault(op, []).append((mpx, sum(ops[p] for p in parts)))
    calibration = {
        "machine": f"{cpu_name()}, {affinity_cores()} cores",
        "measured": time.strftime("%Y-%m-%d"),
        "per_frame_ms": {op: line(points) for op, points in measured.items()},
        "cpu_gflops_per_thread": matmul_gflops(),
        "cuda_tflops": args.cuda_tflops,
    }
    Path(args.out).write_text(json.dumps(calibration, indent=2) + "\n")
    print(json.dumps(calibration, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
