"""Per-rank timing spans, memory figures and the Chrome/Perfetto trace.

Each rank records what it spent its time on (stage compute per segment, waits on peers); the sink
gathers the records into the run report and, if asked, a trace with one track per rank.
"""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch


@dataclass
class Span:
    name: str  # stage name, or recv/send/flush
    cat: str  # compute | comm
    item: int
    start: float  # seconds since the rank's clock origin
    dur: float


@dataclass
class RankStats:
    rank: int
    stages: list[str]
    device: str
    spans: list[Span] = field(default_factory=list)
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    cuda_peak_allocated_mb: float | None = None
    gpu_utilization_pct: float | None = None
    origin_unix: float = 0.0  # lets the trace align ranks on one time axis

    def busy_by_stage(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.spans:
            if s.cat == "compute":
                out[s.name] = out.get(s.name, 0.0) + s.dur
        return out

    def comm_wait_s(self) -> float:
        return sum(s.dur for s in self.spans if s.cat == "comm")


class Recorder:
    """Collects spans for one rank; `span()` is the only call sites need."""

    def __init__(self, rank: int, stages: list[str], device: torch.device):
        self.stats = RankStats(rank, stages, str(device), origin_unix=time.time())
        self._t0 = time.perf_counter()
        self._device = device

    @contextmanager
    def span(self, name: str, cat: str, item: int) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if cat == "compute" and self._device.type == "cuda":
                torch.cuda.synchronize(self._device)
            end = time.perf_counter()
            self.stats.spans.append(Span(name, cat, item, start - self._t0, end - start))

    def finish(self) -> RankStats:
        self.stats.wall_s = time.perf_counter() - self._t0
        self.stats.peak_rss_mb = peak_rss_mb()
        if self._device.type == "cuda":
            self.stats.cuda_peak_allocated_mb = torch.cuda.max_memory_allocated(self._device) / 2**20
            self.stats.gpu_utilization_pct = nvml_utilization(self._device.index or 0)
        return self.stats


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def nvml_utilization(index: int) -> float | None:
    """GPU utilisation from NVML (the `gpu` extra), or None where NVML is absent."""
    try:
        import pynvml
    except ImportError:
        return None
    pynvml.nvmlInit()
    try:
        return float(pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(index)).gpu)
    finally:
        pynvml.nvmlShutdown()


def summarize(ranks: list[RankStats]) -> dict:
    """The report's per-stage and per-rank figures."""
    stage_busy: dict[str, float] = {}
    for r in ranks:
        for name, s in r.busy_by_stage().items():
            stage_busy[name] = stage_busy.get(name, 0.0) + s
    return {
        "stage_busy_s": {k: round(v, 4) for k, v in stage_busy.items()},
        "ranks": [
            {
                "rank": r.rank,
                "stages": r.stages,
                "device": r.device,
                "busy_s": round(sum(r.busy_by_stage().values()), 4),
                "comm_wait_s": round(r.comm_wait_s(), 4),
                "wall_s": round(r.wall_s, 4),
                "peak_rss_mb": round(r.peak_rss_mb, 1),
                "cuda_peak_allocated_mb": r.cuda_peak_allocated_mb,
                "gpu_utilization_pct": r.gpu_utilization_pct,
            }
            for r in ranks
        ],
    }


def chrome_trace(ranks: list[RankStats]) -> dict:
    """Trace Event Format: one process track per rank, spans in microseconds on a shared axis."""
    origin = min(r.origin_unix for r in ranks)
    events = []
    for r in ranks:
        shift = (r.origin_unix - origin) * 1e6
        events.append({"ph": "M", "name": "process_name", "pid": r.rank, "args": {"name": f"rank {r.rank} ({'+'.join(r.stages)})"}})
        for s in r.spans:
            events.append({
                "ph": "X", "pid": r.rank, "tid": 0 if s.cat == "compute" else 1, "cat": s.cat,
                "name": f"{s.name} #{s.item}", "ts": shift + s.start * 1e6, "dur": s.dur * 1e6,
                "args": {"item": s.item, "stage": s.name},
            })
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"generator": "foley_dist"}}


def _proc_status(key: str) -> float:
    """A /proc/self/status memory figure in bytes (Linux)."""
    line = next(x for x in open("/proc/self/status").read().splitlines() if x.startswith(key + ":"))
    return float(line.split()[1]) * 1024


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark to the current RSS and return it (Linux). ru_maxrss cannot be
    reset, so a transient during imports would hide a smaller working set measured after them."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_status("VmRSS")


def peak_rss_since_reset() -> float:
    return _proc_status("VmHWM")
