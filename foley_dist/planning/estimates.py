"""Analytic per-stage estimates for the planner: parameters, activation memory, decoder memory and
FLOPs of one segment, from the part configs alone (meta device, no weights).

Memory per stage is

    weights      parameter count x bytes per element, for the parts the stage builds
                 (`stage_parts`: fusion ranks build only the DiT's condition projections)
    activations  the largest working set while the stage handles one segment: decoded frames at model
                 resolution + one encode batch (vision), text + conditioning (fusion), the DiT over
                 the CFG batch, or the audio decoder's largest feature maps (diffusion)
    host         host memory of video decoding: decoded source frames (YUV 4:2:0, 1.5 W H bytes)
                 that FFmpeg keeps alive, the only term that grows with source resolution, plus the
                 frames converted to model resolution

Nothing grows with video length (DESIGN.md invariant 3): duration only sets the number of segments.
Precision `bf16` plans the DiT with bf16 weights and activations (the release runs it so), the
fusion rank's condition projections and the conditioning they produce included; the encoders, the
sampler state and the audio decoder stay fp32. A GPU rank also holds NCCL's buffers for each peer.
"""


from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from foley_dist.config import VisionConfig
from foley_dist.engine.schedule import STAGES
from foley_dist.media.tiling import TileGrid, plan_grid
from foley_dist.models.clap import text_param_count
from foley_dist.models.dac_vae import AudioDecoder, DacDecoderConfig
from foley_dist.models.foley import ModelSpec, stage_parts
from foley_dist.models.hunyuan_cost import TokenCounts, condition_flops, param_count, velocity_flops
from foley_dist.models.hunyuan_dit import HunyuanDiT, strip_to_condition
from foley_dist.models.hunyuan_layers import swiglu_hidden
from foley_dist.models.siglip import VisualEncoderConfig, visual_param_count
from foley_dist.models.synchformer import SyncEncoder, SyncEncoderConfig, sync_windows

# --- calibration constants --------------------------------------------------------------------------
# scripts/calibrate_plan.py measures each stage of `tiny` and a mid-size model in a fresh CPU process
# (torch 2.13, 1 thread, glibc malloc with a fixed mmap threshold so that RSS follows the tensors)
# and fits RUNTIME_OVERHEAD and ACTIVATION_FACTOR; all six stage estimates then land within 10 % of
# the measured peaks. With glibc's default, adaptive threshold, freed 1-32 MB tensors stay resident
# and a CPU rank's peak RSS of the audio decoder grows by up to 1.5x (allocation-history dependent).
#
# RSS of a process after importing foley_dist.stages (torch, transformers, PyAV), before any model.
# Every rank pays it in host RAM; it is not GPU memory. Measured 355-385 MB as the package grew.
FRAMEWORK_RSS = 373e6
# Building the parts and their first forward: Python module objects, tokenizer, BLAS/oneDNN
# primitives and scratch, codec contexts. Fitted: 28 MB (CPU host memory; on a GPU the cuBLAS/cuDNN
# share of it is in CUDA_CONTEXT).
RUNTIME_OVERHEAD = 28e6
# Measured / structural activation bytes. The structural counts keep the largest tensors alive at
# once (see the *_activations functions); the fit gives 0.97-0.98, so none is applied.
ACTIVATION_FACTOR = 1.0
# Video decoder (PyAV/FFmpeg, H.264): fixed cost of codec contexts and threads, and source frames
# kept besides the one being converted (references, delayed output, one per frame thread), fitted by
# scripts/bench_resolution.py on 2 cores (decoder-only runs, 360p-2160p). FFmpeg starts a frame
# thread per core, so a many-core host keeps more frames: about one more per extra core.
DECODER_BASE = 5e6
DECODER_FRAMES = 7
# oneDNN's blocked layouts pad conv channels to 16 (tiny's 4-channel audio decoder pays 4x).
CONV_CHANNEL_ALIGN = 16
# Not measured here (no GPU in the calibration run): CUDA context + cuBLAS/cuDNN workspaces, the
# usual ~0.5 GB of an H100 process before any tensor.
CUDA_CONTEXT = 0.5e9
# NCCL's own GPU buffers, allocated outside PyTorch's allocator (NVML sees them, max_memory_allocated
# does not): each communicator (process group) connected to a peer runs point-to-point traffic on
# NCCL_P2P_CHANNELS channels (NCCL's NCCL_NCHANNELS_PER_NET_PEER default), each with a buffer of
# NCCL_BUFFSIZE (4 MiB default) per direction. Also an estimate from NCCL's documented defaults
# until measured on hardware (scripts/gpu_check.sh prints NVML's figure of a run).
NCCL_BUFFSIZE = 4 * 2**20
NCCL_P2P_CHANNELS = 2
NCCL_PEER_BYTES = 2 * NCCL_P2P_CHANNELS * NCCL_BUFFSIZE  # send + receive: 16 MiB per (group, peer)

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
VISUAL_BATCH = 32  # VisualEncoder.encode_batch_size default: frames per SigLIP forward


# --- parameters ---------------------------------------------------------------------------------


def part_params(spec: ModelSpec) -> dict[str, int]:
    """Parameter count of every model part (the sync encoder and VAE are counted on the meta device)."""
    with torch.device("meta"):
        sync = sum(p.numel() for p in SyncEncoder(spec.sync).parameters())
        vae = sum(p.numel() for p in AudioDecoder(spec.vae).parameters())
        condition = sum(p.numel() for p in strip_to_condition(HunyuanDiT(spec.dit)).parameters())
    return {"visual": visual_param_count(spec.visual), "sync": sync, "text": text_param_count(spec.text),
            "dit": param_count(spec.dit), "dit_condition": condition, "vae": vae}


def weight_dtype(part: str, precision: str) -> str:
    """Only the DiT (its condition projections on a fusion rank included: build_parts casts both)
    follows `precision`; encoders and the audio decoder are fp32 as in the release."""
    return precision if part in ("dit", "dit_condition") else "fp32"


# --- activations ------------------------------------------------------------------------------------


def _vit_layer(tokens: int, width: int, hidden: int) -> int:
    """Elements alive in a pre-norm Transformer layer's MLP: residual, norm output, fc1 and its activation."""
    return tokens * (2 * width + 2 * hidden)


def visual_activations(cfg: VisualEncoderConfig, batch: int) -> int:
    """Bytes of one SigLIP encode batch (fp32): normalised pixels (two temporaries) + the widest layer."""
    tokens = (cfg.image_size // cfg.patch_size) ** 2
    return 4 * batch * (2 * 3 * cfg.image_size**2 + _vit_layer(tokens, cfg.hidden, cfg.intermediate))


def sync_activations(cfg: SyncEncoderConfig, frames: int) -> int:
    """Bytes of one Synchformer window batch (fp32): the float windows + divided attention, whose
    regrouping copies keep ~12 token-widths alive (x, norm, qkv, regrouped q/k/v, CLS-prefixed k/v, output)."""
    b = min(cfg.window_batch_size, sync_windows(frames, cfg))
    tokens = 1 + cfg.tokens_per_window * cfg.grid**2
    windows = 3 * cfg.window * cfg.image_size**2
    return 4 * b * (windows + max(12 * tokens * cfg.dim, _vit_layer(tokens, cfg.dim, cfg.dim * cfg.mlp_ratio)))


def _frame_bytes(seconds: float, fps: float, side: int) -> int:
    """uint8 [T, 3, S, S] frames of one segment at model resolution."""
    return round(seconds * fps) * 3 * side**2


def decoder_bytes(width: int, height: int) -> int:
    """Host memory of the video decoder: codec contexts and threads (DECODER_BASE) + the frame being
    converted and the ones it keeps, at source resolution (YUV 4:2:0)."""
    return int(DECODER_BASE + (1 + DECODER_FRAMES) * 1.5 * width * height)


def sync_encode_phase(cfg: SyncEncoderConfig, seconds: float) -> int:
    """Sync frames as decoded, resampled onto the 25 fps grid (a copy) and tail-padded to whole
    windows (another copy when padding is needed), plus one window batch."""
    frames = round(seconds * cfg.fps)
    needed = cfg.stride * (sync_windows(frames, cfg) - 1) + cfg.window
    return (2 * frames + (needed if needed > frames else 0)) * 3 * cfg.image_size**2 + sync_activations(cfg, frames)


def tile_grid(vision: VisionConfig, width: int, height: int) -> TileGrid:
    return plan_grid(height, width, vision.tile_size, vision.overlap_ratio)


def tile_crops(spec: ModelSpec, grid: TileGrid, vision: VisionConfig) -> int:
    """Cutting one working frame into encoder inputs (foley_dist.media.tiling): the larger of resizing its
    tiles (uint8 stack, fp32 output, uint8 result) beside the images still queued (at most
    tile_batch - gcd(images per frame, tile_batch)), and the queue concatenated for a batch."""
    n, side, tile = grid.images_per_frame, spec.visual.image_size, min(vision.tile_size, grid.height, grid.width)
    image, queued = 3 * side**2, vision.tile_batch - math.gcd(n, vision.tile_batch)
    resize = 3 * (n - 1) * (tile**2 + 5 * side**2) + queued * image
    return max(resize, 2 * (queued + n) * image)


def _decode_segment_peak(decoder: int, frames: int) -> int:
    """decode_segment collects the converted frames while the decoder is open, then stacks them
    after it closed (its fixed part, DECODER_BASE, stays allocated)."""
    return max(decoder + frames, DECODER_BASE + 2 * frames)


def decode_memory(spec: ModelSpec, seconds: float, width: int, height: int, mode: str,
                  vision: VisionConfig | None = None) -> int:
    """Host bytes of decoding one segment for the vision stage, encoders left out. The visual and
    sync passes run one after the other, so the larger counts. `mode`:

    model: frames scaled to model resolution inside the decoder (foley_dist.media.video, the default).
    naive: every sampled frame kept as full-resolution RGB, then resized: what a pipeline without
           decoder-side scaling holds.
    tiled: foley_dist.media.tiling: one working-resolution frame at a time, cut into tiles."""
    vision, d = vision or VisionConfig(), decoder_bytes(width, height)
    visual = _frame_bytes(seconds, spec.visual_fps, spec.visual.image_size)
    sync = _frame_bytes(seconds, spec.sync_fps, spec.sync.image_size)
    if mode == "model":
        return _decode_segment_peak(d, max(visual, sync))
    if mode == "naive":  # full-resolution frames, resized (the sync pass: to cover S x S, then cropped)
        side, short = spec.sync.image_size, min(width, height)
        covering = 3 * max(side, round(height * side / short)) * max(side, round(width * side / short))
        sync_resized = round(seconds * spec.sync_fps) * (3 * width * height + covering) + sync
        return d + max(round(seconds * spec.visual_fps) * 3 * width * height + visual, sync_resized)
    if mode == "tiled":
        grid = tile_grid(vision, width, height)
        return max(d + 3 * grid.height * grid.width + tile_crops(spec, grid, vision), _decode_segment_peak(d, sync))
    raise ValueError(f"unknown decode mode {mode!r}")


@dataclass(frozen=True)
class VisionMemory:
    """Peak bytes of the vision stage, by where they live."""

    device: int  # encoder working set and the frames it encodes, on the stage's device
    host: int  # decoding: decoder + decoded frames, in host memory
    cpu: int  # the largest phase when both share one memory (a CPU rank)


def vision_memory(spec: ModelSpec, seconds: float, width: int, height: int, vision: VisionConfig) -> VisionMemory:
    """Phases: decode the visual frames, encode them; decode the sync frames, encode them (tiled
    visual encoding streams: decode and encode overlap)."""
    d = decoder_bytes(width, height)
    sync_decode = _decode_segment_peak(d, _frame_bytes(seconds, spec.sync_fps, spec.sync.image_size))
    sync_encode = sync_encode_phase(spec.sync, seconds)
    if vision.tiling:  # tiles are cut on the host, a batch at a time goes to the device
        grid = tile_grid(vision, width, height)
        encode = visual_activations(spec.visual, vision.tile_batch)
        visual = vision.tile_batch * 3 * spec.visual.image_size**2 + encode
        visual_cpu = d + 3 * grid.height * grid.width + tile_crops(spec, grid, vision) + encode
    else:
        frames = _frame_bytes(seconds, spec.visual_fps, spec.visual.image_size)
        visual = frames + visual_activations(spec.visual, min(VISUAL_BATCH, round(seconds * spec.visual_fps)))
        visual_cpu = max(visual, _decode_segment_peak(d, frames))
    host = decode_memory(spec, seconds, width, height, "tiled" if vision.tiling else "model", vision)
    return VisionMemory(max(visual, sync_encode), host, max(visual_cpu, sync_decode, sync_encode))


def text_activations(spec: ModelSpec) -> int:
    """CLAP on [negative, prompt] (fp32, eager attention): the widest layer + attention scores."""
    c, tokens = spec.text, 2 * spec.dit.text_length
    scores = 2 * c.heads * spec.dit.text_length**2
    return 4 * (_vit_layer(tokens, c.hidden, c.intermediate) + scores)


def conditioning_bytes(spec: ModelSpec, seconds: float, precision: str, batch: int = 2) -> int:
    """Conditioning the fusion stage sends and the diffusion stage keeps (text, visual, sync), in the
    DiT's precision: the condition projections' outputs."""
    n = TokenCounts.for_seconds(spec.dit, seconds)
    return BYTES[precision] * batch * (n.text + n.visual + n.sync) * spec.dit.hidden_size


def fusion_activations(spec: ModelSpec, seconds: float, precision: str) -> int:
    """The larger of the (cached, once per prompt) fp32 text encode and the condition projections,
    whose widest op is the sync SwiGLU over the CFG batch; plus the conditioning it outputs."""
    n, c = TokenCounts.for_seconds(spec.dit, seconds), spec.dit.hidden_size
    sync_in = BYTES[precision] * 2 * n.sync * (2 * c + 3 * swiglu_hidden(4 * c))
    return max(text_activations(spec), sync_in) + conditioning_bytes(spec, seconds, precision)


def dit_activations(spec: ModelSpec, seconds: float, precision: str, batch: int = 2) -> int:
    """One velocity call over the CFG batch: the widest block (triple-stream MLP over audio + visual
    tokens, or single-stream conv SwiGLU over audio tokens) + the per-call sync and token-vector tensors.
    Attention is assumed to run in a fused kernel (flash / memory-efficient / CPU flash): no L x L scores."""
    cfg, n = spec.dit, TokenCounts.for_seconds(spec.dit, seconds)
    c, b = cfg.hidden_size, BYTES[precision]
    triple = (n.audio + n.visual) * (3 * c + 2 * int(c * cfg.mlp_ratio))
    single = n.audio * (3 * c + 3 * swiglu_hidden(c * cfg.mlp_ratio))
    per_call = 3 * n.audio * c  # interpolated sync, audio stream, token vector
    return batch * b * (max(triple, single) + per_call)


def vae_activations(cfg: DacDecoderConfig, latent_frames: int) -> int:
    """fp32 audio decoder, widest residual unit: its input (kept for the sum), the conv input, and
    the conv library's copy of it and output, whose channels are padded to CONV_CHANNEL_ALIGN."""
    length, widest = latent_frames, 0
    for i, rate in enumerate(cfg.decoder_rates):
        length *= rate
        channels = cfg.decoder_dim // 2 ** (i + 1)
        aligned = -(-channels // CONV_CHANNEL_ALIGN) * CONV_CHANNEL_ALIGN
        widest = max(widest, 2 * (channels + aligned) * length)
    return 4 * widest


def diffusion_activations(spec: ModelSpec, seconds: float, precision: str, window: int = 1, decodes: bool = True) -> int:
    """Conditioning and sampler state of the `window` segments sampled together (a split pipeline's
    N), and the wider of the DiT's and, on a rank that `decodes`, the audio decoder's working set."""
    latent_frames = round(seconds * spec.latent_rate)
    sampler = 4 * 4 * 2 * spec.dit.audio_vae_latent_dim * latent_frames  # x, [x; x], v, guided v (fp32)
    work = max(dit_activations(spec, seconds, precision), vae_activations(spec.vae, latent_frames) if decodes else 0)
    return window * (conditioning_bytes(spec, seconds, precision) + sampler) + work


# --- FLOPs (matrix products only, 2 per multiply-add, like models/hunyuan_cost.py) ------------------


def visual_flops(cfg: VisualEncoderConfig, frames: int) -> int:
    """SigLIP: patch embedding, layers, attention-pooling head (one probe query)."""
    n, d, i = (cfg.image_size // cfg.patch_size) ** 2, cfg.hidden, cfg.intermediate
    per_frame = (n * 3 * cfg.patch_size**2 * d + cfg.layers * (n * (4 * d * d + 2 * d * i) + 2 * n * n * d)
                 + 2 * n * d * d + 2 * n * d + 2 * d * d + 2 * d * i)
    return 2 * frames * per_frame


def sync_flops(cfg: SyncEncoderConfig, frames: int) -> int:
    """Synchformer per window: 3-D patch embedding, divided space-time blocks, per-tubelet pooling."""
    t, g2, d, m = cfg.tokens_per_window, cfg.grid**2, cfg.dim, cfg.dim * cfg.mlp_ratio
    n = 1 + t * g2
    attention = 2 * (2 * n * d) + 2 * g2 * t * (t + 1) * d + 2 * t * g2 * (g2 + 1) * d  # CLS rows, time, space
    block = 8 * n * d * d + 2 * n * d * m + attention
    pool = t * ((g2 + 1) * (4 * d * d + 2 * d * m) + 2 * (g2 + 1) ** 2 * d)
    per_window = t * g2 * 3 * cfg.tubelet * cfg.patch_size**2 * d + cfg.depth * block + pool
    return 2 * sync_windows(frames, cfg) * per_window


def vae_flops(cfg: DacDecoderConfig, latent_frames: int) -> int:
    """Audio decoder convolutions: input convs, per block a transposed conv + three residual units."""
    length, dim = latent_frames, cfg.decoder_dim
    macs = length * cfg.latent_dim**2 + length * cfg.latent_dim * dim * 7
    for rate in cfg.decoder_rates:
        macs += length * dim * (dim // 2) * 2 * rate
        length, dim = length * rate, dim // 2
        macs += 3 * length * dim * dim * (7 + 1)
    return 2 * (macs + length * dim * 7)


def stage_flops(spec: ModelSpec, seconds: float, steps: int, guidance_scale: float, images_per_frame: int = 1) -> dict[str, int]:
    """FLOPs per segment and stage. Fusion's text encoding is cached per prompt and left out;
    tiling encodes `images_per_frame` SigLIP images per visual frame."""
    branches = 2 if guidance_scale > 1 else 1
    return {
        "vision": visual_flops(spec.visual, images_per_frame * round(seconds * spec.visual_fps))
        + sync_flops(spec.sync, round(seconds * spec.sync_fps)),
        "fusion": 2 * condition_flops(spec.dit, seconds),
        "diffusion": branches * steps * velocity_flops(spec.dit, seconds)
        + vae_flops(spec.vae, round(seconds * spec.latent_rate)),
    }


# --- per stage and per rank ---------------------------------------------------------------------------


@dataclass
class StageEstimate:
    """Bytes and FLOPs of one stage on one segment."""

    stage: str
    parts: tuple[str, ...]
    weights: int
    activations: int  # peak working set beyond the weights on the stage's device
    host: int  # host working set of video decoding (vision only)
    cpu_work: int  # peak working set when device and host are one memory (a CPU rank)
    flops: int

    def cpu_rss(self) -> int:
        """Peak RSS of a CPU process running only this stage."""
        return int(FRAMEWORK_RSS + RUNTIME_OVERHEAD + self.weights + ACTIVATION_FACTOR * self.cpu_work)

    def gpu_bytes(self) -> int:
        return int(CUDA_CONTEXT + self.weights + ACTIVATION_FACTOR * self.activations)


def weight_bytes(params: dict[str, int], parts: tuple[str, ...], precision: str) -> int:
    return sum(params[p] * BYTES[weight_dtype(p, precision)] for p in parts)


def estimate_stages(spec: ModelSpec, precision: str, seconds: float, width: int, height: int, steps: int,
                    guidance_scale: float, vision: VisionConfig | None = None,
                    params: dict[str, int] | None = None) -> dict[str, StageEstimate]:
    vision = vision or VisionConfig()
    params = params or part_params(spec)
    images = tile_grid(vision, width, height).images_per_frame if vision.tiling else 1
    flops = stage_flops(spec, seconds, steps, guidance_scale, images)
    vm = vision_memory(spec, seconds, width, height, vision)
    fusion, diffusion = fusion_activations(spec, seconds, precision), diffusion_activations(spec, seconds, precision)
    memory = {"vision": (vm.device, vm.host, vm.cpu), "fusion": (fusion, 0, fusion), "diffusion": (diffusion, 0, diffusion)}
    return {s: StageEstimate(s, stage_parts((s,)), weight_bytes(params, stage_parts((s,)), precision), *memory[s], flops[s])
            for s in STAGES}


def rank_gpu_bytes(stages: tuple[str, ...], est: dict[str, StageEstimate], params: dict[str, int], precision: str) -> int:
    """GPU memory of a rank hosting `stages`: each part's weights once (fusion and diffusion share the
    DiT), the largest stage working set (stages run one after another) and the CUDA context; NCCL's
    buffers depend on the layout's links and are added per rank group (plan.rank_rows)."""
    weights = weight_bytes(params, stage_parts(stages), precision)
    return int(CUDA_CONTEXT + weights + ACTIVATION_FACTOR * max(est[s].activations for s in stages))
