"""Visual encoder: SigLIP2 (fixed-resolution base/16 @ 512) pooled image embeddings, one per frame.

The fixed-resolution SigLIP2 checkpoints (`google/siglip2-base-patch16-512`) use the SigLIP v1
architecture (config `model_type: "siglip"`), so transformers' `SiglipVisionModel` loads them; the
NaFlex `Siglip2*` classes belong to the variable-resolution checkpoints and do not match. The
official pipeline calls `get_image_features`, i.e. the vision tower's attention-pooled output
(`pooler_output`, 768-dim, no projection), on frames preprocessed as Resize(512) -> ToTensor ->
Normalize(mean=0.5, std=0.5). Frames reach us already resized by the decoder, so only the
normalisation happens here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, SiglipVisionConfig, SiglipVisionModel
from transformers.utils import logging as hf_logging

from foley_dist.errors import FoleyError

# Normalize(mean=0.5, std=0.5) after ToTensor's /255: the official SigLIP2 preprocessing.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5
_MODEL_TYPES = ("siglip", "siglip_vision_model")  # full SigLIP folder, or a saved vision tower
_LAYOUT = "a local HF folder of google/siglip2-base-patch16-512: config.json (model_type 'siglip') + *.safetensors"


@dataclass(frozen=True)
class VisualEncoderConfig:
    """Architecture of the SigLIP vision tower; defaults are siglip2-base-patch16-512."""

    image_size: int = 512
    patch_size: int = 16
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    layer_norm_eps: float = 1e-6

    @classmethod
    def real(cls) -> VisualEncoderConfig:
        return cls()

    @classmethod
    def tiny(cls) -> VisualEncoderConfig:
        """CPU-test size; keeps hidden 768 because the DiT's clip_dim is 768 and there is no projection."""
        return cls(image_size=64, layers=1, intermediate=256)

    @property
    def out_dim(self) -> int:
        return self.hidden  # the attention-pooling head keeps the hidden width

    def to_hf(self) -> SiglipVisionConfig:
        return SiglipVisionConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            intermediate_size=self.intermediate,
            layer_norm_eps=self.layer_norm_eps,
        )

    @classmethod
    def from_hf(cls, c: SiglipVisionConfig) -> VisualEncoderConfig:
        return cls(
            image_size=c.image_size,
            patch_size=c.patch_size,
            hidden=c.hidden_size,
            layers=c.num_hidden_layers,
            heads=c.num_attention_heads,
            intermediate=c.intermediate_size,
            layer_norm_eps=c.layer_norm_eps,
        )


def visual_param_count(cfg: VisualEncoderConfig) -> int:
    """Parameters of the vision tower, counted on the meta device (no memory, no weights needed)."""
    with torch.device("meta"):
        return sum(p.numel() for p in SiglipVisionModel(cfg.to_hf()).parameters())


class VisualEncoder(nn.Module):
    """uint8 frames [T, 3, S, S] -> pooled SigLIP embeddings [1, T, D], encoded in chunks of
    `encode_batch_size` frames so activation memory is bounded regardless of T."""

    def __init__(self, model: SiglipVisionModel, encode_batch_size: int = 32):
        super().__init__()
        if encode_batch_size < 1:
            raise ValueError(f"encode_batch_size must be >= 1, got {encode_batch_size}")
        self.model = model.eval().requires_grad_(False)
        self.config = VisualEncoderConfig.from_hf(model.config)
        self.encode_batch_size = encode_batch_size

    @classmethod
    def from_config(cls, cfg: VisualEncoderConfig, encode_batch_size: int = 32) -> VisualEncoder:
        """Randomly initialised (from torch's global RNG): for tests and benchmarks without weights."""
        return cls(SiglipVisionModel(cfg.to_hf()), encode_batch_size)

    @classmethod
    def from_pretrained_dir(
        cls, path: str | Path, encode_batch_size: int = 32, dtype: torch.dtype = torch.float32
    ) -> VisualEncoder:
        """Load from a local folder only; the vision tower is taken from a full SigLIP checkpoint.

        dtype defaults to fp32 like the official pipeline (transformers 5 would otherwise pick the
        checkpoint's dtype)."""
        path = Path(path)
        model_type = check_hf_dir(path, "SigLIP2 visual encoder", _LAYOUT)
        if model_type not in _MODEL_TYPES:
            raise FoleyError(
                f"{path}/config.json has model_type {model_type!r}, expected one of {_MODEL_TYPES}; "
                f"pass {_LAYOUT} (the NaFlex 'siglip2' checkpoints are not supported)"
            )
        model = load_hf_tower(SiglipVisionModel, path, dtype, "SigLIP2 visual encoder", _LAYOUT)
        return cls(model, encode_batch_size)

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(path)

    @property
    def image_size(self) -> int:
        """The square frame size the decoder must deliver."""
        return self.config.image_size

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected uint8 frames [T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
        size = self.config.image_size
        if frames.shape[-2:] != (size, size):
            raise ValueError(f"frames are {tuple(frames.shape[-2:])}, the encoder needs {size}x{size}")
        param = next(self.model.parameters())
        chunks = [
            self.model(pixel_values=normalize_frames(chunk.to(param.device)).to(param.dtype)).pooler_output
            for chunk in frames.split(self.encode_batch_size)
        ]
        return torch.cat(chunks).unsqueeze(0)


def normalize_frames(frames: Tensor) -> Tensor:
    """uint8 -> float32 in [-1, 1], in the same op order as ToTensor + Normalize (bit-identical)."""
    return (frames.float().div(255) - PIXEL_MEAN) / PIXEL_STD


def check_hf_dir(path: Path, what: str, layout: str) -> str:
    """Fail early with the expected layout rather than a deep transformers/hub traceback;
    returns config.json's model_type."""
    if not path.is_dir():
        raise FoleyError(f"{what} folder {path} does not exist; expected {layout}")
    config = path / "config.json"
    if not config.is_file():
        raise FoleyError(f"{what} folder {path} has no config.json; expected {layout}")
    if not any(path.glob("*.safetensors")):
        raise FoleyError(f"{what} folder {path} has no *.safetensors weights; expected {layout}")
    try:
        return json.loads(config.read_text()).get("model_type", "")
    except json.JSONDecodeError as e:
        raise FoleyError(f"{config} is not valid JSON ({e}); expected {layout}") from e


M = TypeVar("M", bound=PreTrainedModel)


def load_hf_tower(cls: type[M], path: Path, dtype: torch.dtype, what: str, layout: str) -> M:
    """`cls.from_pretrained` from local safetensors only, strict on parameters.

    transformers would silently random-initialise missing weights (and only point at its own
    report for wrong shapes); here both are errors naming the keys. Unexpected keys are normal (the
    other tower of a CLIP-style checkpoint), so transformers' per-key report is silenced."""
    try:
        with _quiet_transformers():
            model, info = cls.from_pretrained(
                path,
                local_files_only=True,
                use_safetensors=True,
                dtype=dtype,
                ignore_mismatched_sizes=True,  # reported below, by name
                output_loading_info=True,
            )
    except (OSError, ValueError, RuntimeError) as e:
        raise FoleyError(f"cannot load the {what} from {path}: {e}; expected {layout}") from e
    params = dict(model.named_parameters())
    bad = [f"{k} (missing)" for k in sorted(info["missing_keys"]) if k in params]
    bad += [f"{k} (checkpoint {tuple(ckpt)}, config {tuple(cfg)})" for k, ckpt, cfg in sorted(info["mismatched_keys"])]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise FoleyError(
            f"{what} checkpoint in {path} does not match its config.json: {len(bad)} bad weights ({shown}); "
            f"expected {layout}"
        )
    return model


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
