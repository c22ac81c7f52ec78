#!/usr/bin/env python
"""Release-exact vs fast preprocessing (vision.preprocess=release|fast), per source resolution.

For a 6 s clip (moving shapes, H.264, 25 fps) at each resolution, segment [0, 5) is turned into the
encoders' inputs both ways, the encoders left out:

    release  the release's frame picks (first frame at or after accumulated k / fps targets), each as
             full-size RGB, PIL bilinear 512x512 (SigLIP2) and antialiased bicubic short side 224 +
             centre crop (Synchformer) -- foley_dist.media.video.release_picks + foley_dist.media.preprocess
    fast     the frame on screen at k / fps, scaled by swscale straight from the decoded planes
             -- foley_dist.media.video.decode_segment

Each (resolution, mode) runs in a fresh process: time = decode + preprocess of the segment; peak =
peak RSS (VmHWM, reset after the imports) minus RSS then. The parent compares fast against release:
input error = relative L2 error of the normalised encoder inputs (frame choice and scaling together);
scaling error = the same with the fast path's scaling applied to the release's frames (frame choice
left out); feature error = the fast inputs through random encoders of the release's input sizes and widths, 2 layers
deep (SigLIP 512/16 x 768, Synchformer 224/16 x 768; a proxy: the real weights are not available here),
on the Synchformer tokens both modes share (fast pads 125 frames to 15 windows, release keeps 14).

    python scripts/bench_preprocess.py [--json out/bench_preprocess.json] [--workdir /tmp/foley_pre]
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

RESOLUTIONS = {"360p": (640, 360), "1080p": (1920, 1080), "2160p": (3840, 2160)}
MODES = ("release", "fast")
ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}


def inputs(path: str, mode: str):
    """uint8 encoder inputs (SigLIP [T, 3, 512, 512], Synchformer [T, 3, 224, 224]) of segment [0, 5)
    and the source times of their frames."""
    import torch

    from foley_dist.media import video
    from foley_dist.media.preprocess import siglip_frame, sync_frame
    from foley_dist.media.segments import Segment

    if mode == "fast":
        seg = Segment(0, 0.0, 5.0)
        vt, st = video.sample_times(seg, 8), video.sample_times(seg, 25)
        return (video.decode_segment(path, vt, (512, 512), "resize"),
                video.decode_segment(path, st, (224, 224), "center_crop"), {"visual": vt, "sync": st})
    visual, sync, vt, st = [], [], [], []
    for t, rgb, (n_visual, n_sync) in video.release_picks(path, 0.0, 5.0, (8, 25)):
        visual += [siglip_frame(rgb, 512)] * n_visual
        sync += [sync_frame(rgb, 224)] * n_sync
        vt += [t] * n_visual
        st += [t] * n_sync
    return torch.stack(visual), torch.stack(sync), {"visual": vt, "sync": st}


def child(path: str, mode: str, out: str) -> None:
    import torch

    baseline = reset_peak_rss()
    start = time.perf_counter()
    visual, sync, times = inputs(path, mode)
    seconds = time.perf_counter() - start
    peak = (peak_rss_since_reset() - baseline) / 1e6
    torch.save({"visual": visual, "sync": sync, "times": times}, out)
    print(json.dumps({"seconds": seconds, "peak_mb": peak}))


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def scaling_errors(path: str, times: dict, release: dict) -> dict[str, float]:
    """Fast scaling of the very frames the release picked (decode_segment at their timestamps)."""
    from foley_dist.media import video
    from foley_dist.models.siglip import normalize_frames

    visual = video.decode_segment(path, times["visual"], (512, 512), "resize")
    sync = video.decode_segment(path, times["sync"], (224, 224), "center_crop")
    return {"visual_scaling_err": rel(normalize_frames(visual), normalize_frames(release["visual"])),
            "sync_scaling_err": rel(normalize_frames(sync), normalize_frames(release["sync"]))}


def feature_errors(release: dict, fast: dict) -> dict[str, float]:
    import torch

    from foley_dist.models.siglip import VisualEncoder, VisualEncoderConfig, normalize_frames
    from foley_dist.models.synchformer import SyncEncoder, SyncEncoderConfig

    torch.manual_seed(0)
    visual = VisualEncoder.from_config(VisualEncoderConfig(layers=2)).eval()
    sync = SyncEncoder(SyncEncoderConfig(depth=2)).eval()
    with torch.inference_mode():
        v_rel, v_fast = visual(release["visual"]), visual(fast["visual"])
        s_rel, s_fast = sync(release["sync"], pad_tail=False), sync(fast["sync"])
    n = s_rel.shape[1]
    sync_in = min(len(release["sync"]), len(fast["sync"]))
    return {"visual_input_err": rel(normalize_frames(fast["visual"]), normalize_frames(release["visual"])),
            "sync_input_err": rel(normalize_frames(fast["sync"][:sync_in]), normalize_frames(release["sync"][:sync_in])),
            "visual_feat_err": rel(v_fast, v_rel), "sync_feat_err": rel(s_fast[:, :n], s_rel),
            "sync_frames": [len(release["sync"]), len(fast["sync"])]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="out/bench_preprocess.json")
    ap.add_argument("--workdir", default="/tmp/foley_pre")
    ap.add_argument("--child", nargs=3, metavar=("VIDEO", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    import torch

    from foley_dist.media.testclip import make_clip

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (width, height) in RESOLUTIONS.items():
        clip = work / f"{name}.mp4"
        if not clip.is_file():
            make_clip(clip, 6.0, width, height, fps=25, seed=1)
        row: dict = {"resolution": name}
        tensors = {}
        for mode in MODES:
            out = work / f"{name}_{mode}.pt"
            r = subprocess.run([sys.executable, __file__, "--child", str(clip), mode, str(out)], capture_output=True,
                               text=True, env={**os.environ, **ENV}, check=True)
            m = json.loads(r.stdout.strip().splitlines()[-1])
            row[f"{mode}_s"], row[f"{mode}_peak_mb"] = round(m["seconds"], 3), round(m["peak_mb"], 1)
            tensors[mode] = torch.load(out)
        errors = {**scaling_errors(str(clip), tensors["release"]["times"], tensors["release"]),
                  **feature_errors(tensors["release"], tensors["fast"])}
        row.update({k: (round(v, 5) if isinstance(v, float) else v) for k, v in errors.items()})
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    columns = [("source", "resolution"), ("release s", "release_s"), ("fast s", "fast_s"),
               ("release MB", lambda r: f"{r['release_peak_mb']:.0f}"), ("fast MB", lambda r: f"{r['fast_peak_mb']:.0f}"),
               ("SigLIP scale/in/feat", lambda r: f"{r['visual_scaling_err']:.3f}/{r['visual_input_err']:.3f}/{r['visual_feat_err']:.3f}"),
               ("sync scale/in/feat", lambda r: f"{r['sync_scaling_err']:.3f}/{r['sync_input_err']:.3f}/{r['sync_feat_err']:.3f}")]
    benchio.emit(rows, columns, args.json)


if __name__ == "__main__":
    main()
