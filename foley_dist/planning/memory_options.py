"""The diffusion stage's memory options for the planner: a layer split over N ranks, fp8 weights,
block offload, and their combinations (fp8 and offload apply to each split rank's own blocks).

Memory counts are exact parameter bytes of the DiT (models/dit_memory.py, from the config); a block
offload rank holds the DiT minus its blocks plus the largest two consecutive blocks (the one
computing and the next one's copy), the blocks themselves stay in pinned host memory. Split rank j
of N holds blocks block_ranges(cfg, N)[j], the embedders on j = 0 and the final layer on j = N-1
(hunyuan_dit.range_prefixes; the condition projections stay on the fusion rank), the conditioning of
its window's segments (up to 2N), and a hidden-state message per window item and direction.

Time per segment relative to plain is an estimate until measured on hardware. It models one
velocity call (both CFG branches) block by block on one GPU with the assumptions below: a block
computes at GPU_FLOPS; fp8 adds a pass over its weights per call (read 1 byte, write the 2-byte
copy the matmul reads) at GPU_BANDWIDTH; offload copies the next block at HOST_BANDWIDTH while the
current one computes, so a call takes the first copy plus, per block, the longer of its compute and
the next copy. The VAE and the condition projections (a few % of the stage) are left out.

A split pipeline of N ranks samples a window of N segments interleaved, so every block range works
at once: per segment and step it takes its slowest rank's blocks plus that rank's hidden-state send
(bytes / LINK_BANDWIDTH, not overlapped: conservative). Balanced ranges give about plain / N per
segment; the largest range's share sets the imbalance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache

import torch

from foley_dist.errors import FoleyError
from foley_dist.models.dit_memory import DiTBytes, dit_bytes
from foley_dist.models.foley import ModelSpec, stage_parts
from foley_dist.models.fp8 import Fp8Linear, to_fp8_
from foley_dist.models.hunyuan_cost import TokenCounts, block_flops, block_ranges
from foley_dist.models.hunyuan_dit import HunyuanDiT, HunyuanDiTConfig
from foley_dist.planning.estimates import BYTES, StageEstimate, diffusion_activations, rank_gpu_bytes

# Time model assumptions: a workstation GPU (RTX 4000/A4000 class) on PCIe 4.0.
GPU_FLOPS = 50e12  # achieved dense bf16 matmul throughput
GPU_BANDWIDTH = 400e9  # device memory, bytes/s
HOST_BANDWIDTH = 12e9  # pinned host -> device copies (PCIe 4.0 x16 measures 20-25 GB/s; 3.0 x16 ~12)
LINK_BANDWIDTH = 12e9  # GPU -> GPU sends between split ranks: PCIe without NVLink (NVLink: 100s of GB/s)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WEIGHTS = ("auto", "full", "fp8")
OFFLOAD = ("auto", "none", "blocks")


@dataclass(frozen=True)
class MemoryOption:
    fp8: bool = False
    offload: bool = False
    split: int = 1  # ranks per split pipeline ('diffusion/N' in the layout); 1: not split

    @property
    def name(self) -> str:
        parts = ((f"split{self.split}", self.split > 1), ("fp8", self.fp8), ("offload", self.offload))
        return "+".join(n for n, on in parts if on) or "plain"


def splits(split: str, gpus: int) -> list[int]:
    """The layer splits `split` allows on `gpus` GPUs (1: unsplit): auto, unsplit and every N with a
    rank left upstream; none; or N alone."""
    if str(split) in ("auto", "none"):
        return [1, *range(2, gpus)] if str(split) == "auto" else [1]
    if not str(split).isdigit() or int(split) < 2:
        raise FoleyError(f"split={split!r} is not auto, none or a rank count N >= 2 (the layout's 'diffusion/N')")
    if int(split) >= gpus:
        raise FoleyError(f"split={split} needs {int(split) + 1} GPUs or more (N split ranks and one upstream); "
                         f"gpus={gpus}")
    return [int(split)]


def candidates(weights: str, offload: str, split: str = "none", gpus: int = 1) -> list[MemoryOption]:
    """The options `hardware.weights` / `diffusion.offload` / `split` allow (auto: any), unsplit
    plain first."""
    if weights not in WEIGHTS:
        raise FoleyError(f"weights={weights!r} (hardware.weights in a run) is not one of {', '.join(WEIGHTS)}; fp8 stores the DiT blocks in e4m3")
    if offload not in OFFLOAD:
        raise FoleyError(f"offload={offload!r} (diffusion.offload in a run) is not one of {', '.join(OFFLOAD)}; blocks streams the DiT from host memory")
    return [MemoryOption(fp8, off, n) for n in splits(split, gpus) for off in (False, True) for fp8 in (False, True)
            if weights in ("auto", "fp8" if fp8 else "full") and offload in ("auto", "blocks" if off else "none")]


@cache
def _dit_bytes(cfg: HunyuanDiTConfig, precision: str, fp8: bool) -> DiTBytes:
    return dit_bytes(cfg, DTYPES[precision], fp8)


def held_bytes(spec: ModelSpec, precision: str, option: MemoryOption, seconds: float, position: int = 0) -> DiTBytes:
    """The DiT's bytes a diffusion rank holds: all of it unsplit, else its block range's share."""
    b = _dit_bytes(spec.dit, precision, option.fp8)
    return b if option.split == 1 else b.range(*block_ranges(spec.dit, option.split, seconds)[position])


def dit_memory(spec: ModelSpec, precision: str, option: MemoryOption, seconds: float, position: int = 0) -> tuple[int, int]:
    """(device bytes, pinned host bytes) of the DiT's parameters on a diffusion rank under `option`
    (`position`: the rank's place in its split pipeline)."""
    b = held_bytes(spec, precision, option, seconds, position)
    if not option.offload:
        return b.total, 0
    return b.total - sum(b.blocks) + b.streamed, sum(b.blocks)


def message_bytes(cfg: HunyuanDiTConfig, seconds: float, edge: int, batch: int = 2) -> int:
    """fp32 bytes of the per-step message across block boundary `edge` of a split pipeline: the
    hidden state (audio tokens over the CFG batch, the visual stream while inside the triple-stream
    blocks, the timestep vector) and the latents; at either end (the last rank's return to the
    first) the latents alone."""
    n, c = TokenCounts.for_seconds(cfg, seconds), cfg.hidden_size
    latents = cfg.audio_vae_latent_dim * n.audio
    if edge in (0, cfg.depth_triple_blocks + cfg.depth_single_blocks):
        return 4 * latents
    visual = n.visual if edge < cfg.depth_triple_blocks else 0
    return 4 * (batch * (n.audio + visual + 1) * c + latents)


@cache
def _largest_fp8_matrix(cfg: HunyuanDiTConfig) -> int:
    with torch.device("meta"):
        dit = to_fp8_(HunyuanDiT(cfg))
    return max(m.weight.numel() for m in dit.modules() if isinstance(m, Fp8Linear))


def diffusion_ranks(est: dict[str, StageEstimate], spec: ModelSpec, precision: str, option: MemoryOption,
                    seconds: float) -> list[StageEstimate]:
    """The diffusion stage on each rank of a split pipeline under `option` (one rank unsplit): the
    DiT's bytes it holds on the device, offloaded blocks in (pinned) host memory, and fp8's
    compute-dtype copy of the largest matrix one matmul holds. Of a split pipeline only the first
    rank holds the audio decoder (it decodes and sends the audio on); each holds its window's (up to
    2N) segments and a hidden-state message per window item in and out."""
    d, n = est["diffusion"], option.split
    plain = _dit_bytes(spec.dit, precision, False).total
    vae = d.weights - plain
    cast = _largest_fp8_matrix(spec.dit) * BYTES[precision] if option.fp8 else 0
    ranks = []
    for position, (start, stop) in enumerate(block_ranges(spec.dit, n, seconds)):
        device, host = dit_memory(spec, precision, option, seconds, position)
        window = 2 * n  # schedule.split_window: N to 2N segments in flight per pipeline
        work = d.activations if n == 1 else diffusion_activations(spec, seconds, precision, window, position == 0) + window * (
            message_bytes(spec.dit, seconds, start) + message_bytes(spec.dit, seconds, stop))
        weights = device + (vae if position == 0 else 0)
        ranks.append(dataclasses.replace(d, weights=weights, host=d.host + host, activations=work + cast,
                                         cpu_work=(d.cpu_work if n == 1 else work) + cast))
    return ranks


def rank_bytes(stages: tuple[str, ...], est: dict[str, StageEstimate], params: dict[str, int], precision: str,
               spec: ModelSpec, option: MemoryOption, seconds: float) -> int:
    """GPU memory of a rank hosting `stages` under `option`, `est["diffusion"]` the rank's own (one
    of `diffusion_ranks`): a split rank hosts diffusion alone."""
    if option.split > 1 and stages == ("diffusion",):
        return est["diffusion"].gpu_bytes()
    full = rank_gpu_bytes(stages, est, params, precision)
    if "dit" not in stage_parts(stages):
        return full
    return full - _dit_bytes(spec.dit, precision, False).total + dit_memory(spec, precision, option, seconds)[0]


def _range_seconds(flops: list[float], full: tuple[int, ...], held: tuple[int, ...], option: MemoryOption,
                   precision: str) -> float:
    """One rank's blocks in a velocity call (`full`: their plain bytes, `held`: as stored)."""
    # fp8: per quantised weight 1 byte read + 2 written beyond plain's read; full/BYTES ~ weights per block
    compute = [f / GPU_FLOPS + (3 * w / BYTES[precision] / GPU_BANDWIDTH if option.fp8 else 0) for f, w in zip(flops, full)]
    if not option.offload:
        return sum(compute)
    copies = [b / HOST_BANDWIDTH for b in held] + [0.0]
    return copies[0] + sum(max(c, copies[i + 1]) for i, c in enumerate(compute))


def call_seconds(spec: ModelSpec, seconds: float, precision: str, option: MemoryOption, batch: int = 2) -> float:
    """Predicted seconds of one velocity call over `batch` samples per segment (the time model
    above); of a split pipeline, its slowest rank's blocks and send."""
    cfg = spec.dit
    triple, single = block_flops(cfg, seconds)
    full, held = _dit_bytes(cfg, precision, False).blocks, _dit_bytes(cfg, precision, option.fp8).blocks
    flops = [batch * (triple if i < cfg.depth_triple_blocks else single) for i in range(len(full))]

    def send(edge: int) -> float:
        return message_bytes(cfg, seconds, edge, batch) / LINK_BANDWIDTH if option.split > 1 else 0.0

    return max(_range_seconds(flops[a:b], full[a:b], held[a:b], option, precision) + send(b)
               for a, b in block_ranges(cfg, option.split, seconds))


def relative_time(spec: ModelSpec, seconds: float, precision: str, option: MemoryOption) -> float:
    """Predicted diffusion time per segment under `option` relative to plain on one GPU (a split
    pipeline of N ranks: about 1/N)."""
    plain = call_seconds(spec, seconds, precision, MemoryOption())
    return call_seconds(spec, seconds, precision, option) / plain
