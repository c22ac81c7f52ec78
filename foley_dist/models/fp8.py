"""fp8 weight-only storage of the DiT blocks (`hardware.weights=fp8`): half the bytes of bf16.

Every nn.Linear and nn.Conv1d weight inside the triple- and single-stream blocks (98-99 % of the
DiT's parameters) is stored as float8 e4m3 with one fp32 scale per output channel (the channel's
largest magnitude maps to e4m3's largest finite value, 448). Each matmul casts the fp8 weight to the
compute dtype (exact: e4m3 values are representable in bf16/fp32) and multiplies its output by the
scales: the product with the dequantised weight, without a second weight-sized pass. Biases, norms,
embedders and the final layer keep the DiT's dtype. Plain torch ops only, so it runs on CPU and on
any GPU; native fp8 matmuls (torch._scaled_mm on Hopper/Ada) are not used.

Quantisation always runs on the CPU in fp32, so converting on load and loading a file written by
`foley-dist convert --fp8` give the same bits on every device.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
SCALE_SUFFIX = "weight_scale"  # state-dict key beside each fp8 `weight`
QUANTISED_PREFIXES = ("triple_blocks.", "single_blocks.")  # where the DiT's fp8 weights live


def quantize(weight: Tensor) -> tuple[Tensor, Tensor]:
    """weight [out, ...] -> (e4m3 weight, fp32 scale [out]) with weight ~= e4m3 * scale per row."""
    w = weight.detach().to("cpu", torch.float32)
    amax = w.abs().flatten(1).amax(1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (w / scale.view(-1, *([1] * (w.dim() - 1)))).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """The fp32 weight an (e4m3, scale) pair stands for."""
    return q.float() * scale.view(-1, *([1] * (q.dim() - 1)))


class Fp8Linear(nn.Module):
    """nn.Linear with an e4m3 weight and per-output-channel scales; same state-dict names plus
    `weight_scale`."""

    def __init__(self, weight: Tensor, scale: Tensor, bias: Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.weight_scale = nn.Parameter(scale, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.compute_dtype = dtype  # the matmul's weight dtype: the DiT's dtype before quantisation

    def _scaled(self, y: Tensor) -> Tensor:
        y = y * self.weight_scale.to(y.dtype)
        return y if self.bias is None else y + self.bias

    def forward(self, x: Tensor) -> Tensor:
        return self._scaled(F.linear(x, self.weight.to(self.compute_dtype)))


class Fp8Conv1d(Fp8Linear):
    """The DiT's channel-last Conv1d ([B, L, C] in and out) with an e4m3 weight [out, in, k]."""

    def __init__(self, weight: Tensor, scale: Tensor, bias: Tensor | None, dtype: torch.dtype, padding: int):
        super().__init__(weight, scale, bias, dtype)
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv1d(x.transpose(1, 2), self.weight.to(self.compute_dtype), padding=self.padding)
        return self._scaled(y.transpose(1, 2))


def _targets(module: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, layer) of every Linear / Conv1d under `module`'s blocks."""
    for prefix in QUANTISED_PREFIXES:
        blocks = getattr(module, prefix.rstrip("."), None)
        if blocks is None:
            continue
        for parent in blocks.modules():
            for name, child in parent.named_children():
                if isinstance(child, (nn.Linear, nn.Conv1d)):
                    yield parent, name, child


def _fp8_layer(layer: nn.Module, q: Tensor, scale: Tensor, dtype: torch.dtype) -> Fp8Linear:
    if isinstance(layer, nn.Conv1d):
        if layer.stride != (1,) or layer.dilation != (1,) or layer.groups != 1 or not isinstance(layer.padding, tuple):
            raise ValueError(f"fp8: unsupported Conv1d {layer}")
        return Fp8Conv1d(q, scale, layer.bias, dtype, layer.padding[0])
    return Fp8Linear(q, scale, layer.bias, dtype)


def to_fp8_(module: nn.Module) -> nn.Module:
    """Swap (in place) the blocks' Linear/Conv1d layers for fp8 ones, quantising their weights. On
    the meta device only the layout changes (to load an fp8 checkpoint into)."""
    for parent, name, layer in list(_targets(module)):
        dtype = layer.weight.dtype
        if layer.weight.is_meta:
            q = torch.empty(layer.weight.shape, dtype=FP8, device="meta")
            scale = torch.empty(layer.weight.shape[0], dtype=torch.float32, device="meta")
        else:
            q, scale = quantize(layer.weight)
            q, scale = q.to(layer.weight.device), scale.to(layer.weight.device)
        setattr(parent, name, _fp8_layer(layer, q, scale, dtype))
    return module


def is_fp8_state(state: dict[str, Tensor]) -> bool:
    """Whether a state dict was written by `fp8_state_dict` (holds `weight_scale` entries)."""
    return any(k.endswith(f".{SCALE_SUFFIX}") for k in state)


def fp8_state_dict(state: dict[str, Tensor], dtype: torch.dtype = torch.bfloat16) -> dict[str, Tensor]:
    """A DiT checkpoint with the blocks' matmul weights (2-D linear or 3-D conv, under
    QUANTISED_PREFIXES) as (e4m3, scale) and every other floating tensor in `dtype`: what
    `foley-dist convert --fp8` writes, and what `to_fp8_` produces from the same weights."""
    out = {}
    for key, tensor in state.items():
        if key.startswith(QUANTISED_PREFIXES) and key.endswith(".weight") and tensor.dim() in (2, 3):
            out[key], out[f"{key[:-len('weight')]}{SCALE_SUFFIX}"] = quantize(tensor.to(dtype))
        else:
            out[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return out
