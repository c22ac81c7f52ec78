"""Analytic cost model of the HunyuanVideo-Foley DiT, for the planner (no model instantiation).

FLOPs count matrix products only (2 per multiply-add: linear layers, convolutions, attention scores
and weighted sums); norms, activations, RoPE and softmax are a few percent and left out. Numbers are
per sample: classifier-free guidance doubles the velocity cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from foley_dist.models.hunyuan_config import SYNC_GROUP, TIME_FREQ_DIM, HunyuanDiTConfig
from foley_dist.models.hunyuan_layers import swiglu_hidden

CLIP_FPS = 8  # SigLIP2 frame features per second
SYNC_TOKENS_PER_S = 24  # Synchformer tokens per second


@dataclass(frozen=True)
class TokenCounts:
    audio: int
    visual: int
    sync: int
    text: int

    @classmethod
    def for_seconds(cls, cfg: HunyuanDiTConfig, seconds: float) -> "TokenCounts":
        return cls(audio=round(seconds * cfg.audio_frame_rate), visual=round(seconds * CLIP_FPS),
                   sync=round(seconds * SYNC_TOKENS_PER_S), text=cfg.text_length)


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def param_count(cfg: HunyuanDiTConfig) -> int:
    """Number of parameters of HunyuanDiT(cfg) (equals the official checkpoint's tensor sizes)."""
    c, d, b = cfg.hidden_size, cfg.head_dim, cfg.qkv_bias
    mlp = int(c * cfg.mlp_ratio)
    norms = d if cfg.qk_norm else 0
    triple = (
        2 * _linear(c, 9 * c)  # audio/visual modulation
        + 2 * (_linear(c, 3 * c, b) + _linear(c, c, b))  # self-attention qkv + out
        + 2 * _linear(c, c, b) + _linear(c, 2 * c, b) + 2 * _linear(c, c, b)  # cross q, text kv, out
        + 2 * (_linear(c, mlp) + _linear(mlp, c))  # MLPs
        + 7 * norms
    )
    single = (
        _linear(c, 6 * c) + _linear(c, 3 * c) + _linear(3 * c, c)  # modulation, qkv, 3-tap out conv
        + 3 * 3 * c * swiglu_hidden(c * cfg.mlp_ratio)  # 3-tap conv SwiGLU
        + 2 * d
    )
    embed = (
        _linear(cfg.audio_vae_latent_dim, c)
        + 2 * cfg.clip_dim * c + c * c  # visual SwiGLU
        + _linear(cfg.condition_dim, c) + _linear(c, c)  # text projection
        + _linear(TIME_FREQ_DIM, c) + _linear(c, c)  # timestep MLP
        + _linear(cfg.sync_feat_dim, c) + 3 * c * swiglu_hidden(4 * c) + SYNC_GROUP * cfg.sync_feat_dim
        + _linear(c, 2 * c) + _linear(c, cfg.audio_vae_latent_dim)  # final layer
        + cfg.clip_dim + cfg.sync_feat_dim  # empty features
    )
    return embed + cfg.depth_triple_blocks * triple + cfg.depth_single_blocks * single


def condition_flops(cfg: HunyuanDiTConfig, seconds: float) -> int:
    """FLOPs of `HunyuanDiT.condition` for one sample of `seconds` of video (once per segment)."""
    c, n = cfg.hidden_size, TokenCounts.for_seconds(cfg, seconds)
    macs = (
        n.text * (cfg.condition_dim * c + c * c)
        + n.visual * (2 * cfg.clip_dim * c + c * c)
        + n.sync * (cfg.sync_feat_dim * c + 3 * c * swiglu_hidden(4 * c))
    )
    return 2 * macs


def velocity_flops(cfg: HunyuanDiTConfig, seconds: float) -> int:
    """FLOPs of one `HunyuanDiT.velocity` call (one sampling step) for one sample."""
    c, la = cfg.hidden_size, TokenCounts.for_seconds(cfg, seconds).audio
    embed = TIME_FREQ_DIM * c + c * c + la * 2 * cfg.audio_vae_latent_dim * c  # timestep, latents in/out
    triple, single = block_flops(cfg, seconds)
    return 2 * embed + cfg.depth_triple_blocks * triple + cfg.depth_single_blocks * single


def block_flops(cfg: HunyuanDiTConfig, seconds: float) -> tuple[int, int]:
    """FLOPs of one triple-stream and one single-stream block in a velocity call, for one sample."""
    c, n = cfg.hidden_size, TokenCounts.for_seconds(cfg, seconds)
    la, lv, lt = n.audio, n.visual, n.text
    mlp = int(c * cfg.mlp_ratio)
    triple = (
        2 * 9 * c * c  # modulation from the timestep vector
        + (la + lv) * (3 * c * c + c * c)  # self-attention qkv + out
        + 2 * (la + lv) ** 2 * c  # self-attention scores + weighted sum
        + (la + lv) * 2 * c * c + lt * 2 * c * c  # cross q + out, text kv
        + 2 * (la + lv) * lt * c  # cross-attention
        + (la + lv) * 2 * c * mlp  # MLPs
    )
    single = la * (
        6 * c * c + 3 * c * c  # per-token modulation, qkv
        + 2 * la * c  # attention
        + 3 * c * c + 3 * 3 * c * swiglu_hidden(c * cfg.mlp_ratio)  # 3-tap convolutions
    )
    return 2 * triple, 2 * single


def block_ranges(cfg: HunyuanDiTConfig, parts: int, seconds: float = 5.0) -> list[tuple[int, int]]:
    """The layer split's block ranges [start, stop) of the flat block index (triple-stream blocks,
    then single-stream), `parts` contiguous non-empty ranges of about equal FLOPs: every boundary is
    the block edge closest to an equal share of the work."""
    triple, single = block_flops(cfg, seconds)
    cost = [triple] * cfg.depth_triple_blocks + [single] * cfg.depth_single_blocks
    if not 1 <= parts <= len(cost):
        raise ValueError(f"cannot split {len(cost)} DiT blocks into {parts} ranges")
    prefix = [0]
    for c in cost:
        prefix.append(prefix[-1] + c)
    edges = [0]
    for k in range(1, parts):
        target = prefix[-1] * k / parts
        lo, hi = edges[-1] + 1, len(cost) - (parts - k)  # keep every range non-empty
        edges.append(min(range(lo, hi + 1), key=lambda e: (abs(prefix[e] - target), e)))
    edges.append(len(cost))
    return list(zip(edges, edges[1:]))


def forward_flops(cfg: HunyuanDiTConfig, seconds: float) -> int:
    """FLOPs of one full forward (condition + velocity) for one sample."""
    return condition_flops(cfg, seconds) + velocity_flops(cfg, seconds)


def segment_flops(cfg: HunyuanDiTConfig, seconds: float, steps: int, guidance: bool = True) -> int:
    """FLOPs of sampling one segment: conditioning once, `steps` velocity calls, both CFG branches."""
    branches = 2 if guidance else 1
    return branches * (condition_flops(cfg, seconds) + steps * velocity_flops(cfg, seconds))
