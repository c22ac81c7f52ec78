"""Decode benchmark: a 4K clip's frames for SigLIP (8 fps, 512x512 resize) and Synchformer (25 fps,
224x224 centre crop), segment by segment as the vision stage does, with each decoder.

Each configuration runs in a fresh process; its peak-RSS delta is the kernel's high-water mark
(VmHWM, reset through /proc/self/clear_refs after start-up) minus the RSS before decoding. Wall time
is the median over --repeats of decoding every segment of the plan; cpu s (user + sys, all threads)
is less sensitive to other load on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import benchio

from foley_dist.media.segments import SegmentPlan

TASKS = {  # name: (fps, (height, width), mode)
    "siglip": (8.0, (512, 512), "resize"),
    "synchformer": (25.0, (224, 224), "center_crop"),
}
DECODERS = {  # name: (decoder, PyAV thread type)
    "pyav-auto": ("pyav", "AUTO"),
    "pyav-slice": ("pyav", "SLICE"),
    "pyav-frame": ("pyav", "FRAME"),
    "decord": ("decord", "AUTO"),
}


@dataclass
class Result:
    decoder: str
    task: str
    frames: int
    median_s: float
    min_s: float
    cpu_s: float  # user + sys of all threads per repeat: less sensitive than wall to other load
    frames_per_s: float
    peak_rss_delta_mb: float


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process. Not ru_maxrss: that survives exec, so it reports the parent's peak."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run(path: str, decoder_name: str, task: str, repeats: int, segment_seconds: float, overlap: float) -> Result:
    from foley_dist.media import video

    decoder, thread_type = DECODERS[decoder_name]
    video.PYAV_THREAD_TYPE = thread_type
    fps, size, mode = TASKS[task]
    info = video.probe(path)
    plan = SegmentPlan.build(info.duration, segment_seconds, overlap)
    _reset_peak_rss()
    before, cpu_before = _status_mb("VmRSS"), _cpu_s()
    walls, frames = [], 0
    for _ in range(repeats):
        start, frames = time.perf_counter(), 0
        for segment in plan.segments:
            frames += len(video.decode_segment(path, video.sample_times(segment, fps), size, mode, decoder, info))
        walls.append(time.perf_counter() - start)
    median = statistics.median(walls)
    cpu = (_cpu_s() - cpu_before) / repeats
    return Result(decoder_name, task, frames, median, min(walls), cpu, frames / median, _status_mb("VmHWM") - before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--video", help="clip to decode; default: generate a 12 s 3840x2160 clip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=list(DECODERS))
    parser.add_argument("--segment-seconds", type=float, default=5.0)
    parser.add_argument("--overlap", type=float, default=1.0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    path = args.video or "out/bench_4k_12s.mp4"
    if not os.path.exists(path):
        from foley_dist.media.testclip import make_clip

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        make_clip(path, 12.0, 3840, 2160, fps=25)
        print(f"generated {path} in {time.perf_counter() - start:.1f} s")

    results = []
    for task in TASKS:
        for decoder in args.decoders:
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                job = pool.submit(_run, path, decoder, task, args.repeats, args.segment_seconds, args.overlap)
                results.append(job.result())

    rows = [asdict(r) for r in results]
    load = os.getloadavg()[0]
    columns = [("task", "task"), ("decoder", "decoder"), ("frames", "frames"), ("median s", "median_s"), ("min s", "min_s"),
               ("cpu s", "cpu_s"), ("frames/s", lambda r: f"{r['frames_per_s']:.1f}"),
               ("peak RSS +MB", lambda r: f"{r['peak_rss_delta_mb']:.0f}")]
    benchio.emit(rows, columns, args.json, title=f"{path}  repeats={args.repeats}  cpus={os.cpu_count()}  load={load:.2f}",
                 payload={"video": path, "repeats": args.repeats, "load": load, "results": rows})


if __name__ == "__main__":
    main()
