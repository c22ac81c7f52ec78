"""The DiT's weight memory: exact bytes per part and block (for the planner), and building the DiT
under the memory options `hardware.weights=fp8` (models/fp8.py) and `diffusion.offload=blocks`
(models/offload.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from foley_dist.errors import FoleyError
from foley_dist.models.checkpoint import load_into, load_state_dict
from foley_dist.models.fp8 import Fp8Linear, dequantize, is_fp8_state, to_fp8_
from foley_dist.models.hunyuan_dit import CONDITION_PREFIXES, EMBED_PREFIXES, FINISH_PREFIXES, HunyuanDiT, HunyuanDiTConfig
from foley_dist.models.offload import offload_blocks


@dataclass(frozen=True)
class DiTBytes:
    """Parameter bytes of the DiT by where they are used."""

    embed: int  # audio_embedder + time_in: the first block range's rank
    condition: int  # condition projections and empty features: the fusion stage
    blocks: tuple[int, ...]  # per block of the flat index
    finish: int  # final layer: the last block range's rank

    @property
    def total(self) -> int:
        return self.embed + self.condition + sum(self.blocks) + self.finish

    @property
    def streamed(self) -> int:
        """Device bytes of the blocks under block offload: the largest two consecutive blocks (the
        one computing and the next one's copy)."""
        return max((a + b for a, b in zip(self.blocks, self.blocks[1:])), default=sum(self.blocks))

    def range(self, start: int, stop: int) -> "DiTBytes":
        """What a split rank running blocks start..stop-1 holds (hunyuan_dit.range_prefixes): those
        blocks, the embedders on the first range and the final layer on the last; the condition
        projections stay on the fusion rank."""
        last = stop == len(self.blocks)
        return DiTBytes(self.embed if start == 0 else 0, 0, self.blocks[start:stop], self.finish if last else 0)


def _bytes(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() * p.element_size() for p in module.parameters())


def dit_bytes(cfg: HunyuanDiTConfig, dtype: torch.dtype = torch.bfloat16, fp8: bool = False) -> DiTBytes:
    """Exact parameter bytes of HunyuanDiT(cfg) in `dtype` (fp8: the blocks' matmul weights in e4m3
    plus fp32 scales), counted on the meta device."""
    with torch.device("meta"):
        dit = HunyuanDiT(cfg).to(dtype)
    if fp8:
        to_fp8_(dit)
    named = dict(dit.named_children()) | dict(dit.named_parameters(recurse=False))

    def of(prefixes: tuple[str, ...]) -> int:
        return sum(_bytes(v) if isinstance(v, nn.Module) else v.numel() * v.element_size()
                   for k, v in named.items() if f"{k}." in prefixes or k in prefixes)

    return DiTBytes(of(EMBED_PREFIXES), of(CONDITION_PREFIXES),
                    tuple(_bytes(dit.block(i)) for i in range(dit.num_blocks)), of(FINISH_PREFIXES))


def is_fp8_file(path: Path) -> bool:
    """Whether `path` was written by `foley-dist convert --fp8` (safetensors header metadata)."""
    if path.suffix != ".safetensors":
        return False
    with safe_open(path, framework="pt") as f:
        return (f.metadata() or {}).get("weights") == "fp8"


def load_dit(cfg: HunyuanDiTConfig, path: Path, dtype: torch.dtype, fp8: bool,
             prefixes: tuple[str, ...] | None = None) -> HunyuanDiT:
    """The DiT from a checkpoint into host memory, in `dtype`, with fp8 blocks if `fp8`: an fp8 file
    (`foley-dist convert --fp8`) loads as it is, a bf16/fp32 one is quantised while loading. With
    `prefixes` only those tensors are read (a layer split's range; strip the rest afterwards)."""
    with torch.device("meta"):
        dit = HunyuanDiT(cfg).to(dtype)
    state = load_state_dict(path, prefixes=prefixes)
    stored_fp8 = is_fp8_state(state)
    if stored_fp8 and not fp8:
        raise FoleyError(f"{path} holds fp8 weights (foley-dist convert --fp8): pass hardware.weights=fp8 to use "
                         "them, or point model.path at a folder with the bf16 release checkpoint")
    if stored_fp8:
        to_fp8_(dit)
    load_into(dit, state, what="HunyuanVideo-Foley DiT", prefixes=prefixes, source=path)
    del state
    return to_fp8_(dit) if fp8 and not stored_fp8 else dit


def place_dit(dit: HunyuanDiT, device: torch.device, dtype: torch.dtype, fp8: bool, offload: bool) -> HunyuanDiT:
    """A host-memory DiT (random or `load_dit`'s) cast to `dtype`, quantised if `fp8` and not yet,
    then moved to `device`, its blocks left in host memory if `offload`; eval mode, no grads."""
    dit = dit.to("cpu")
    if not _is_fp8(dit):
        dit = dit.to(dtype)
        if fp8:
            to_fp8_(dit)
    dit = offload_blocks(dit, device) if offload else dit.to(device)
    return dit.eval().requires_grad_(False)


def _is_fp8(dit: HunyuanDiT) -> bool:
    return any(p.dtype == torch.float8_e4m3fn for p in dit.parameters())


def fp8_error(dit: HunyuanDiT, vae: nn.Module, seconds: float, steps: int, seed: int = 0) -> dict[str, float]:
    """Relative L2 error of fp8 weights against bf16 weights (both quantised from `dit`, computed in
    fp32; random conditioning, the release's sampler with guidance 4.5): the first step's velocity,
    the sampled latents and the decoded audio. `dit` is left unchanged."""
    from foley_dist.models.flow import sample  # only this measurement samples

    cfg, gen = dit.config, torch.Generator().manual_seed(seed)
    frames, visual, sync = round(seconds * cfg.audio_frame_rate), round(seconds * 8), round(seconds * 24 / 8) * 8

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    feats = randn(2, cfg.text_length, cfg.condition_dim), randn(2, visual, cfg.clip_dim), randn(2, sync, cfg.sync_feat_dim)
    noise = randn(1, cfg.audio_vae_latent_dim, frames)
    bf16 = copy.deepcopy(dit).to(torch.bfloat16).float()
    models = {"bf16": bf16, "fp8": to_fp8_(copy.deepcopy(bf16))}
    out = {}
    with torch.inference_mode():
        for name, model in models.items():
            cond = model.condition(*feats)
            first = model.velocity(torch.cat([noise, noise]), torch.full((2,), 1000.0), cond)
            latents = sample(lambda x, t: model.velocity(x, t, cond), noise, steps, 4.5)
            out[name] = {"velocity": first, "latents": latents, "audio": vae(latents)}
    errors = {k: float((out["fp8"][k] - out["bf16"][k]).norm() / out["bf16"][k].norm()) for k in out["bf16"]}
    return {"weights": weights_error(bf16, models["fp8"]), **errors}


def weights_error(full: HunyuanDiT, quantised: HunyuanDiT) -> float:
    """Relative L2 error of the fp8 weights (dequantised) over all quantised matrices."""
    full_weights = {k: v.detach() for k, v in full.named_parameters()}
    diff = norm = 0.0
    for name, module in quantised.named_modules():
        if isinstance(module, Fp8Linear):
            w = full_weights[f"{name}.weight"].float()
            diff += float((dequantize(module.weight, module.weight_scale) - w).square().sum())
            norm += float(w.square().sum())
    return (diff / norm) ** 0.5
