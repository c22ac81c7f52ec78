"""Decoder half of HunyuanVideo-Foley's DAC-style audio VAE: continuous latents -> mono waveform.

The release's `vae_128d_48k.pth` is a descript-audio-codec model in continuous (VAE) mode, saved by
audiotools as {"state_dict": ..., "metadata": {"kwargs": <constructor arguments>}}. Decoding is
`post_quant_conv` (a 1x1 conv) then `decoder.model`: a conv, one upsampling block per rate
(transposed conv + three dilated residual units with Snake activations), Snake, conv to one channel,
tanh. The product of the rates is the hop: 960 samples per latent frame at 48 kHz (50 frames/s).

Weight norm: the release was trained with `torch.nn.utils.weight_norm`, so each conv stores
`weight_g` (per-output-channel gain, shape [C, 1, 1]) and `weight_v` (direction). Our convs keep
those two parameters under those names, so the official keys load unchanged, and rebuild the weight
with the same kernel (`torch._weight_norm`) on every call.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from foley_dist.errors import FoleyError
from foley_dist.models.synchformer import load_exact, load_pickle

_DECODE_PREFIXES = ("decoder.", "post_quant_conv.")


@dataclass
class DacDecoderConfig:
    latent_dim: int = 128
    decoder_dim: int = 2048
    decoder_rates: tuple[int, ...] = (8, 5, 4, 3, 2)
    sample_rate: int = 48000

    def __post_init__(self) -> None:
        if self.decoder_dim % 2 ** len(self.decoder_rates):
            raise ValueError(f"decoder_dim={self.decoder_dim} must halve once per rate {self.decoder_rates}")

    @classmethod
    def real(cls) -> "DacDecoderConfig":
        """The values the release is believed to use; `from_official` reads the file's own."""
        return cls()

    @classmethod
    def tiny(cls) -> "DacDecoderConfig":
        """Real latent size and hop (250 latents -> 240000 samples), three stages of few channels: fast on CPU."""
        return cls(decoder_dim=32, decoder_rates=(8, 8, 15))

    @classmethod
    def from_kwargs(cls, kwargs: dict, source: str) -> "DacDecoderConfig":
        """From the DAC constructor arguments stored in the checkpoint's metadata."""
        if not kwargs.get("continuous", False):
            raise FoleyError(f"{source}: a discrete (codebook) DAC, not the continuous VAE; pass vae_128d_48k.pth")
        kwargs = dict(kwargs)
        if kwargs.get("latent_dim") is None and {"encoder_dim", "encoder_rates"} <= kwargs.keys():
            # DAC's default: the encoder's width after its last downsampling
            kwargs["latent_dim"] = kwargs["encoder_dim"] * 2 ** len(kwargs["encoder_rates"])
        missing = [k for k in ("latent_dim", "decoder_dim", "decoder_rates", "sample_rate") if kwargs.get(k) is None]
        if missing:
            raise FoleyError(f"{source}: metadata kwargs lack {', '.join(missing)}; pass the release's "
                             "vae_128d_48k.pth")
        return cls(int(kwargs["latent_dim"]), int(kwargs["decoder_dim"]),
                   tuple(int(r) for r in kwargs["decoder_rates"]), int(kwargs["sample_rate"]))

    @property
    def hop_length(self) -> int:
        return math.prod(self.decoder_rates)


class Snake1d(nn.Module):
    """x + sin^2(alpha x) / alpha, with a learned per-channel alpha: a periodic-friendly activation."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


def _split_weight(conv: nn.Module) -> None:
    """Replace conv.weight by weight_g * weight_v / ||weight_v|| (norm over all dims but 0)."""
    v = conv.weight.detach()
    del conv.weight
    conv.weight_v = nn.Parameter(v)
    conv.weight_g = nn.Parameter(torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True))


class WNConv1d(nn.Conv1d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _split_weight(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, torch._weight_norm(self.weight_v, self.weight_g, 0), self.bias)


class WNConvTranspose1d(nn.ConvTranspose1d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _split_weight(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch._weight_norm(self.weight_v, self.weight_g, 0)
        return nn.functional.conv_transpose1d(
            x, weight, self.bias, self.stride, self.padding, self.output_padding, self.groups, self.dilation
        )


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class DecoderBlock(nn.Module):
    """Upsample by `stride` (exactly: kernel 2*stride, padding ceil(stride/2)), then residual units."""

    def __init__(self, dim_in: int, dim_out: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim_in),
            WNConvTranspose1d(dim_in, dim_out, kernel_size=2 * stride, stride=stride,
                              padding=math.ceil(stride / 2), output_padding=stride % 2),
            ResidualUnit(dim_out, 1),
            ResidualUnit(dim_out, 3),
            ResidualUnit(dim_out, 9),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Decoder(nn.Module):
    def __init__(self, c: DacDecoderConfig):
        super().__init__()
        dims = [c.decoder_dim // 2**i for i in range(len(c.decoder_rates) + 1)]
        self.model = nn.Sequential(
            WNConv1d(c.latent_dim, dims[0], kernel_size=7, padding=3),
            *(DecoderBlock(dims[i], dims[i + 1], r) for i, r in enumerate(c.decoder_rates)),
            Snake1d(dims[-1]),
            WNConv1d(dims[-1], 1, kernel_size=7, padding=3),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class AudioDecoder(nn.Module):
    """Latents [B, latent_dim, L] -> waveform [B, L * hop_length], mono, in [-1, 1]."""

    def __init__(self, config: DacDecoderConfig):
        super().__init__()
        self.config = config
        self.post_quant_conv = nn.Conv1d(config.latent_dim, config.latent_dim, 1)
        self.decoder = Decoder(config)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 3 or latents.shape[1] != self.config.latent_dim:
            raise ValueError(f"expected latents [B, {self.config.latent_dim}, L], got {tuple(latents.shape)}")
        return self.decoder(self.post_quant_conv(latents.to(self.post_quant_conv.weight.dtype))).squeeze(1)

    @classmethod
    def from_official(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "AudioDecoder":
        """Build from `vae_128d_48k.pth`: hyperparameters from its metadata, decoder weights only.

        A .safetensors copy works too if its header metadata has "kwargs" (the JSON of those arguments).
        """
        path = Path(path)
        state, kwargs = _read_vae(path)
        with torch.device("meta"):
            model = cls(DacDecoderConfig.from_kwargs(kwargs, str(path)))
        load_exact(model, {k: v for k, v in state.items() if k.startswith(_DECODE_PREFIXES)}, f"{path} (decoder)")
        return model.to(dtype).eval().requires_grad_(False)


def _read_vae(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, constructor kwargs) from an audiotools checkpoint or a .safetensors copy."""
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        if "kwargs" not in meta:
            raise FoleyError(f"{path}: header metadata lacks 'kwargs' (the VAE's hyperparameters as JSON)")
        return state, json.loads(meta["kwargs"])
    ckpt = load_pickle(path)
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict)
            and isinstance(ckpt.get("metadata"), dict) and isinstance(ckpt["metadata"].get("kwargs"), dict)):
        raise FoleyError(f"{path}: expected {{'state_dict', 'metadata': {{'kwargs'}}}} (an audiotools DAC "
                         "checkpoint); pass vae_128d_48k.pth from tencent/HunyuanVideo-Foley")
    return ckpt["state_dict"], ckpt["metadata"]["kwargs"]
