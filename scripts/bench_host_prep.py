#!/usr/bin/env python
"""Host-side frame preparation of the release-exact vision path: today's serial code vs vision.workers.

Clips (made here, 6 s, 25 fps): the moving-shapes test clip at 360p, 1080p and 2160p (H.264), plus
real-footage stand-ins at 2160p: sensor-like noise at a high bitrate in H.264 and, when PyAV's
FFmpeg has libx265, in HEVC. For segment [0, 5) of each clip, in a fresh process per row:

    today      the serial path as it was before this change: release_picks (RGB per picked frame),
               Image.fromarray(rgb).convert("RGB").resize (SigLIP2 512), sync_frame (Synchformer 224),
               torch.stack -- kept here, not in the package
    workers=N  foley_dist.media.frameprep.FramePrep with N threads (1 = serial, in the caller)
    :torch     the same with vision.siglip_resize=torch (not bit-exact: its deviation is reported)

CPU-s = user + system seconds of the whole process (decoder threads included) for the segment; wall =
its elapsed seconds; peak = peak RSS of the process (VmHWM) and its growth over the imports. Each
row's inputs are compared with `today`'s: `identical` must be yes. `ops` = per-frame milliseconds of
each operation, one thread, on the picked frames. The torch resize's deviation from PIL, on each clip:
max |diff| in uint8 levels, fraction of values that differ, and the relative error of clip_feat (16
frames) through the release's reference SigLIP2 (tiny random weights of the real architecture,
tests/data/reference/official_pipeline); and on the reference clip itself, clip_feat against the
release's own (the fidelity bound is 1e-4). `demo` = the 12 s 4K demo clip's
3 segments through frame preparation back to back (vision busy time less the encoders).

    python scripts/bench_host_prep.py [--json out/bench_host_prep.json] [--workdir /tmp/foley_host]
        [--workers 1 2] [--quick]   (--quick: 360p and 1080p only, no HEVC / demo)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import benchio

SECONDS, FPS, SEGMENT = 6.0, 25, (0.0, 5.0)
BITRATE = 200e6  # bit/s of the noise clips at 4K (scaled by area below): a high-end camera's
VISUAL, SYNC = (8, 512), (25, 224)
DEMO_SPANS = ((0.0, 5.0), (4.0, 9.0), (7.0, 12.0))  # the 12 s demo's 3 segments (5 s, 1 s overlap)
ENV = {"OMP_NUM_THREADS": "1"}


# --- clips ----------------------------------------------------------------------------------------------


def noise_clip(path: Path, width: int, height: int, codec: str) -> Path:
    """Camera-like footage: a slowly panning textured scene under fresh per-frame sensor noise, at a
    high bitrate (the hard case for a decoder: little to predict, many coefficients)."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    scene = rng.integers(30, 220, (height // 8 + 2, width // 8 + 2), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    noise = [rng.integers(-10, 11, (height, width), dtype=np.int16) for _ in range(7)]
    options = {"preset": "ultrafast"} if codec == "h264" else {"preset": "ultrafast", "x265-params": "log-level=error"}
    tmp = path.with_name(f".{path.name}")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264" if codec == "h264" else "libx265", rate=Fraction(FPS), options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = int(BITRATE * width * height / (3840 * 2160))  # camera-like: 200 Mbit/s at 4K
        stream.codec_context.gop_size = 2 * FPS
        for i in range(int(SECONDS * FPS)):
            shift = i * 4
            luma = np.clip(scene[:height, shift % 8 : shift % 8 + width].astype(np.int16) + noise[i % 7], 0, 255)
            yuv = np.empty((height * 3 // 2, width), np.uint8)
            yuv[:height] = luma
            yuv[height:] = np.clip(128 + noise[(i + 3) % 7][: height // 2, :width] // 4, 0, 255)
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    os.replace(tmp, path)
    return path


def make_clips(root: Path, quick: bool) -> dict[str, Path]:
    import av

    from foley_dist.media.testclip import make_clip

    root.mkdir(parents=True, exist_ok=True)
    sizes = {"360p": (640, 360), "1080p": (1920, 1080)} if quick else \
        {"360p": (640, 360), "1080p": (1920, 1080), "2160p": (3840, 2160)}
    clips = {}
    for name, (w, h) in sizes.items():
        path = root / f"shapes_{name}.mp4"
        clips[f"{name} h264 shapes"] = path if path.exists() else make_clip(path, SECONDS, w, h, FPS)
    if not quick:
        for codec in ("h264", "hevc"):
            if codec == "hevc" and "libx265" not in av.codecs_available:
                print("PyAV's FFmpeg has no libx265: no HEVC row", file=sys.stderr)
                continue
            path = root / f"noise_2160p_{codec}.mp4"
            clips[f"2160p {codec} noise"] = path if path.exists() else noise_clip(path, 3840, 2160, codec)
    return clips


# --- the two paths ----------------------------------------------------------------------------------------


def today(path: str, span: tuple[float, float] = SEGMENT):
    """The serial release path before this change (its SigLIP2 step, kept here for the comparison)."""
    import numpy as np
    import torch
    from PIL import Image

    from foley_dist.media.preprocess import sync_frame
    from foley_dist.media.video import release_picks

    visual, sync = [], []
    for _, rgb, (n_visual, n_sync) in release_picks(path, *span, (VISUAL[0], SYNC[0])):
        if n_visual:
            image = Image.fromarray(rgb).convert("RGB").resize((VISUAL[1], VISUAL[1]), Image.BILINEAR)
            visual += [torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()] * n_visual
        if n_sync:
            sync += [sync_frame(rgb, SYNC[1])] * n_sync
    return torch.stack(visual), torch.stack(sync)


def recipe(resize: str = "pil"):
    from foley_dist.media.frameprep import Recipe

    return Recipe(VISUAL[0], SYNC[0], VISUAL[1], SYNC[1], resize)


def prepared(path: str, workers: int, resize: str = "pil", end: float = SEGMENT[1]):
    from foley_dist.media.frameprep import FramePrep

    prep = FramePrep(recipe(resize), workers)
    frames = prep.get(path, SEGMENT[0], end)
    prep.close()
    return frames.visual, frames.sync


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def ops(path: str) -> dict[str, float]:
    """Per-frame milliseconds of each operation (thread CPU time, one thread), over the picked frames."""
    import numpy as np
    import torch
    from PIL import Image

    from foley_dist.media.preprocess import siglip_frame, sync_frame
    from foley_dist.media import video
    from foley_dist.media.video import release_frames, rgb24

    totals: dict[str, float] = {}
    count: dict[str, int] = {}

    def timed(name, fn, *args):
        t = time.thread_time()
        out = fn(*args)
        totals[name] = totals.get(name, 0.0) + time.thread_time() - t
        count[name] = count.get(name, 0) + 1
        return out

    video.PYAV_THREAD_TYPE = "NONE"  # decode on this thread, so its thread time counts the decoding
    frames = release_frames(path, *SEGMENT, (VISUAL[0], SYNC[0]))
    while True:
        item = timed("decode (+ pick)", next, frames, None)
        if item is None:
            break
        _, frame, (n_visual, n_sync) = item
        rgb = timed("RGB conversion (rgb24)", rgb24, frame)
        if n_visual:
            timed("today: fromarray + convert('RGB')", lambda: Image.fromarray(rgb).convert("RGB"))
            image = timed("fromarray", Image.fromarray, rgb)
            small = timed("SigLIP2 resize, PIL", image.resize, (VISUAL[1], VISUAL[1]), Image.BILINEAR)
            timed("SigLIP2 resize, torch", siglip_frame, rgb, VISUAL[1], "torch")
            timed("tensor packing (SigLIP2 slot)", lambda: torch.from_numpy(np.array(small)).permute(2, 0, 1).contiguous())
        if n_sync:
            timed("Synchformer resize + crop", sync_frame, rgb, SYNC[1])
    return {k: round(1e3 * v / count[k], 2) for k, v in totals.items()}


def child(path: str, mode: str, out: str) -> None:
    import torch

    from foley_dist.engine.metrics import peak_rss_since_reset, reset_peak_rss

    torch.set_num_threads(1)
    if mode == "ops":
        Path(out).write_text(json.dumps(ops(path)))
        return
    baseline = reset_peak_rss()
    c0, w0 = cpu_s(), time.perf_counter()
    if mode == "today":
        visual, sync = today(path)
    elif mode == "demo=today":
        for span in DEMO_SPANS:
            visual, sync = today(path, span)
    elif mode.startswith("demo"):
        from foley_dist.media.frameprep import FramePrep

        prep = FramePrep(recipe(), int(mode.split("=")[1]))
        for k, span in enumerate(DEMO_SPANS):
            if k + 1 < len(DEMO_SPANS):
                prep.prefetch(path, *DEMO_SPANS[k + 1])
            frames = prep.get(path, *span)
        prep.close()
        visual, sync = frames.visual, frames.sync
    else:  # workers=N or workers=N:torch (vision.siglip_resize=torch)
        workers, _, resize = mode.split("=")[1].partition(":")
        visual, sync = prepared(path, int(workers), resize or "pil")
    cpu, wall = cpu_s() - c0, time.perf_counter() - w0
    peak = peak_rss_since_reset()
    torch.save({"visual": visual, "sync": sync}, out + ".pt")
    Path(out).write_text(json.dumps({"cpu_s": cpu, "wall_s": wall, "peak_rss_gb": peak / 1e9,
                                     "peak_growth_gb": (peak - baseline) / 1e9}))


def run_child(path: Path, mode: str, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path), mode, str(out)]
    subprocess.run(cmd, check=True, env={**os.environ, **ENV})
    return json.loads(out.read_text())


# --- the torch resize's deviation ---------------------------------------------------------------------------


def resize_deviation(path: str) -> dict:
    pil, fast = prepared(path, 1, "pil")[0], prepared(path, 1, "torch")[0]
    diff = (pil.int() - fast.int()).abs()
    return {"max_level_diff": int(diff.max()), "values_differing": float((diff > 0).float().mean())}


OFFICIAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "reference" / "official_pipeline"


def release_siglip(workdir: Path):
    """The release's reference SigLIP2 (tiny random weights of the real architecture, seed 2718)."""
    from foley_dist.models.release_folder import write_release
    from foley_dist.models.siglip import VisualEncoder

    manifest = json.loads((OFFICIAL / "release_manifest.json").read_text())
    folder = workdir / "release"
    if not (folder / "siglip2" / "model.safetensors").exists():
        write_release(OFFICIAL / "release_manifest.json", folder, seed=2718,
                      skip=tuple(f["path"] for f in manifest["files"] if not f["path"].startswith("siglip2/")))
    return VisualEncoder.from_pretrained_dir(folder / "siglip2").eval()


def feature_deviation(visual, path: str, end: float = SEGMENT[1], frames: int = 16) -> float:
    """Relative error of clip_feat with the torch resize against the PIL (release-exact) one."""
    import torch

    feats = []
    for resize in ("pil", "torch"):
        with torch.inference_mode():
            feats.append(visual(prepared(path, 2, resize, end)[0][:frames]).double())
    return float((feats[1] - feats[0]).norm() / feats[0].norm())


def reference_feature_error(visual) -> dict:
    """clip_feat with each resize on the release's reference clip vs the release's own clip_feat."""
    import torch
    from safetensors.torch import load_file

    want = load_file(OFFICIAL / "expected.safetensors")["clip_feat"].double()
    out = {}
    for resize in ("pil", "torch"):
        with torch.inference_mode():
            got = visual(prepared(str(OFFICIAL / "clip.mp4"), 1, resize, 15.0)[0]).double()
        out[f"reference_clip_feat_rel_err_{resize}"] = float((got - want).norm() / want.norm())
    return out


# --- main -------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="out/bench_host_prep.json")
    ap.add_argument("--workdir", default="/tmp/foley_host")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=3, metavar=("VIDEO", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    import torch

    workdir = Path(args.workdir)
    clips = make_clips(workdir, args.quick)
    rows, op_rows = [], []
    visual = release_siglip(workdir)
    for name, path in clips.items():
        base = run_child(path, "today", workdir / "today.json")
        ref = torch.load(workdir / "today.json.pt")
        dev = {**resize_deviation(str(path)), "feat": feature_deviation(visual, str(path))}
        for mode in ["today", *[f"workers={n}" for n in args.workers], f"workers={max(args.workers)}:torch"]:
            r = base if mode == "today" else run_child(path, mode, workdir / "row.json")
            got = ref if mode == "today" else torch.load(workdir / "row.json.pt")
            same = torch.equal(got["visual"], ref["visual"]) and torch.equal(got["sync"], ref["sync"])
            exact = "yes" if same else "NO"  # the torch resize is not meant to be: its deviation is in the last columns
            rows.append({"part": "host_prep", "clip": name, "mode": mode, **{k: round(v, 3) for k, v in r.items()},
                         "cpu_speedup": round(base["cpu_s"] / r["cpu_s"], 2),
                         "wall_speedup": round(base["wall_s"] / r["wall_s"], 2),
                         "identical": exact if not mode.endswith(":torch") else f"{'yes' if same else 'no'} (torch resize)",
                         "siglip_torch_max_diff": dev["max_level_diff"],
                         "siglip_torch_values_differing": dev["values_differing"],
                         "siglip_torch_feat_rel_err": dev["feat"]})
        op_rows.append({"part": "host_prep_ops", "clip": name, **run_child(path, "ops", workdir / "ops.json")})
    columns = [("clip", "clip"), ("mode", "mode"), ("CPU-s/seg", "cpu_s"), ("wall s/seg", "wall_s"),
               ("peak RSS GB", "peak_rss_gb"), ("RSS growth GB", "peak_growth_gb"), ("CPU speed-up", "cpu_speedup"),
               ("wall speed-up", "wall_speedup"), ("identical", "identical"),
               ("torch resize max diff", "siglip_torch_max_diff"),
               ("values differing", lambda r: f"{100 * r['siglip_torch_values_differing']:.4f} %"),
               ("torch resize clip_feat rel. err", lambda r: f"{r['siglip_torch_feat_rel_err']:.1e}")]
    benchio.emit(rows, columns, title="Frame preparation per 5 s segment (segment [0, 5) s, 25 fps source)")
    names = [k for k in op_rows[0] if k not in ("part", "clip")]
    benchio.emit(op_rows, [("clip", "clip"), *[(n, n) for n in names]],
                 title="Per-frame cost of each operation, ms of one thread")
    extra = [{"part": "host_prep_fidelity", **reference_feature_error(visual)}]
    benchio.emit(extra, [(k, k) for k in extra[0] if k != "part"], digits=8,
                 title="SigLIP2 features on the release's reference clip (320x240: upscaled, both resizes agree) "
                       "vs the release's clip_feat (bound 1e-4)")
    if not args.quick:
        demo = workdir / "demo_4k.mp4"
        if not demo.exists():
            from foley_dist.media.testclip import make_clip
            make_clip(demo, 12, 3840, 2160, 24)
        for mode in ("demo=today", *[f"demo={n}" for n in args.workers]):
            r = run_child(demo, mode, workdir / "demo.json")
            extra.append({"part": "host_prep_demo", "mode": mode, "cpu_s": round(r["cpu_s"], 3),
                          "wall_s": round(r["wall_s"], 3)})
        benchio.emit(extra[1:], [("mode", "mode"), ("CPU-s, 3 segments", "cpu_s"), ("wall s, 3 segments", "wall_s")],
                     title="12 s 4K demo clip (24 fps): frame preparation of its 3 segments")
    benchio.write_json(args.json, rows + op_rows + extra)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
