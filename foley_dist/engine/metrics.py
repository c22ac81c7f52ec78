"""Per-rank timing spans, memory figures and the Chrome/Perfetto trace.

Each rank records what it spent its time on (stage compute per segment, waits on peers); the sink
gathers the records into the run report and, if asked, a trace with one track per rank.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

log = logging.getLogger(__name__)

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
    nvml_used_peak_mb: float | None = None  # what NVML sees: also the CUDA context and NCCL's buffers
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
    """Collects spans for one rank; `span()` is the only call sites need.

    On CUDA a compute span is timed by two CUDA events on the compute stream, read once at
    `finish`: its time is the work on that stream only. `torch.cuda.synchronize` after every span
    would also wait for the NCCL streams (sends still in flight), counting waits on peers as stage
    time (and with it layout.costs and predicted_makespan_s), and would stall the host every span.
    """

    def __init__(self, rank: int, stages: list[str], device: torch.device):
        self.stats = RankStats(rank, stages, str(device), origin_unix=time.time())
        self._t0 = time.perf_counter()
        self._device = device
        self._timed: list[tuple[Span, torch.cuda.Event, torch.cuda.Event]] = []
        self._origin = self._event()  # the compute stream's clock at _t0 (nothing queued on it yet)
        self._nvml = NvmlSampler(device) if device.type == "cuda" else None

    def _event(self) -> torch.cuda.Event | None:
        """A timing event recorded now on the compute stream; None off CUDA."""
        if self._device.type != "cuda":
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self._device))
        return event

    @contextmanager
    def span(self, name: str, cat: str, item: int) -> Iterator[None]:
        start, begin = time.perf_counter(), self._event() if cat == "compute" else None
        try:
            yield
        finally:
            span = Span(name, cat, item, start - self._t0, time.perf_counter() - start)
            if begin is not None:
                self._timed.append((span, begin, self._event()))
            self.stats.spans.append(span)

    def finish(self) -> RankStats:
        """Read the compute spans' events (the one wait on the device, at the end) and the memory figures."""
        for span, begin, end in self._timed:
            end.synchronize()
            span.start, span.dur = self._origin.elapsed_time(begin) / 1e3, begin.elapsed_time(end) / 1e3
        self._timed.clear()
        self.stats.wall_s = time.perf_counter() - self._t0
        self.stats.peak_rss_mb = peak_rss_mb()
        if self._device.type == "cuda":
            self.stats.cuda_peak_allocated_mb = torch.cuda.max_memory_allocated(self._device) / 2**20
            nvml = self._nvml.stop()
            if nvml is not None:
                self.stats.gpu_utilization_pct = nvml.utilization_pct
                self.stats.nvml_used_peak_mb = nvml.used_peak_bytes / 2**20
        return self.stats


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def nvml_uuid(device: torch.device) -> str:
    """The device's NVML UUID. NVML numbers GPUs in its own (PCI) order and ignores
    CUDA_VISIBLE_DEVICES, so the CUDA ordinal names another GPU wherever the two orders differ."""
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


@dataclass
class NvmlFigures:
    utilization_pct: float  # mean over the samples
    used_peak_bytes: int  # this process's GPU memory (CUDA context, NCCL buffers, allocator cache), else the device's


class NvmlSampler:
    """GPU utilisation and memory from NVML (the `gpu` extra) every `period` seconds on a daemon
    thread, while the run goes: NVML reports the busy share of its last sample window, so one reading
    at the end of a run would only see the idle GPU. `stop()` returns None where NVML is absent."""

    def __init__(self, device: torch.device, period: float = 0.5):
        self._util: list[float] = []
        self._used: list[int] = []
        self._stop = threading.Event()
        self._thread = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByUUID(nvml_uuid(device))
        except Exception as exc:  # ImportError, or pynvml.NVMLError (no driver library, unknown UUID)
            log.debug("no NVML figures: %s", exc)
            return
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True, name="nvml-sampler")
        self._thread.start()

    def _sample(self) -> None:
        self._util.append(float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
        mine = [p.usedGpuMemory for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
                if p.pid == os.getpid() and p.usedGpuMemory is not None]
        self._used.append(mine[0] if mine else int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used))

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self._sample()

    def stop(self) -> NvmlFigures | None:
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._sample()  # the last window
        self._nvml.nvmlShutdown()
        return NvmlFigures(sum(self._util) / len(self._util), max(self._used))


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
                "nvml_used_peak_mb": r.nvml_used_peak_mb,
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
