"""The diffusion stage's memory options for the planner: plain, fp8 weights, block offload, or both.

Memory counts are exact parameter bytes of the DiT (models/dit_memory.py, from the config); a block
offload rank holds the DiT minus its blocks plus the largest two consecutive blocks (the one
computing and the next one's copy), the blocks themselves stay in pinned host memory.

Time per segment relative to plain is an estimate until measured on hardware. It models one
velocity call (both CFG branches) block by block on one GPU with the assumptions below: a block
computes at GPU_FLOPS; fp8 adds a pass over its weights per call (read 1 byte, write the 2-byte
copy the matmul reads) at GPU_BANDWIDTH; offload copies the next block at HOST_BANDWIDTH while the
current one computes, so a call takes the first copy plus, per block, the longer of its compute and
the next copy. The VAE and the condition projections (a few % of the stage) are left out.

The layer split of the diffusion stage over ranks (issue 19 part 1) is not an option yet: it needs
the engine's per-step messages between split ranks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache

import torch

from foley_dist.errors import FoleyError
from foley_dist.models.dit_memory import dit_bytes
from foley_dist.models.foley import ModelSpec, stage_parts
from foley_dist.models.fp8 import Fp8Linear, to_fp8_
from foley_dist.models.hunyuan_cost import velocity_flops
from foley_dist.models.hunyuan_dit import HunyuanDiT, HunyuanDiTConfig
from foley_dist.planning.estimates import BYTES, StageEstimate, rank_gpu_bytes

# Time model assumptions: a workstation GPU (RTX 4000/A4000 class) on PCIe 4.0.
GPU_FLOPS = 50e12  # achieved dense bf16 matmul throughput
GPU_BANDWIDTH = 400e9  # device memory, bytes/s
HOST_BANDWIDTH = 12e9  # pinned host -> device copies (PCIe 4.0 x16 measures 20-25 GB/s; 3.0 x16 ~12)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WEIGHTS = ("auto", "full", "fp8")
OFFLOAD = ("auto", "none", "blocks")


@dataclass(frozen=True)
class MemoryOption:
    fp8: bool = False
    offload: bool = False

    @property
    def name(self) -> str:
        return "+".join(n for n, on in (("fp8", self.fp8), ("offload", self.offload)) if on) or "plain"


ALL = (MemoryOption(), MemoryOption(fp8=True), MemoryOption(offload=True), MemoryOption(fp8=True, offload=True))


def candidates(weights: str, offload: str) -> list[MemoryOption]:
    """The options `hardware.weights` / `diffusion.offload` allow (auto: any), plain first."""
    if weights not in WEIGHTS:
        raise FoleyError(f"weights={weights!r} (hardware.weights in a run) is not one of {', '.join(WEIGHTS)}; fp8 stores the DiT blocks in e4m3")
    if offload not in OFFLOAD:
        raise FoleyError(f"offload={offload!r} (diffusion.offload in a run) is not one of {', '.join(OFFLOAD)}; blocks streams the DiT from host memory")
    return [o for o in ALL if weights in ("auto", "fp8" if o.fp8 else "full")
            and offload in ("auto", "blocks" if o.offload else "none")]


@cache
def _dit_bytes(cfg: HunyuanDiTConfig, precision: str, fp8: bool):
    return dit_bytes(cfg, DTYPES[precision], fp8)


def dit_memory(spec: ModelSpec, precision: str, option: MemoryOption) -> tuple[int, int]:
    """(device bytes, pinned host bytes) of the whole DiT's parameters under `option`."""
    b = _dit_bytes(spec.dit, precision, option.fp8)
    if not option.offload:
        return b.total, 0
    return b.total - sum(b.blocks) + b.streamed, sum(b.blocks)


@cache
def _largest_fp8_matrix(cfg: HunyuanDiTConfig) -> int:
    with torch.device("meta"):
        dit = to_fp8_(HunyuanDiT(cfg))
    return max(m.weight.numel() for m in dit.modules() if isinstance(m, Fp8Linear))


def with_option(est: dict[str, StageEstimate], spec: ModelSpec, precision: str,
                option: MemoryOption) -> dict[str, StageEstimate]:
    """`est` with the diffusion stage's DiT weights under `option`: on the device, and offloaded
    blocks in (pinned) host memory; fp8 adds the compute-dtype copy of the largest matrix that one
    matmul holds."""
    plain, (device, host) = _dit_bytes(spec.dit, precision, False).total, dit_memory(spec, precision, option)
    cast = _largest_fp8_matrix(spec.dit) * BYTES[precision] if option.fp8 else 0
    d = est["diffusion"]
    return {**est, "diffusion": dataclasses.replace(d, weights=d.weights - plain + device, host=d.host + host,
                                                    activations=d.activations + cast, cpu_work=d.cpu_work + cast)}


def rank_bytes(stages: tuple[str, ...], est: dict[str, StageEstimate], params: dict[str, int], precision: str,
               spec: ModelSpec, option: MemoryOption) -> int:
    """GPU memory of a rank hosting `stages` under `option` (`est` from `with_option`)."""
    full = rank_gpu_bytes(stages, est, params, precision)
    if "dit" not in stage_parts(stages):
        return full
    return full - _dit_bytes(spec.dit, precision, False).total + dit_memory(spec, precision, option)[0]


def _block_flops(cfg: HunyuanDiTConfig, seconds: float) -> tuple[float, float]:
    """FLOPs of one triple-stream and one single-stream block in a velocity call, per sample."""
    none = velocity_flops(dataclasses.replace(cfg, depth_triple_blocks=0, depth_single_blocks=0), seconds)
    triple = velocity_flops(dataclasses.replace(cfg, depth_triple_blocks=1, depth_single_blocks=0), seconds) - none
    single = velocity_flops(dataclasses.replace(cfg, depth_triple_blocks=0, depth_single_blocks=1), seconds) - none
    return triple, single


def call_seconds(spec: ModelSpec, seconds: float, precision: str, option: MemoryOption, batch: int = 2) -> float:
    """Predicted seconds of one velocity call over `batch` samples (the time model above)."""
    cfg = spec.dit
    triple, single = _block_flops(cfg, seconds)
    flops = [batch * (triple if i < cfg.depth_triple_blocks else single) for i in range(len(_dit_bytes(cfg, precision, False).blocks))]
    blocks = _dit_bytes(cfg, precision, option.fp8).blocks
    full = _dit_bytes(cfg, precision, False).blocks
    # fp8: per quantised weight 1 byte read + 2 written beyond plain's read; full/BYTES ~ weights per block
    compute = [f / GPU_FLOPS + (3 * w / BYTES[precision] / GPU_BANDWIDTH if option.fp8 else 0) for f, w in zip(flops, full)]
    if not option.offload:
        return sum(compute)
    copies = [b / HOST_BANDWIDTH for b in blocks] + [0.0]
    return copies[0] + sum(max(c, copies[i + 1]) for i, c in enumerate(compute))


def relative_time(spec: ModelSpec, seconds: float, precision: str, option: MemoryOption) -> float:
    """Predicted diffusion time per segment under `option` relative to plain."""
    plain = call_seconds(spec, seconds, precision, MemoryOption())
    return call_seconds(spec, seconds, precision, option) / plain
