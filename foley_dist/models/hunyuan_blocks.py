"""Transformer blocks of the HunyuanVideo-Foley DiT.

Triple-stream block: audio and visual tokens share one self-attention (their RoPE positions
interleave: audio frame i at 2i, the visual token nearest to it at 2i+1), both cross-attend to the
text tokens, each has its own adaLN modulation and MLP; text tokens pass through unchanged.
Single-stream block: audio tokens only, per-token modulation (timestep + sync features), attention,
then 3-tap convolutional projections (MMAudio-style).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foley_dist.models.hunyuan_config import HunyuanDiTConfig
from foley_dist.models.hunyuan_layers import (
    ChannelLastConv1d,
    ConvSwiGLU,
    Mlp,
    Modulation,
    RMSNorm,
    apply_rope,
    attention,
    layer_norm,
    modulate,
    rope_table,
)

Rope = tuple[Tensor, Tensor]  # (cos, sin), each [L, head_dim]


@dataclass
class RopeTables:
    """Rotary tables of one forward; they depend only on the sequence lengths."""

    self_audio: Rope  # positions 0, 2, 4, ... (interleaved with visual)
    self_visual: Rope  # odd positions of the visual tokens' nearest audio slots
    visual_index: Tensor  # which visual token each visual slot holds (identity unless lengths collide)
    audio: Rope  # 0..La-1: cross-attention queries and single-stream blocks
    visual: Rope  # 0..Lv-1: cross-attention queries
    text: Rope  # 0..Lt-1: cross-attention keys

    @classmethod
    def build(cls, audio_len: int, visual_len: int, text_len: int, dim: int, theta: float,
              device: torch.device) -> "RopeTables":
        # The official model resizes the visual sequence to the audio length (nearest-exact),
        # interleaves, rotates, de-interleaves and resizes back. As both resizes are gathers and RoPE
        # is per position, the same result comes from gathering indices and rotating in place.
        up = _nearest_exact(visual_len, audio_len, device)  # audio slot -> visual token
        down = _nearest_exact(audio_len, visual_len, device)  # visual token -> audio slot
        slots = torch.arange(audio_len, device=device)

        def table(positions: Tensor) -> Rope:
            return rope_table(positions, dim, theta)

        return cls(
            self_audio=table(2 * slots),
            self_visual=table(2 * down + 1),
            visual_index=up[down],
            audio=table(slots),
            visual=table(torch.arange(visual_len, device=device)),
            text=table(torch.arange(text_len, device=device)),
        )


def _nearest_exact(src_len: int, dst_len: int, device: torch.device) -> Tensor:
    """Source index of each output element of F.interpolate(..., mode="nearest-exact")."""
    index = torch.arange(src_len, dtype=torch.float32, device=device).view(1, 1, src_len)
    return F.interpolate(index, size=dst_len, mode="nearest-exact").view(dst_len).long()


def _seq_rope(x: Tensor, rope: Rope) -> Tensor:
    """RoPE on a [B, L, H, D] tensor."""
    cos, sin = rope
    return apply_rope(x, cos[:, None], sin[:, None])


def _qk_norm(cfg: HunyuanDiTConfig) -> nn.Module:
    return RMSNorm(cfg.head_dim) if cfg.qk_norm else nn.Identity()


class TripleStreamBlock(nn.Module):
    def __init__(self, cfg: HunyuanDiTConfig):
        super().__init__()
        dim, bias = cfg.hidden_size, cfg.qkv_bias
        self.heads = cfg.num_heads
        mlp_hidden = int(dim * cfg.mlp_ratio)

        self.audio_mod = Modulation(dim, 9)
        self.v_cond_mod = Modulation(dim, 9)

        self.audio_self_attn_qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.audio_self_q_norm = _qk_norm(cfg)
        self.audio_self_k_norm = _qk_norm(cfg)
        self.audio_self_proj = nn.Linear(dim, dim, bias=bias)
        self.v_cond_attn_qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.v_cond_attn_q_norm = _qk_norm(cfg)
        self.v_cond_attn_k_norm = _qk_norm(cfg)
        self.v_cond_self_proj = nn.Linear(dim, dim, bias=bias)

        self.audio_cross_q = nn.Linear(dim, dim, bias=bias)
        self.audio_cross_q_norm = _qk_norm(cfg)
        self.v_cond_cross_q = nn.Linear(dim, dim, bias=bias)
        self.v_cond_cross_q_norm = _qk_norm(cfg)
        self.text_cross_kv = nn.Linear(dim, 2 * dim, bias=bias)
        self.text_cross_k_norm = _qk_norm(cfg)
        self.audio_cross_proj = nn.Linear(dim, dim, bias=bias)
        self.v_cond_cross_proj = nn.Linear(dim, dim, bias=bias)

        self.audio_mlp = Mlp(dim, mlp_hidden, cfg.mlp_act_type)
        self.v_cond_mlp = Mlp(dim, mlp_hidden, cfg.mlp_act_type)

    def _heads(self, x: Tensor, parts: int) -> tuple[Tensor, ...]:
        """[B, L, parts * H * D] -> `parts` tensors [B, L, H, D]."""
        return x.unflatten(-1, (parts, self.heads, -1)).unbind(2)

    def forward(self, audio: Tensor, visual: Tensor, text: Tensor, vec: Tensor,
                rope: RopeTables) -> tuple[Tensor, Tensor]:
        a_shift1, a_scale1, a_gate1, a_shift2, a_scale2, a_gate2, a_shift3, a_scale3, a_gate3 = (
            self.audio_mod(vec).unsqueeze(1).chunk(9, dim=-1))
        v_shift1, v_scale1, v_gate1, v_shift2, v_scale2, v_gate2, v_shift3, v_scale3, v_gate3 = (
            self.v_cond_mod(vec).unsqueeze(1).chunk(9, dim=-1))
        n_visual = visual.shape[1]

        # 1. joint audio-visual self-attention
        a_q, a_k, a_v = self._heads(self.audio_self_attn_qkv(modulate(layer_norm(audio, 1e-6), a_shift1, a_scale1)), 3)
        a_q = self.audio_self_q_norm(a_q).to(a_v.dtype)
        a_k = self.audio_self_k_norm(a_k).to(a_v.dtype)
        v_q, v_k, v_v = self._heads(self.v_cond_attn_qkv(modulate(layer_norm(visual, 1e-6), v_shift1, v_scale1)), 3)
        v_q = self.v_cond_attn_q_norm(v_q).to(v_v.dtype)
        v_k = self.v_cond_attn_k_norm(v_k).to(v_v.dtype)
        a_q, a_k = _seq_rope(a_q, rope.self_audio), _seq_rope(a_k, rope.self_audio)
        v_q = _seq_rope(v_q[:, rope.visual_index], rope.self_visual)
        v_k = _seq_rope(v_k[:, rope.visual_index], rope.self_visual)
        out = attention(torch.cat((v_q, a_q), 1), torch.cat((v_k, a_k), 1), torch.cat((v_v, a_v), 1))
        v_out, a_out = out[:, :n_visual], out[:, n_visual:]
        audio = audio + self.audio_self_proj(a_out) * a_gate1
        visual = visual + self.v_cond_self_proj(v_out) * v_gate1

        # 2. cross-attention of audio and visual queries to the text
        (a_q,) = self._heads(self.audio_cross_q(modulate(layer_norm(audio, 1e-6), a_shift2, a_scale2)), 1)
        a_q = _seq_rope(self.audio_cross_q_norm(a_q), rope.audio)
        (v_q,) = self._heads(self.v_cond_cross_q(modulate(layer_norm(visual, 1e-6), v_shift2, v_scale2)), 1)
        v_q = _seq_rope(self.v_cond_cross_q_norm(v_q), rope.visual)
        t_k, t_v = self._heads(self.text_cross_kv(text), 2)
        t_k = _seq_rope(self.text_cross_k_norm(t_k).to(t_v.dtype), rope.text)
        out = attention(torch.cat((v_q, a_q), 1), t_k, t_v)
        v_out, a_out = out[:, :n_visual], out[:, n_visual:]
        audio = audio + self.audio_cross_proj(a_out) * a_gate2
        visual = visual + self.v_cond_cross_proj(v_out) * v_gate2

        # 3. per-stream MLPs
        audio = audio + self.audio_mlp(modulate(layer_norm(audio, 1e-6), a_shift3, a_scale3)) * a_gate3
        visual = visual + self.v_cond_mlp(modulate(layer_norm(visual, 1e-6), v_shift3, v_scale3)) * v_gate3
        return audio, visual


class SingleStreamBlock(nn.Module):
    def __init__(self, cfg: HunyuanDiTConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.heads = cfg.num_heads
        self.modulation = Modulation(dim, 6)
        self.linear_qkv = nn.Linear(dim, 3 * dim)
        self.linear1 = ChannelLastConv1d(dim, dim, kernel_size=3, padding=1)
        self.linear2 = ConvSwiGLU(dim, dim * cfg.mlp_ratio, kernel_size=3)
        self.q_norm = nn.RMSNorm(cfg.head_dim)
        self.k_norm = nn.RMSNorm(cfg.head_dim)

    def forward(self, x: Tensor, vec: Tensor, rope: Rope) -> Tensor:
        """x: audio tokens [B, L, C]; vec: per-token conditioning [B, L, C]."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(vec).chunk(6, dim=-1)
        # Unlike the triple blocks: default LayerNorm eps (1e-5) and a (H, D, qkv) channel order.
        qkv = self.linear_qkv(modulate(layer_norm(x, 1e-5), shift1, scale1))
        q, k, v = qkv.unflatten(-1, (self.heads, -1, 3)).permute(4, 0, 2, 1, 3).unbind(0)  # [B, H, L, D]
        cos, sin = rope
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
        x = x + self.linear1(out.transpose(1, 2).flatten(2)) * gate1
        return x + self.linear2(modulate(layer_norm(x, 1e-5), shift2, scale2)) * gate2
