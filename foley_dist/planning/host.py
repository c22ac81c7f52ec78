"""Host time next to device time: what the planner and layout=auto need to see a CPU-bound vision rank.

FLOPs alone make vision ~3 % of the work; on a GPU node its host-side frame preparation (decode, RGB
conversion, resizes: foley_dist.media.frameprep) can take longer per segment than the whole diffusion.
Host seconds come from per-frame costs measured on one machine class (`host_calibration.json`,
rewritten by `python scripts/calibrate_host.py`): each operation's milliseconds per frame as a line in
the frame's megapixels, decoding per codec on noise-heavy, high-bitrate clips (camera-like footage,
the expensive case). Device seconds are FLOPs over an effective throughput (an estimate for CUDA
until measured on hardware; calibrated for CPU threads). The vision stage decodes ahead while it
encodes, so its time per segment is the larger of the two, not their sum.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from foley_dist.config import VisionConfig

CALIBRATION = Path(__file__).with_name("host_calibration.json")
# Cores a vision rank is planned with when vision.workers=0: a GPU node's share per GPU. Not this
# machine's affinity: every rank must derive the same costs (layout=auto, the p2p programs).
HOST_CORES = 16


@dataclass(frozen=True)
class Calibration:
    """Per-frame host costs of one machine class, and device throughputs."""

    machine: str  # CPU model and core count it was measured on
    measured: str  # date
    per_frame_ms: dict[str, list[float]]  # op -> [ms at 0 megapixels, ms per megapixel], one core
    cpu_gflops_per_thread: float  # fp32 matmul throughput of one torch thread (CPU stages' device seconds)
    cuda_tflops: float  # effective GPU throughput (an estimate, not measured: see README)

    def ms(self, op: str, megapixels: float) -> float:
        a, b = self.per_frame_ms[op]
        return max(0.0, a + b * megapixels)

    def decode_op(self, codec: str) -> str:
        """Calibrated codecs by FFmpeg name; others are costed as H.264 (said in the plan's note)."""
        op = f"decode_{codec}"
        return op if op in self.per_frame_ms else "decode_h264"


def load_calibration(path: Path = CALIBRATION) -> Calibration:
    return Calibration(**json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Source:
    """What host time depends on: frame size, rate and codec of the video."""

    width: int
    height: int
    fps: float = 25.0
    codec: str = "h264"


def vision_host_seconds(cal: Calibration, src: Source, seconds: float, visual_fps: float, sync_fps: float,
                        preprocess: str = "release", siglip_resize: str = "pil") -> float:
    """CPU-seconds (one core) to prepare one segment's frames. release: every frame decoded, each picked
    frame converted to full-size RGB once, then resized for SigLIP2 and/or Synchformer. fast: two decoding
    passes (visual, sync) scaled by swscale; costed as decode + full-size conversion (an upper bound)."""
    mpx = src.width * src.height / 1e6
    decoded = seconds * src.fps
    visual, sync = seconds * min(src.fps, visual_fps), seconds * min(src.fps, sync_fps)
    converted = seconds * min(src.fps, max(visual_fps, sync_fps))
    decode = cal.ms(cal.decode_op(src.codec), mpx)
    if preprocess == "fast":
        return (2 * decoded * decode + (visual + sync) * cal.ms("rgb24", mpx)) / 1e3
    siglip = cal.ms("siglip_torch" if siglip_resize == "torch" else "siglip_pil", mpx)
    return (decoded * decode + converted * cal.ms("rgb24", mpx) + sync * cal.ms("sync", mpx) + visual * siglip) / 1e3


def device_seconds(cal: Calibration, flops: dict[str, float], device: str, threads: int = 1) -> dict[str, float]:
    """Per-stage device seconds per segment: FLOPs over the calibrated (CPU) or assumed (CUDA) throughput."""
    rate = cal.cuda_tflops * 1e12 if device == "cuda" else cal.cpu_gflops_per_thread * 1e9 * max(1, threads)
    return {s: f / rate for s, f in flops.items()}


def stage_seconds(device_s: dict[str, float], host_s: float, workers: int) -> dict[str, float]:
    """Seconds per segment per stage for the layout search: vision's host preparation on `workers`
    cores overlaps its encoding (it decodes the next segment ahead), so it costs the larger of the two."""
    return {**device_s, "vision": max(device_s["vision"], host_s / max(1, workers))}


def workers_for(host_s: float, diffusion_s: float, diffusion_ranks: int) -> int:
    """Cores that prepare frames as fast as `diffusion_ranks` ranks sample (each `diffusion_s` per segment)."""
    return max(1, math.ceil(host_s * diffusion_ranks / diffusion_s)) if diffusion_s > 0 else 1


def layout_costs(cal: Calibration, flops: dict[str, float], src: Source, seconds: float, visual_fps: float,
                 sync_fps: float, vision: VisionConfig, device: str, threads: int = 1) -> dict[str, float]:
    """layout=auto's stage costs (seconds per segment): device seconds from FLOPs, vision's host preparation
    on vision.workers cores (0: HOST_CORES, the same on every rank) when that is longer than its encoding."""
    host_s = vision_host_seconds(cal, src, seconds, visual_fps, sync_fps, vision.preprocess, vision.siglip_resize)
    return stage_seconds(device_seconds(cal, flops, device, threads), host_s, vision.workers or HOST_CORES)


def host_summary(device_s: dict[str, float], host_s: float, workers: int, groups: list[tuple[tuple[str, ...], int]],
                 codec_note: str) -> dict:
    """Per stage host and device seconds per segment, the stage (group of ranks) that bounds throughput,
    and the vision workers (cores) that keep the layout's diffusion ranks busy."""
    stages = {s: {"host_s": host_s if s == "vision" else 0.0, "device_s": d} for s, d in device_s.items()}
    periods = []
    for names, replicas in groups:
        device = sum(device_s[s] for s in names)
        host = host_s / max(1, workers) if "vision" in names else 0.0
        periods.append({"stages": list(names), "ranks": replicas, "period_s": max(device, host) / replicas,
                        "by": "host" if host > device else "device"})
    bound = max(periods, key=lambda p: p["period_s"])
    diffusion_ranks = next(r for names, r in groups if "diffusion" in names)
    return {"stages": stages, "workers": workers, "groups": periods, "bound": bound,
            "diffusion_ranks": diffusion_ranks,
            "workers_needed": workers_for(host_s, device_s["diffusion"], diffusion_ranks),
            "workers_per_diffusion_gpu": host_s / device_s["diffusion"] if device_s["diffusion"] else 0.0,
            "note": codec_note}


def format_host(summary: dict) -> list[str]:
    b = summary["bound"]
    lines = ["", f"{'stage':<10} {'host s/seg':>11} {'device s/seg':>13}   (host: 1 core; vision decodes ahead, so "
                 "its time is the larger of host / workers and device)"]
    lines += [f"{s:<10} {v['host_s']:>11.3f} {v['device_s']:>13.3f}" for s, v in summary["stages"].items()]
    lines.append(f"bound by: {'+'.join(b['stages'])} x{b['ranks']} ({b['by']}), {b['period_s']:.3f} s per segment "
                 f"with vision.workers={summary['workers']}")
    lines.append(f"vision workers (cores, all vision ranks together) to keep {summary['diffusion_ranks']} diffusion "
                 f"rank(s) busy: {summary['workers_needed']} ({summary['workers_per_diffusion_gpu']:.1f} per diffusion GPU)")
    if summary["note"]:
        lines.append(summary["note"])
    return lines
