"""Synchformer visual branch: the sync features HunyuanVideo-Foley conditions on.

A MotionFormer ViT with divided space-time attention turns each 16-frame window (25 fps, 224x224
centre crops) into 8 tokens of 768, one per 2-frame tubelet: the patch tokens of each tubelet are
pooled by a small Transformer layer with its own CLS token. Windows start every 8 frames.

Window count. The official feature extractor takes floor((T - 16) / 8) + 1 windows and never pads:
exactly 3 windows (24 tokens) per second for 8 s clips (the DiT's default sync_length of 192 is 8 s
of them), 10 s and 15 s, but 14 windows (112 tokens) for a 5 s clip. The DiT stretches whatever
sync sequence it gets over the audio, so the token rate decides which audio time each window lands
on. We keep 24 tokens per second for every duration: round(3 * seconds) windows, padding the tail
with the last frame when those windows need more frames than the clip has (5 s: 125 frames -> 128,
120 tokens).

Parameter names match the `vfeat_extractor.*` entries of the official `synchformer_state_dict.pth`;
`load_official` ignores the audio branch and the sync classifier stored next to them.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from foley_dist.errors import FoleyError
from foley_dist.models.checkpoint import report_unused

_PREFIX = "vfeat_extractor."
# The 2-D patch embedding MotionFormer keeps only to count patches; the visual branch never runs it.
_UNUSED = ("patch_embed.proj.weight", "patch_embed.proj.bias")


@dataclass
class SyncEncoderConfig:
    image_size: int = 224
    patch_size: int = 16
    tubelet: int = 2  # frames per temporal patch: a window of 16 frames gives 8 tokens
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: int = 4
    fps: float = 25.0
    window: int = 16
    stride: int = 8
    tokens_per_second: int = 24
    window_batch_size: int = 8  # windows per forward pass: bounds activation memory

    @classmethod
    def real(cls) -> "SyncEncoderConfig":
        return cls()

    @classmethod
    def tiny(cls) -> "SyncEncoderConfig":
        """Same windowing and output (8 x 768 per window), 2x2 patches and one block: fast on CPU."""
        return cls(image_size=32, depth=1, heads=4, mlp_ratio=1)

    @property
    def tokens_per_window(self) -> int:
        return self.window // self.tubelet

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def sync_windows(num_frames: int, config: SyncEncoderConfig | None = None) -> int:
    """Windows taken from `num_frames` frames: the training rate of 3 per second, at least one."""
    c = config or SyncEncoderConfig()
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    return max(1, round(num_frames / c.fps * c.tokens_per_second / c.tokens_per_window))


def release_windows(num_frames: int, config: SyncEncoderConfig | None = None) -> int:
    """The release's window count: (T - 16) // 8 + 1; frames after the last full window are dropped."""
    c = config or SyncEncoderConfig()
    return (num_frames - c.window) // c.stride + 1


def sync_tokens(seconds: float, config: SyncEncoderConfig | None = None) -> int:
    """Sync tokens for a clip of `seconds` (5 s -> 120)."""
    c = config or SyncEncoderConfig()
    return sync_windows(max(1, round(seconds * c.fps)), c) * c.tokens_per_window


class DividedAttention(nn.Module):
    """Attention along one axis (time or space) of the patch grid; the CLS token attends to everything.

    Every patch attends to the CLS token plus the patches that share its spatial position (time
    attention) or its frame (space attention).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, frames: int, over_time: bool) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # [b, h, n, hd]
        # One window at a time: single-query attention kernels split work by batch size, and the
        # features must not depend on window_batch_size.
        cls_out = torch.cat(
            [F.scaled_dot_product_attention(q[i : i + 1, :, :1], k[i : i + 1], v[i : i + 1]) for i in range(b)]
        )

        def groups(t: torch.Tensor) -> torch.Tensor:  # [b, h, 1+f*p, hd] -> [b*g, h, s, hd]
            t = t[:, :, 1:].unflatten(2, (frames, -1))  # [b, h, f, p, hd]
            t = t.transpose(2, 3) if over_time else t  # groups: positions (time) or frames (space)
            return t.transpose(1, 2).flatten(0, 1)

        qg, kg, vg = groups(q), groups(k), groups(v)
        g = qg.shape[0] // b
        cls_k, cls_v = (t[:, :, :1].unsqueeze(1).expand(-1, g, -1, -1, -1).flatten(0, 1) for t in (k, v))
        out = F.scaled_dot_product_attention(qg, torch.cat([cls_k, kg], 2), torch.cat([cls_v, vg], 2))
        out = out.unflatten(0, (b, g)).transpose(1, 2)  # [b, h, g, s, hd]
        out = out.transpose(2, 3) if over_time else out  # back to [b, h, f, p, hd]
        out = torch.cat([cls_out, out.flatten(2, 3)], 2)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    """Pre-norm block: time attention (norm3), then space attention (norm1), then the MLP (norm2)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DividedAttention(dim, heads)
        self.timeattn = DividedAttention(dim, heads)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), frames, over_time=True)
        x = x + self.attn(self.norm1(x), frames, over_time=False)
        return x + self.mlp(self.norm2(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a packed input projection (nn.MultiheadAttention's layout)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class SpatialPooling(nn.Module):
    """One pre-norm Transformer layer over a tubelet's patches; its CLS output is the tubelet's token."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.self_attn = SelfAttention(dim, heads)
        self.linear1 = nn.Linear(dim, dim * mlp_ratio)
        self.linear2 = nn.Linear(dim * mlp_ratio, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, patches, d] -> [n, d]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        x = x + self.self_attn(self.norm1(x))
        x = x + self.linear2(F.gelu(self.linear1(self.norm2(x))))
        return x[:, 0]


class PatchEmbed3D(nn.Module):
    def __init__(self, c: SyncEncoderConfig):
        super().__init__()
        size = (c.tubelet, c.patch_size, c.patch_size)
        self.proj = nn.Conv3d(3, c.dim, kernel_size=size, stride=size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, 3, frames, H, W] -> [n, t*h*w, d]
        return self.proj(x).flatten(2).transpose(1, 2)


class SyncEncoder(nn.Module):
    """uint8 frames [T, 3, S, S] at 25 fps -> sync features [1, 8 * windows, 768]."""

    def __init__(self, config: SyncEncoderConfig):
        super().__init__()
        c = self.config = config
        t = c.tokens_per_window
        self.patch_embed_3d = PatchEmbed3D(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + c.grid**2, c.dim) * 0.02)
        self.temp_embed = nn.Parameter(torch.randn(1, t, c.dim) * 0.02)
        self.blocks = nn.ModuleList(DividedSpaceTimeBlock(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=1e-6)
        self.spatial_attn_agg = SpatialPooling(c.dim, c.heads, c.mlp_ratio)

    def windows(self, frames: torch.Tensor, pad_tail: bool = True) -> torch.Tensor:
        """[T, 3, S, S] -> [windows, 3, 16, S, S]: with `pad_tail` the training rate of windows, the tail
        padded with the last frame if needed; without, the release's (T - 16) // 8 + 1 full windows."""
        c = self.config
        n = sync_windows(frames.shape[0], c) if pad_tail else release_windows(frames.shape[0], c)
        if n < 1:
            raise FoleyError(f"{frames.shape[0]} sync frames make no {c.window}-frame window; "
                             f"a segment needs at least {c.window / c.fps:.2f} s of video")
        needed = c.stride * (n - 1) + c.window
        if needed > frames.shape[0]:
            frames = torch.cat([frames, frames[-1:].expand(needed - frames.shape[0], -1, -1, -1)])
        return frames.unfold(0, c.window, c.stride)[:n].permute(0, 1, 4, 2, 3)

    def encode_windows(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised windows [n, 3, 16, S, S] -> [n, 8, 768]."""
        c = self.config
        t = c.tokens_per_window
        x = self.patch_embed_3d(x)  # [n, t*p, d], tubelet-major
        pos = self.pos_embed[:, 1:].repeat(1, t, 1) + self.temp_embed.repeat_interleave(c.grid**2, 1)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x + pos], 1)
        for block in self.blocks:
            x = block(x, t)
        x = self.norm(x[:, 1:])
        return self.spatial_attn_agg(x.reshape(-1, c.grid**2, c.dim)).view(-1, t, c.dim)

    def forward(self, frames: torch.Tensor, pad_tail: bool = True) -> torch.Tensor:
        c = self.config
        shape = (3, c.image_size, c.image_size)
        if frames.dtype != torch.uint8 or frames.ndim != 4 or tuple(frames.shape[1:]) != shape:
            raise ValueError(f"expected uint8 frames [T, {', '.join(map(str, shape))}], "
                             f"got {frames.dtype} {tuple(frames.shape)}")
        out = []
        for chunk in self.windows(frames, pad_tail).split(c.window_batch_size):
            # the official preprocessing: torchvision's ToDtype(float32, scale=True), Normalize(0.5, 0.5)
            x = chunk.float().mul_(1.0 / 255).sub_(0.5).div_(0.5)
            out.append(self.encode_windows(x.to(self.pos_embed.dtype)))
        return torch.cat(out).reshape(1, -1, c.dim)

    @classmethod
    def load_official(cls, path: str | Path, config: SyncEncoderConfig | None = None,
                      dtype: torch.dtype = torch.float32) -> "SyncEncoder":
        """Build from `synchformer_state_dict.pth` (or a .safetensors copy), checking every key and shape."""
        state = _read_tensors(Path(path))
        visual = {k.removeprefix(_PREFIX): v for k, v in state.items() if k.startswith(_PREFIX)}
        visual = {k: v for k, v in visual.items() if k not in _UNUSED}
        if not visual:
            raise FoleyError(f"{path}: no '{_PREFIX}*' weights: not a Synchformer checkpoint; "
                             "pass synchformer_state_dict.pth from tencent/HunyuanVideo-Foley")
        with torch.device("meta"):
            model = cls(config or SyncEncoderConfig.real())
        load_exact(model, visual, f"{path} ({_PREFIX}*)")
        return model.to(dtype).eval().requires_grad_(False)


def load_pickle(path: Path) -> object:
    """torch.load with weights_only=True: tensors and plain containers, never arbitrary objects."""
    if not path.is_file():
        raise FoleyError(f"checkpoint {path} not found; pass the path of a local file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0][:200]
        raise FoleyError(f"{path}: refused: the pickle holds objects other than tensors and plain containers "
                         f"({reason}); convert it to .safetensors with a trusted script") from None
    except RuntimeError as e:
        raise FoleyError(f"{path}: not a readable torch checkpoint ({str(e).strip().splitlines()[0][:200]})") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a .safetensors file or a weights-only torch pickle."""
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors.torch import load_file

        return load_file(str(path))
    state = load_pickle(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FoleyError(f"{path}: expected a flat dict of tensors (a state_dict)")
    return state


def load_exact(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(assign=True) after checking every name and shape; fails with one readable line."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    problems = []
    if missing := sorted(expected.keys() - state.keys()):
        problems.append(f"missing {len(missing)} keys ({_first(missing)})")
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(s)}" for k, s in expected.items()
             if k in state and state[k].shape != s]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (checkpoint vs model: {_first(wrong)})")
    if problems:
        raise FoleyError(f"{source}: {'; '.join(problems)}; the file does not match this model config")
    report_unused(type(model).__name__, source, unexpected)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, assign=True)


def _first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")
