"""HunyuanVideo-Foley DiT: predicts the flow-matching velocity of 128-d audio latents (50 frames/s).

Inputs: latents x [B, 128, La], timesteps t [B] in [0, 1000], CLAP text features cond [B, Lt, 768],
SigLIP2 frame features clip_feat [B, Lv, 768] (8 fps) and Synchformer tokens sync_feat [B, Ls, 768]
(24 tokens/s, groups of 8). The state_dict matches the official checkpoint `hunyuanvideo_foley.pth`.

For pipelining the forward pass is split in two: `condition` (everything that depends on the
features only, run once per segment) and `velocity` (run at every sampling step);
`forward(...) == velocity(x, t, condition(...))` by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foley_dist.models.hunyuan_blocks import RopeTables, SingleStreamBlock, TripleStreamBlock
from foley_dist.models.hunyuan_config import SYNC_GROUP, TIME_FREQ_DIM, HunyuanDiTConfig
from foley_dist.models.hunyuan_cost import condition_flops, forward_flops, param_count, segment_flops, velocity_flops
from foley_dist.models.hunyuan_layers import ConvSwiGLU, SwiGLU, layer_norm, timestep_embedding

__all__ = [
    "HunyuanDiT", "HunyuanDiTConfig", "CONDITION_PREFIXES", "strip_to_condition", "param_count", "condition_flops", "velocity_flops", "forward_flops",
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

    def velocity(self, x: Tensor, t: Tensor, conditioning: dict[str, Tensor]) -> Tensor:
        """Predicted velocity [B, 128, La] for latents x [B, 128, La] at timesteps t [B] (or scalar)."""
        text, visual, sync = conditioning["text"], conditioning["visual"], conditioning["sync"]
        batch, _, audio_len = x.shape
        if any(v.shape[0] != batch for v in (text, visual, sync)):
            raise ValueError(f"conditioning batch {text.shape[0]} does not match latents batch {batch} "
                             "(with guidance the conditioning must be [uncond; cond] and x doubled)")
        vec = self.time_in(t.reshape(-1).expand(batch))
        # Sync tokens, resized to the latent frame rate, are added to the audio tokens once and
        # (with the timestep) form the per-token conditioning of the single-stream blocks.
        sync = F.interpolate(sync.transpose(1, 2), size=audio_len, mode="nearest-exact").transpose(1, 2)
        rope = RopeTables.build(audio_len, visual.shape[1], text.shape[1], self.config.head_dim,
                                self.config.rope_theta, x.device)

        audio = self.audio_embedder(x) + sync
        for block in self.triple_blocks:
            audio, visual = block(audio, visual, text, vec, rope)
        token_vec = sync + vec.unsqueeze(1)
        for block in self.single_blocks:
            audio = block(audio, token_vec, rope.audio)
        return self.final_layer(audio).transpose(1, 2).contiguous()

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
