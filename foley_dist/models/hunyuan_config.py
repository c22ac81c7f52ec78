"""HunyuanVideo-Foley DiT hyperparameters: the `model_kwargs` of the official configs, as a dataclass.

Field names and meanings follow the official YAML/JSON (`model_config.model_kwargs`) so a config file
can be read as-is. Options the official inference code never exercises (non-interleaved RoPE, sync
modulation, attention masks, patch_size > 1, ...) are refused up front instead of half-supported.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from foley_dist.errors import FoleyError

BUILTIN_DIR = Path(__file__).with_name("configs")  # the release's two configs, as shipped with it

# The only values of these options the official checkpoints use (and this implementation supports).
_FIXED = {
    "qk_norm_type": "rms",
    "attn_mode": "torch",
    "embedder_type": "default",
    "interleaved_audio_visual_rope": True,
    "sync_modulation": False,
    "add_sync_feat_to_audio": True,
    "cross_attention": True,
    "use_attention_mask": False,
    "condition_projection": "linear",
    "patch_size": 1,
}
_ACTIVATIONS = ("gelu_tanh", "gelu", "relu", "silu")

SYNC_GROUP = 8  # Synchformer emits 8 tokens per 16-frame window; each slot has a learned offset
TIME_FREQ_DIM = 256  # width of the sinusoidal timestep embedding


@dataclass(frozen=True)
class HunyuanDiTConfig:
    """DiT shape and options; defaults are the XXL release (`hunyuanvideo-foley-xxl.yaml`)."""

    depth_triple_blocks: int = 18
    depth_single_blocks: int = 36
    hidden_size: int = 1536
    num_heads: int = 12
    mlp_ratio: float = 4
    mlp_act_type: str = "gelu_tanh"
    qkv_bias: bool = True
    qk_norm: bool = True
    qk_norm_type: str = "rms"
    attn_mode: str = "torch"
    embedder_type: str = "default"
    interleaved_audio_visual_rope: bool = True
    enable_learnable_empty_visual_feat: bool = True
    sync_modulation: bool = False
    add_sync_feat_to_audio: bool = True
    cross_attention: bool = True
    use_attention_mask: bool = False
    condition_projection: str = "linear"
    sync_feat_dim: int = 768
    condition_dim: int = 768
    clip_dim: int = 768
    audio_vae_latent_dim: int = 128
    audio_frame_rate: int = 50
    patch_size: int = 1
    rope_dim_list: tuple[int, ...] | None = None
    rope_theta: float = 10000
    text_length: int = 77
    clip_length: int = 64
    sync_length: int = 192
    # Training-only (SSL/REPA alignment); the released checkpoints hold no tensors for them.
    depth_triple_ssl_encoder: int | None = None
    depth_single_ssl_encoder: int | None = 8
    use_repa_with_audiossl: bool = True
    use_mmaudio_singleblock: bool = True

    def __post_init__(self) -> None:
        for name, value in _FIXED.items():
            if getattr(self, name) != value:
                raise FoleyError(f"DiT config: {name}={getattr(self, name)!r} is not supported "
                                 f"(only {value!r}, as in the official configs)")
        if self.mlp_act_type not in _ACTIVATIONS:
            raise FoleyError(f"DiT config: mlp_act_type={self.mlp_act_type!r} is not one of {_ACTIVATIONS}")
        if self.hidden_size % self.num_heads:
            raise FoleyError(f"DiT config: hidden_size {self.hidden_size} is not divisible "
                             f"by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise FoleyError(f"DiT config: head_dim {self.head_dim} must be even for rotary embeddings")
        if self.rope_dim_list is not None:
            if isinstance(self.rope_dim_list, list):
                object.__setattr__(self, "rope_dim_list", tuple(self.rope_dim_list))
            if self.rope_dim_list != (self.head_dim,):
                raise FoleyError(f"DiT config: rope_dim_list {list(self.rope_dim_list)} must be null "
                                 f"or [{self.head_dim}] (1-D RoPE over head_dim)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def xxl(cls) -> "HunyuanDiTConfig":
        """HunyuanVideo-Foley-XXL: 18 triple + 36 single blocks, hidden 1536, 12 heads."""
        return cls()

    @classmethod
    def xl(cls) -> "HunyuanDiTConfig":
        """HunyuanVideo-Foley-XL: 12 triple + 24 single blocks, hidden 1408, 11 heads."""
        return cls(depth_triple_blocks=12, depth_single_blocks=24, hidden_size=1408, num_heads=11)

    @classmethod
    def tiny(cls) -> "HunyuanDiTConfig":
        """The 2 + 2 block test config of `hvf_tiny_config.json` (hidden 128, 2 heads)."""
        return cls(depth_triple_blocks=2, depth_single_blocks=2, hidden_size=128, num_heads=2,
                   depth_single_ssl_encoder=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HunyuanDiTConfig":
        """Accepts bare model_kwargs, {"model_kwargs": ...} or {"model_config": {"model_kwargs": ...}}."""
        if "model_config" in data:
            data = data["model_config"]
        if "model_kwargs" in data:
            data = data["model_kwargs"]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FoleyError(f"DiT config: unknown model_kwargs {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "HunyuanDiTConfig":
        """A release config (`configs/hunyuanvideo-foley-*.yaml`, model_config.model_kwargs) or a JSON
        file of the same content (`.json`, e.g. hvf_tiny_config.json)."""
        path = Path(path)
        parse = json.loads if path.suffix == ".json" else yaml.safe_load
        try:
            data = parse(path.read_text())
        except (OSError, ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError
            raise FoleyError(f"cannot read DiT config {path}: {str(exc).splitlines()[0]}; pass the release's config yaml") from exc
        if not isinstance(data, dict):
            raise FoleyError(f"DiT config {path}: expected a mapping with model_config.model_kwargs")
        try:
            return cls.from_dict(data)
        except TypeError as exc:
            raise FoleyError(f"DiT config {path}: {exc}") from exc

    @classmethod
    def builtin(cls, size: str) -> "HunyuanDiTConfig":
        """The built-in copy of the release's config for size 'xl' or 'xxl'."""
        return cls.from_file(BUILTIN_DIR / f"hunyuanvideo-foley-{size}.yaml")

