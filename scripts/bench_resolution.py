"""Peak host memory and wall time of the vision stage's frame decoding, per source resolution, with
the planner's estimate (foley_dist.planning.estimates.decode_memory) beside each measurement.

The same 10 s clip (moving shapes, H.264) is written at each resolution; every segment of its plan is
decoded for SigLIP (8 fps, 512 x 512 resize) and Synchformer (25 fps, 224 x 224 centre crop), the
encoders left out, three ways:

    naive  decode each sampled frame to full-resolution RGB into one [T, H, W, 3] array (as a
           decord `get_batch` pipeline does), then resize
    model  foley_dist.media.video.decode_segment: swscale scales straight to model resolution
    tiled  foley_dist.media.tiling: stream working-resolution frames (video.iter_frames), cut and resize tiles
           (the tile encoder is a stand-in that just subsamples: the SigLIP cost is not decoding)
    decoder the decoder alone: frames converted to 16 x 16 and dropped; the planner's decoder
           constants (DECODER_BASE, DECODER_FRAMES) are fitted on these rows

Each (resolution, mode) runs in a fresh process with a fixed glibc mmap threshold, so RSS follows the
tensors (see scripts/calibrate_plan.py); peak = peak RSS (VmHWM, reset after the imports) minus RSS then.

    python scripts/bench_resolution.py [--json out/bench_resolution.json] [--workdir /tmp/foley_res]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import benchio

from foley_dist.engine.metrics import peak_rss_since_reset, reset_peak_rss

RESOLUTIONS = ("360p", "480p", "720p", "1080p", "1440p", "2160p")
MODES = ("naive", "model", "tiled", "decoder")
SECONDS, FPS = 10.0, 25
SPEC = "hunyuan_xxl"  # only its encoder input sizes and frame rates are used
ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
MB = 1e6


def naive_pass(path: str, times: list[float], side: int, crop: bool):
    """Every sampled frame as full-resolution RGB in one [T, 3, H, W] array (as a decord `get_batch`
    pipeline holds them), then resized to S x S, or to cover S x S and centre-cropped."""
    import torch
    import torch.nn.functional as F

    from foley_dist.media import video

    info = video.probe(path)
    frames = torch.empty(len(times), 3, info.height, info.width, dtype=torch.uint8)
    for k, frame in enumerate(video.iter_frames(path, times, (info.height, info.width))):
        frames[k] = frame
    scale = side / min(info.height, info.width) if crop else None
    size = (max(side, round(info.height * scale)), max(side, round(info.width * scale))) if crop else (side, side)
    out = F.interpolate(frames, size=size, mode="bilinear", antialias=True)
    top, left = (size[0] - side) // 2, (size[1] - side) // 2
    return out[..., top : top + side, left : left + side].contiguous() if crop else out


def child(mode: str, path: str) -> None:
    """Decode every segment of `path` the `mode` way in this fresh process; prints one JSON line."""
    import torch

    from foley_dist.config import VisionConfig
    from foley_dist.media import tiling, video
    from foley_dist.media.segments import SegmentPlan
    from foley_dist.models.foley import ModelSpec

    torch.set_num_threads(1)
    spec, vision = ModelSpec.named(SPEC), VisionConfig()
    info = video.probe(path)
    plan = SegmentPlan.build(info.duration, 5.0, 1.0)
    visual, sync = spec.visual.image_size, spec.sync.image_size
    baseline, start = reset_peak_rss(), time.perf_counter()
    for seg in plan.segments:
        vt, st = video.sample_times(seg, spec.visual_fps), video.sample_times(seg, spec.sync_fps)
        if mode == "naive":
            features = naive_pass(path, vt, visual, crop=False)
            del features
            features = naive_pass(path, st, sync, crop=True)
        elif mode == "model":
            features = video.decode_segment(path, vt, (visual, visual), "resize")
            del features
            features = video.decode_segment(path, st, (sync, sync), "center_crop")
        elif mode == "decoder":
            for _ in video.iter_frames(path, st, (16, 16)):
                pass
            features = None
        else:
            grid = tiling.plan_grid(info.height, info.width, vision.tile_size, vision.overlap_ratio)
            features = tiling.encode_tiled(lambda x: x[:, :, ::64, ::64].float().flatten(1),
                                           video.iter_frames(path, vt, (grid.height, grid.width)), grid, visual,
                                           vision.tile_batch)
            del features
            features = video.decode_segment(path, st, (sync, sync), "center_crop")
        del features
    print(json.dumps({"wall_s": time.perf_counter() - start, "peak": peak_rss_since_reset() - baseline, "segments": len(plan)}))


def fit_decoder(rows: list[dict]) -> tuple[float, float]:
    """Least squares of the decoder-only peak = base + (1 + frames) * 1.5 W H."""
    xs = [1.5 * r["width"] * r["height"] for r in rows if r["mode"] == "decoder"]
    ys = [r["peak_mb"] * MB for r in rows if r["mode"] == "decoder"]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--workdir", default="/tmp/foley_bench_resolution", help="generated clips (kept for reruns)")
    parser.add_argument("--resolutions", nargs="+", default=list(RESOLUTIONS), choices=list(RESOLUTIONS))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from foley_dist.media.testclip import make_clip
    from foley_dist.models.foley import ModelSpec
    from foley_dist.planning import estimates, plan

    spec, rows = ModelSpec.named(SPEC), []
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    for name in args.resolutions:
        width, height = plan.RESOLUTIONS[name]
        width -= width % 2  # 854x480: H.264 4:2:0 needs even sizes
        clip = Path(args.workdir) / f"clip_{width}x{height}.mp4"
        encode_s = 0.0
        if not clip.exists():
            start = time.perf_counter()
            make_clip(clip, SECONDS, width, height, fps=FPS)
            encode_s = time.perf_counter() - start
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(clip)], capture_output=True, text=True,
                                 env={**os.environ, **ENV}, check=False)
            if out.returncode:
                raise RuntimeError(f"{name} {mode} failed:\n{out.stderr[-3000:]}")
            m = json.loads(out.stdout.strip().splitlines()[-1])
            estimate = estimates.decoder_bytes(width, height) if mode == "decoder" else estimates.decode_memory(spec, 5.0, width, height, mode)
            rows.append({"resolution": name, "width": width, "height": height, "mode": mode, "peak_mb": m["peak"] / MB,
                         "plan_mb": estimate / MB, "error": estimate / m["peak"] - 1, "wall_s": m["wall_s"],
                         "realtime": SECONDS / m["wall_s"], "clip_encode_s": encode_s})
            print(f"{name} {mode}: peak {rows[-1]['peak_mb']:.1f} MB", file=sys.stderr, flush=True)  # progress
    columns = [("source", lambda r: f"{r['resolution']} {r['width']}x{r['height']}"), ("mode", "mode"),
               ("peak MB", lambda r: f"{r['peak_mb']:.1f}"), ("plan MB", lambda r: f"{r['plan_mb']:.1f}"),
               ("error", lambda r: f"{r['error']:+.1%}"), ("decode s", "wall_s"), ("x realtime", lambda r: f"{r['realtime']:.1f}")]
    base, frames = fit_decoder(rows) if len(args.resolutions) > 1 else (None, None)  # a line needs two sizes
    benchio.emit(rows, columns, args.json,
                 payload={"rows": rows, "fitted_decoder_base": base, "fitted_decoder_frames": frames})
    if base is not None:
        print(f"fitted decoder constants (decoder rows): DECODER_BASE {base / MB:.1f} MB, DECODER_FRAMES {frames:.2f} "
              f"(planner uses {estimates.DECODER_BASE / MB:.1f} MB, {estimates.DECODER_FRAMES})")
    print("clip encode seconds: " + ", ".join(f"{r['resolution']} {r['clip_encode_s']:.1f}" for r in rows if r["mode"] == "naive"))


if __name__ == "__main__":
    main()
