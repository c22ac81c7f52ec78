"""HunyuanVideo-Foley DiT: predicts the flow-matching velocity of 128-d audio latents (50 frames/s).

Inputs: latents x [B, 128, La], timesteps t [B] in [0, 1000], CLAP text features cond [B, Lt, 768],
SigLIP2 frame features clip_feat [B, Lv, 768] (8 fps) and Synchformer tokens sync_feat [B, Ls, 768]
(24 tokens/s, groups of 8). The state_dict matches the official checkpoint `hunyuanvideo_foley.pth`.

For pipelining the forward pass is split in two: `condition` (everything that depends on the
features only, run once per segment) and `velocity` (run at every sampling step);
`forward(...) == velocity(x, t, condition(...))` by construction.

`velocity` itself is three phases, so that its blocks can run on several ranks or stream from host
memory: `embed` (latents and timestep -> `BlockState`), `run_blocks` over a contiguous range of the
flat block index (triple-stream blocks 0..T-1, then single-stream blocks T..T+S-1), and `finish`
(final layer). Only the `BlockState` changes between ranges within one step; the `BlockContext`
(text tokens, resized sync tokens, rotary tables) is the same at every step of a segment.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foley_dist.models.hunyuan_blocks import RopeTables, SingleStreamBlock, TripleStreamBlock
from foley_dist.models.hunyuan_config import SYNC_GROUP, TIME_FREQ_DIM, HunyuanDiTConfig
from foley_dist.models.hunyuan_cost import condition_flops, forward_flops, param_count, segment_flops, velocity_flops
from foley_dist.models.hunyuan_layers import ConvSwiGLU, SwiGLU, layer_norm, timestep_embedding

__all__ = [
    "HunyuanDiT", "HunyuanDiTConfig", "BlockState", "BlockContext", "CONDITION_PREFIXES", "strip_to_condition",
    "block_prefix", "range_prefixes", "strip_to_range", "param_count", "condition_flops", "velocity_flops", "forward_flops",
    "segment_flops",
]


class AudioEmbedder(nn.Module):
    """Latent frames [B, 128, La] -> tokens [B, La, C] (1x1 convolution, patch size 1)."""

    def __init__(self, latent_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Conv1d(latent_dim, dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).transpose(1, 2)


class TextProjection(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, TIME_FREQ_DIM).to(self.mlp[0].weight.dtype))


class FinalLayer(nn.Module):
    """LayerNorm + linear to latent channels.

    `adaLN_modulation` exists for checkpoint parity only: the official model feeds it per-token
    conditioning, which its `modulate` helper silently ignores (it only broadcasts [B, C] shift and
    scale), so the released model's output never depends on it. We skip computing it.
    """

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(layer_norm(x, 1e-6))


@dataclass
class BlockState:
    """What one block range hands the next within a sampling step: all that would cross ranks."""

    audio: Tensor  # [B, La, C] audio stream
    visual: Tensor | None  # [B, Lv, C] visual stream; None once the triple-stream blocks are done
    vec: Tensor  # [B, C] timestep embedding


@dataclass
class BlockContext:
    """Per-segment inputs of the blocks, equal at every step: derived from the conditioning alone."""

    text: Tensor  # [B, Lt, C] projected text tokens (triple-stream cross-attention keys/values)
    visual: Tensor  # [B, Lv, C] projected visual tokens: the visual stream entering block 0
    sync: Tensor  # [B, La, C] sync tokens resized to the latent frame rate
    rope: RopeTables


class BlockSource(Protocol):
    """Yields the flat indices of a block range once each block's weights are on the compute device
    (models/offload.py streams them from host memory)."""

    def stream(self, indices: range) -> Iterator[int]: ...


class HunyuanDiT(nn.Module):
    def __init__(self, config: HunyuanDiTConfig):
        super().__init__()
        self.config = cfg = config
        dim = cfg.hidden_size
        self.audio_embedder = AudioEmbedder(cfg.audio_vae_latent_dim, dim)
        self.visual_proj = SwiGLU(cfg.clip_dim, dim, dim)
        self.cond_in = TextProjection(cfg.condition_dim, dim)
        self.time_in = TimestepEmbedder(dim)
        self.sync_in = nn.Sequential(
            nn.Linear(cfg.sync_feat_dim, dim), nn.SiLU(), ConvSwiGLU(dim, 4 * dim, kernel_size=1))
        self.sync_pos_emb = nn.Parameter(torch.zeros(1, 1, SYNC_GROUP, cfg.sync_feat_dim))
        self.triple_blocks = nn.ModuleList(TripleStreamBlock(cfg) for _ in range(cfg.depth_triple_blocks))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(cfg) for _ in range(cfg.depth_single_blocks))
        self.final_layer = FinalLayer(dim, cfg.audio_vae_latent_dim)
        # Learned "no video" features for the unconditional branch of classifier-free guidance.
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, cfg.clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, cfg.sync_feat_dim))
        self.block_source: BlockSource | None = None  # None: every block's weights stay where they are

    @property
    def num_blocks(self) -> int:
        """Length of the flat block index: triple-stream blocks first, then single-stream blocks."""
        return self.config.depth_triple_blocks + self.config.depth_single_blocks

    def block(self, index: int) -> nn.Module:
        """Block `index` of the flat index."""
        triple = self.config.depth_triple_blocks
        return self.triple_blocks[index] if index < triple else self.single_blocks[index - triple]

    def empty_features(self, batch: int, clip_len: int | None = None,
                       sync_len: int | None = None) -> tuple[Tensor, Tensor]:
        """Unconditional (clip_feat [B, clip_len, 768], sync_feat [B, sync_len, 768]) for CFG."""
        clip_len = self.config.clip_length if clip_len is None else clip_len
        sync_len = self.config.sync_length if sync_len is None else sync_len
        clip = self.empty_clip_feat.expand(batch, clip_len, -1).contiguous()
        sync = self.empty_sync_feat.expand(batch, sync_len, -1).contiguous()
        return clip, sync

    def condition(self, cond: Tensor, clip_feat: Tensor, sync_feat: Tensor) -> dict[str, Tensor]:
        """Feature projections that do not depend on x or t: {"text", "visual", "sync"}, each [B, L, C]."""
        batch, sync_len, sync_dim = sync_feat.shape
        if sync_len % SYNC_GROUP:
            raise ValueError(f"sync_feat length {sync_len} is not a multiple of {SYNC_GROUP}")
        sync = sync_feat.view(batch, sync_len // SYNC_GROUP, SYNC_GROUP, sync_dim) + self.sync_pos_emb
        return {
            "text": self.cond_in(cond),
            "visual": self.visual_proj(clip_feat),
            "sync": self.sync_in(sync.view(batch, sync_len, sync_dim)),
        }

    def context(self, conditioning: dict[str, Tensor], audio_len: int) -> BlockContext:
        """The blocks' per-segment inputs for latents of `audio_len` frames."""
        text, visual, sync = conditioning["text"], conditioning["visual"], conditioning["sync"]
        # Sync tokens, resized to the latent frame rate, are added to the audio tokens once and
        # (with the timestep) form the per-token conditioning of the single-stream blocks.
        sync = F.interpolate(sync.transpose(1, 2), size=audio_len, mode="nearest-exact").transpose(1, 2)
        rope = RopeTables.build(audio_len, visual.shape[1], text.shape[1], self.config.head_dim,
                                self.config.rope_theta, text.device)
        return BlockContext(text, visual, sync, rope)

    def embed(self, x: Tensor, t: Tensor, ctx: BlockContext) -> BlockState:
        """Latents x [B, 128, La] at timesteps t [B] (or scalar) -> the state entering block 0."""
        batch = x.shape[0]
        if any(v.shape[0] != batch for v in (ctx.text, ctx.visual, ctx.sync)):
            raise ValueError(f"conditioning batch {ctx.text.shape[0]} does not match latents batch {batch} "
                             "(with guidance the conditioning must be [uncond; cond] and x doubled)")
        vec = self.time_in(t.reshape(-1).expand(batch))
        return BlockState(self.audio_embedder(x) + ctx.sync, ctx.visual, vec)

    def run_blocks(self, state: BlockState, ctx: BlockContext, start: int, stop: int) -> BlockState:
        """Blocks start..stop-1 of the flat index; ranges [0, a) then [a, n) equal [0, n) bit for bit."""
        if not 0 <= start <= stop <= self.num_blocks:
            raise ValueError(f"block range [{start}, {stop}) is outside [0, {self.num_blocks})")
        indices = range(start, stop)
        triple = self.config.depth_triple_blocks
        audio, visual, token_vec = state.audio, state.visual, None
        for i in (self.block_source.stream(indices) if self.block_source is not None else indices):
            if i < triple:
                audio, visual = self.block(i)(audio, visual, ctx.text, state.vec, ctx.rope)
                continue
            if token_vec is None:
                token_vec = ctx.sync + state.vec.unsqueeze(1)
            audio = self.block(i)(audio, token_vec, ctx.rope.audio)
        return replace(state, audio=audio, visual=visual if stop < triple else None)

    def finish(self, state: BlockState) -> Tensor:
        """The state after the last block -> predicted velocity [B, 128, La]."""
        return self.final_layer(state.audio).transpose(1, 2).contiguous()

    def velocity(self, x: Tensor, t: Tensor, conditioning: dict[str, Tensor]) -> Tensor:
        """Predicted velocity [B, 128, La] for latents x [B, 128, La] at timesteps t [B] (or scalar)."""
        ctx = self.context(conditioning, x.shape[2])
        return self.finish(self.run_blocks(self.embed(x, t, ctx), ctx, 0, self.num_blocks))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, clip_feat: Tensor, sync_feat: Tensor) -> Tensor:
        return self.velocity(x, t, self.condition(cond, clip_feat, sync_feat))


# What `condition` and `empty_features` read: all the fusion rank needs of the DiT.
CONDITION_PREFIXES = ("cond_in.", "visual_proj.", "sync_in.", "sync_pos_emb", "empty_clip_feat", "empty_sync_feat")


def strip_to_condition(dit: HunyuanDiT) -> HunyuanDiT:
    """Drop everything but the condition projections (in place): the fusion rank's DiT, a few MB
    instead of the whole model (XXL: ~10 GB in bf16). `velocity` is unavailable afterwards."""
    for name, _ in list(dit.named_children()):
        if f"{name}." not in CONDITION_PREFIXES:
            setattr(dit, name, None)
    return dit


# What `embed` and `finish` read: the first and the last rank of a block split.
EMBED_PREFIXES = ("audio_embedder.", "time_in.")
FINISH_PREFIXES = ("final_layer.",)


def block_prefix(cfg: HunyuanDiTConfig, index: int) -> str:
    """State-dict prefix of block `index` of the flat index."""
    triple = cfg.depth_triple_blocks
    return f"triple_blocks.{index}." if index < triple else f"single_blocks.{index - triple}."


def range_prefixes(cfg: HunyuanDiTConfig, start: int, stop: int) -> tuple[str, ...]:
    """The checkpoint keys a rank running blocks start..stop-1 reads: those blocks, plus `embed`'s
    weights on the first range and `finish`'s on the last."""
    n = cfg.depth_triple_blocks + cfg.depth_single_blocks
    return ((EMBED_PREFIXES if start == 0 else ()) + tuple(block_prefix(cfg, i) for i in range(start, stop))
            + (FINISH_PREFIXES if stop == n else ()))


def strip_to_range(dit: HunyuanDiT, start: int, stop: int) -> HunyuanDiT:
    """Drop (in place) every weight a rank running blocks start..stop-1 does not read (see
    `range_prefixes`); dropped blocks become None. A DiT built on the meta device, loaded with
    `range_prefixes` only and stripped, holds just that range's weights."""
    keep = range_prefixes(dit.config, start, stop)
    for name, _ in list(dit.named_children()):
        if name not in ("triple_blocks", "single_blocks") and not any(k.startswith(f"{name}.") for k in keep):
            setattr(dit, name, None)
    for name, _ in list(dit.named_parameters(recurse=False)):
        setattr(dit, name, None)
    for i in range(dit.num_blocks):
        if block_prefix(dit.config, i) not in keep:
            name, j = block_prefix(dit.config, i).rstrip(".").split(".")
            getattr(dit, name)[int(j)] = None
    return dit
