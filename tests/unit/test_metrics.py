"""Per-rank metrics: span timing and the GPU utilisation figure (issue 17 items 4 and 9)."""

from __future__ import annotations

import os
import sys
import time
import types

import torch

from foley_dist.engine import metrics
from foley_dist.engine.metrics import NvmlSampler, Recorder


def test_cpu_spans_time_the_host():
    rec = Recorder(0, ["fusion"], torch.device("cpu"))
    with rec.span("fusion", "compute", 0):
        time.sleep(0.05)
    with rec.span("recv", "comm", 1):
        pass
    stats = rec.finish()
    assert 0.05 <= stats.busy_by_stage()["fusion"] < 1
    assert stats.gpu_utilization_pct is None and stats.cuda_peak_allocated_mb is None


def test_utilization_is_sampled_during_the_run_on_the_gpu_named_by_its_uuid(monkeypatch):
    """NVML must be asked for the device by UUID (NVML's order is not CUDA's) and sampled while the run
    goes: here NVML reports a busy GPU while the run is going and an idle one after it."""
    busy, looked_up = [True], []
    procs = [types.SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=7 << 30)]  # another process on the GPU
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByUUID=lambda uuid: looked_up.append(uuid) or "handle",
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=90 if busy[0] else 0),
        nvmlDeviceGetComputeRunningProcesses=lambda handle: procs,
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=9 << 30),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(uuid="5e6b-01"))
    procs.append(types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=3 << 30))
    sampler = NvmlSampler(torch.device("cuda:3"), period=0.01)
    time.sleep(0.2)
    procs[-1] = types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=1 << 30)
    busy[0] = False
    figures = sampler.stop()
    assert looked_up == ["GPU-5e6b-01"]
    assert 60 < figures.utilization_pct < 90  # many busy samples, the one idle reading at the end
    assert figures.used_peak_bytes == 3 << 30  # this process's peak, not the other process's nor the device's
    procs.pop()  # where NVML cannot see this process (another pid namespace): the whole device's
    assert NvmlSampler(torch.device("cuda:3"), period=0.01).stop().used_peak_bytes == 9 << 30


def test_utilization_is_none_without_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert NvmlSampler(torch.device("cuda:0")).stop() is None


def test_nvml_uuid_keeps_a_prefixed_uuid(monkeypatch):
    for uuid, expected in (("GPU-ab", "GPU-ab"), ("MIG-cd", "MIG-cd"), ("ef", "GPU-ef")):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d, u=uuid: types.SimpleNamespace(uuid=u))
        assert metrics.nvml_uuid(torch.device("cuda:0")) == expected
