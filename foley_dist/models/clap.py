"""Text encoder: CLAP's RoBERTa text tower (`laion/larger_clap_general`), last hidden state [B, 77, 768].

How the official pipeline does it: it loads `ClapTextModelWithProjection`, tokenizes the pair
[negative prompt, prompt] in one call with `padding=True` (pad to the longer of the two, no
truncation), runs the model and keeps `last_hidden_state[:, :77]`. So a long prompt is encoded in
full and only its first 77 token features are kept (with bidirectional attention they still see the
rest), and a short pair comes back shorter than 77.

We do the same, except for the output length, which is a choice here:
- `fixed_length=True` (default): always [B, 77, D]. Pad positions hold CLAP's features for the pad
  token (masked out as keys inside CLAP, so real-token features are unchanged). Static shapes suit
  pipeline buffers and a once-per-run prompt cache, but the DiT's text cross-attention has no mask,
  so the extra pad tokens change its output compared with the official pipeline.
- `fixed_length=False`: the official behaviour, [B, min(77, longest), D]; for parity encode
  [negative, prompt] in one call, as the official does.
Inputs longer than the position table (512 tokens) are truncated, where the official would crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import ClapTextConfig, ClapTextModelWithProjection, PreTrainedTokenizerBase

from foley_dist.errors import FoleyError
from foley_dist.models.siglip import check_hf_dir, load_hf_tower
from foley_dist.models.tokenizer import TINY_VOCAB_SIZE, build_tiny_tokenizer, load_clap_tokenizer

MAX_TEXT_TOKENS = 77  # the DiT's text length
_MODEL_TYPES = ("clap", "clap_text_model")  # full CLAP folder, or a saved text tower
_LAYOUT = (
    "a local HF folder of laion/larger_clap_general: config.json (model_type 'clap') + *.safetensors "
    "+ tokenizer files (tokenizer.json or vocab.json/merges.txt, tokenizer_config.json)"
)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Architecture of the CLAP text tower; defaults are laion/larger_clap_general (RoBERTa-base)."""

    vocab_size: int = 50265
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_positions: int = 514  # RoBERTa: 512 tokens + offset of padding_idx + 1
    projection_dim: int = 512  # unused for our output, but part of the checkpoint

    @classmethod
    def real(cls) -> TextEncoderConfig:
        return cls()

    @classmethod
    def tiny(cls) -> TextEncoderConfig:
        """CPU-test size for the built-in byte tokenizer; hidden stays 768 (the DiT's condition dim)."""
        return cls(vocab_size=TINY_VOCAB_SIZE, layers=1, intermediate=256, projection_dim=32)

    @property
    def out_dim(self) -> int:
        return self.hidden

    def to_hf(self) -> ClapTextConfig:
        return ClapTextConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            intermediate_size=self.intermediate,
            max_position_embeddings=self.max_positions,
            projection_dim=self.projection_dim,
        )

    @classmethod
    def from_hf(cls, c: ClapTextConfig) -> TextEncoderConfig:
        return cls(
            vocab_size=c.vocab_size,
            hidden=c.hidden_size,
            layers=c.num_hidden_layers,
            heads=c.num_attention_heads,
            intermediate=c.intermediate_size,
            max_positions=c.max_position_embeddings,
            projection_dim=c.projection_dim,
        )


def text_param_count(cfg: TextEncoderConfig) -> int:
    """Parameters of the text tower + projection, counted on the meta device."""
    with torch.device("meta"):
        return sum(p.numel() for p in ClapTextModelWithProjection(cfg.to_hf()).parameters())


class TextEncoder(nn.Module):
    """prompts -> CLAP last hidden state [B, 77, D] (see the module docstring for the length rule)."""

    def __init__(
        self,
        model: ClapTextModelWithProjection,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = MAX_TEXT_TOKENS,
        fixed_length: bool = True,
    ):
        super().__init__()
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the model only {model.config.vocab_size}")
        if tokenizer.pad_token_id != model.config.pad_token_id:
            raise ValueError(f"tokenizer pad id {tokenizer.pad_token_id} != model pad id {model.config.pad_token_id}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.config = TextEncoderConfig.from_hf(model.config)
        self.max_length = max_length
        self.fixed_length = fixed_length
        # RoBERTa positions start after padding_idx, so the table holds max_positions - pad_id - 1 tokens.
        self.max_input_tokens = model.config.max_position_embeddings - model.config.pad_token_id - 1

    @classmethod
    def from_config(
        cls,
        cfg: TextEncoderConfig,
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_length: int = MAX_TEXT_TOKENS,
        fixed_length: bool = True,
    ) -> TextEncoder:
        """Randomly initialised (from torch's global RNG); the built-in byte tokenizer unless given."""
        if tokenizer is None:
            tokenizer = build_tiny_tokenizer()
        return cls(ClapTextModelWithProjection(cfg.to_hf()), tokenizer, max_length, fixed_length)

    @classmethod
    def from_pretrained_dir(
        cls,
        path: str | Path,
        max_length: int = MAX_TEXT_TOKENS,
        fixed_length: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> TextEncoder:
        """Load weights and tokenizer from one local folder; fp32 by default like the official."""
        path = Path(path)
        model_type = check_hf_dir(path, "CLAP text encoder", _LAYOUT)
        if model_type not in _MODEL_TYPES:
            raise FoleyError(
                f"{path}/config.json has model_type {model_type!r}, expected one of {_MODEL_TYPES}; pass {_LAYOUT}"
            )
        tokenizer = load_clap_tokenizer(path)
        model = load_hf_tower(ClapTextModelWithProjection, path, dtype, "CLAP text encoder", _LAYOUT)
        return cls(model, tokenizer, max_length, fixed_length)

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def tokenize(self, prompts: list[str]) -> dict[str, Tensor]:
        """input_ids / attention_mask [B, L], right-padded; L >= max_length when fixed_length."""
        if not prompts:
            raise ValueError("no prompts to encode")
        enc = self.tokenizer(list(prompts), truncation=True, max_length=self.max_input_tokens)
        width = max(len(ids) for ids in enc["input_ids"])
        if self.fixed_length:
            width = max(width, self.max_length)
        batch = self.tokenizer.pad(enc, padding="max_length", max_length=width, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> Tensor:
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in self.tokenize(prompts).items()}
        return self.model(**inputs).last_hidden_state[:, : self.max_length]
