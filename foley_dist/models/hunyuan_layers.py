"""Small building blocks of the HunyuanVideo-Foley DiT.

Attribute names (`linear`, `w1`/`w2`/`w3`, `fc1`/`fc2`, `proj`, ...) are fixed by the official
checkpoint layout. The arithmetic order follows the official model where it changes float results
(fp32 RMSNorm with the weight applied after casting back, RoPE in fp32, `1 + scale` modulation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}


def swiglu_hidden(hidden: float, multiple_of: int = 256) -> int:
    """Hidden width of the conv SwiGLU: 2/3 of the nominal width, rounded up to a multiple of 256."""
    width = int(2 * hidden / 3)
    return multiple_of * ((width + multiple_of - 1) // multiple_of)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift, with shift/scale broadcast over the sequence."""
    return x * (1 + scale) + shift


def layer_norm(x: Tensor, eps: float) -> Tensor:
    """Parameter-free LayerNorm over channels (the DiT's norms have no affine weights)."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Full attention on [B, L, H, D] inputs; returns [B, L, H * D]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)


class RMSNorm(nn.Module):
    """Per-head query/key RMSNorm of the triple-stream blocks: fp32 statistics, weight after cast-back."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


def rope_table(positions: Tensor, dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin [L, dim] for (possibly non-contiguous) float positions, channel pairs interleaved.

    Each entry depends only on its own position, so a table for selected positions equals the
    matching rows of a table for 0..N-1 bit for bit.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device)[: dim // 2].float() / dim))
    angles = torch.outer(positions.float(), inv_freq)
    return angles.cos().repeat_interleave(2, dim=1), angles.sin().repeat_interleave(2, dim=1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), computed in fp32."""
    xf = x.float()
    even, odd = xf.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack((-odd, even), dim=-1).flatten(-2)
    return (xf * cos + rotated * sin).type_as(x)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [N, dim] (cos half first) of timesteps in [0, 1000]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ChannelLastConv1d(nn.Conv1d):
    """Conv1d over the sequence of a [B, L, C] tensor (the token layout used everywhere else)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class SwiGLU(nn.Module):
    """Gated MLP w2(silu(w1 x) * w3 x) without biases (visual feature projection)."""

    def __init__(self, dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, out_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ConvSwiGLU(nn.Module):
    """SwiGLU whose projections are 1-D convolutions along the sequence (MMAudio-style)."""

    def __init__(self, dim: int, hidden: float, kernel_size: int):
        super().__init__()
        width, pad = swiglu_hidden(hidden), kernel_size // 2
        self.w1 = ChannelLastConv1d(dim, width, kernel_size, padding=pad, bias=False)
        self.w2 = ChannelLastConv1d(width, dim, kernel_size, padding=pad, bias=False)
        self.w3 = ChannelLastConv1d(dim, width, kernel_size, padding=pad, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Mlp(nn.Module):
    """fc1 -> activation -> fc2 (triple-stream block MLPs)."""

    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[act]()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Modulation(nn.Module):
    """adaLN parameters: linear(silu(c)) split later into `factor` chunks of width hidden."""

    def __init__(self, hidden: int, factor: int):
        super().__init__()
        self.linear = nn.Linear(hidden, factor * hidden)

    def forward(self, c: Tensor) -> Tensor:
        return self.linear(F.silu(c))
