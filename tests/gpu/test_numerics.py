"""GPU numerics and memory (issue 17 items 4, 5, 7, 8, 9): bf16 DiT loading within its weights, IEEE
fp32 convolutions under precision=fp32, no host sync in the sampling loop, compute spans timed on the
compute stream, NVML found by UUID. CUDA only; the CPU halves of these are in tests/unit."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from foley_dist.engine.metrics import Recorder, NvmlSampler
from foley_dist.models.foley import ModelSpec, _official_part
from foley_dist.models.hunyuan_dit import HunyuanDiT
from foley_dist.runtime import set_fp32_math
from tests.unit.test_sampling_sync import run_checked

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda:0")
MID = {"hidden_size": 512, "num_heads": 4, "depth_triple_blocks": 2, "depth_single_blocks": 4}


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
@pytest.mark.parametrize("part", ["dit", "dit_condition"])
def test_bf16_dit_loads_on_the_gpu_within_its_weights(tmp_path, fmt, part):
    """The GPU never holds an fp32 copy, nor (fusion, .pth) the tensors the part does not use."""
    spec = ModelSpec.named("hunyuan_xl")
    spec = replace(spec, dit=replace(spec.dit, **MID))
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in HunyuanDiT(spec.dit).state_dict().items()}
    state = {k: torch.randn(s).bfloat16() for k, s in shapes.items()}
    path = tmp_path / f"{spec.dit_file}.{fmt}"
    save_file(state, path) if fmt == "safetensors" else torch.save(state, path)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(CUDA)
    base = torch.cuda.memory_allocated(CUDA)
    module = _official_part(spec, part, tmp_path, CUDA, torch.bfloat16)
    weights = {k: v for k, v in module.state_dict().items()}
    assert {v.dtype for v in weights.values()} == {torch.bfloat16} and {v.device for v in weights.values()} == {CUDA}
    final = sum(v.numel() * v.element_size() for v in weights.values())
    assert torch.cuda.max_memory_allocated(CUDA) - base <= 1.15 * final
    key = next(iter(weights))
    assert torch.equal(weights[key].cpu(), state[key])


def test_random_bf16_dit_builds_on_the_gpu_within_its_weights():
    """A random DiT (gpu_check's full-size XL run) is cast layer by layer as it is built: the GPU
    holds its bf16 weights plus one fp32 layer, not a whole fp32 model."""
    from foley_dist.config import ModelConfig
    from foley_dist.models.foley import build_parts

    spec = ModelSpec.named("hunyuan_xl")
    spec = replace(spec, name="tiny", dit=replace(spec.dit, **MID))  # "tiny": random parts
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(CUDA)
    base = torch.cuda.memory_allocated(CUDA)
    dit = build_parts(spec, ("dit",), ModelConfig(), CUDA, torch.bfloat16)["dit"]
    final = sum(v.numel() * v.element_size() for v in dit.state_dict().values())
    assert {p.dtype for p in dit.parameters()} == {torch.bfloat16}
    assert torch.cuda.max_memory_allocated(CUDA) - base <= 1.15 * final


def test_fp32_precision_convolutions_are_ieee():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(4, 512, 1024, generator=g), torch.randn(512, 512, 3, generator=g)
    ref = F.conv1d(x.double(), w.double(), padding=1)
    errors = {}
    try:
        for precision in ("bf16", "fp32"):  # bf16 keeps cuDNN's TF32 default for fp32 convolutions
            set_fp32_math(precision)
            out = F.conv1d(x.to(CUDA), w.to(CUDA), padding=1).double().cpu()
            errors[precision] = ((out - ref).norm() / ref.norm()).item()
    finally:
        set_fp32_math("fp32")
    # fp32 rounding over 1536-term sums: ~1e-7 to 1e-6; TF32 rounds each input to a 10-bit mantissa: ~3e-4
    assert errors["fp32"] < 1e-5, errors
    if torch.cuda.get_device_capability(CUDA) >= (8, 0):  # TF32 exists from Ampere on
        assert errors["bf16"] > 1e-5, errors


@pytest.mark.parametrize("seam,cfg_split", [("crossfade", False), ("crossfade", True), ("joint", True)])
def test_sampling_loop_never_syncs_with_the_host_on_cuda(monkeypatch, seam, cfg_split):
    outs = run_checked(monkeypatch, CUDA, seam, cfg_split, 4.5, torch.bfloat16)
    assert all(torch.isfinite(o.tensors["audio"]).all() for o in outs)


def test_compute_spans_exclude_work_on_other_streams():
    """What synchronize() counted: a kernel queued on another stream (standing in for an NCCL send
    still in flight) must not lengthen the compute span that follows it."""
    rec = Recorder(0, ["diffusion"], CUDA)
    x = torch.randn(2048, 2048, device=CUDA)
    side = torch.cuda.Stream(CUDA)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(side):
        start.record()
        torch.cuda._sleep(2_000_000_000)  # about a second at ~2 GHz
        end.record()
    with rec.span("diffusion", "compute", 0):
        for _ in range(10):
            x = x @ x / 2048
    stats = rec.finish()
    side.synchronize()
    sleep_s = start.elapsed_time(end) / 1e3
    busy = stats.busy_by_stage()["diffusion"]
    assert 0 < busy < 0.25 * sleep_s, (busy, sleep_s)


def test_nvml_utilization_of_this_gpu_while_it_works():
    pytest.importorskip("pynvml", reason="the gpu extra (nvidia-ml-py) is not installed")
    sampler = NvmlSampler(CUDA, period=0.05)
    x = torch.randn(4096, 4096, device=CUDA)
    deadline = time.perf_counter() + 1.5
    while time.perf_counter() < deadline:
        x = x @ x / 4096
        torch.cuda.synchronize()
    figures = sampler.stop()
    assert figures.utilization_pct > 20  # NVML counts time with a kernel running; this loop keeps one running
    assert figures.used_peak_bytes > torch.cuda.memory_allocated(CUDA)  # + the CUDA context
