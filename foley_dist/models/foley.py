"""The model as the stages see it: which parts exist, their configs, and how each rank builds only
the parts its stages need (random-initialised for `tiny`, loaded from local files for hunyuan_*).

Official release layout expected under model.path (see README.md):
    hunyuanvideo_foley.pth|.safetensors   DiT (XXL); hunyuanvideo_foley_xl.pth for XL
    config.yaml                           optional: the DiT architecture (model.config=PATH)
    vae_128d_48k.pth|.safetensors         audio VAE (decoder used)
    synchformer_state_dict.pth|.safetensors
    siglip2/                              local HF folder of google/siglip2-base-patch16-512
    clap/                                 local HF folder of laion/larger_clap_general
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from foley_dist.config import ModelConfig
from foley_dist.errors import FoleyError
from foley_dist.models.checkpoint import load_into, load_state_dict
from foley_dist.models.clap import TextEncoder, TextEncoderConfig
from foley_dist.models.dac_vae import AudioDecoder, DacDecoderConfig
from foley_dist.models.dit_memory import is_fp8_file, load_dit, place_dit
from foley_dist.models.hunyuan_dit import (
    CONDITION_PREFIXES,
    HunyuanDiT,
    HunyuanDiTConfig,
    range_prefixes,
    strip_to_condition,
    strip_to_range,
)
from foley_dist.models.siglip import VisualEncoder, VisualEncoderConfig
from foley_dist.models.synchformer import SyncEncoder, SyncEncoderConfig

PARTS = ("visual", "sync", "text", "dit", "vae")  # "dit_condition" is the DiT's condition projections only
_STAGE_PARTS = {"vision": ("visual", "sync"), "fusion": ("text", "dit_condition"), "diffusion": ("dit", "vae")}


def stage_parts(stages: tuple[str, ...]) -> tuple[str, ...]:
    """The model parts a rank hosting `stages` must build, each once (a whole DiT also serves fusion)."""
    parts = tuple(dict.fromkeys(p for s in stages for p in _STAGE_PARTS[s]))
    return tuple(p for p in parts if not (p == "dit_condition" and "dit" in parts))


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and rates of one model family member; no weights."""

    name: str
    visual: VisualEncoderConfig
    sync: SyncEncoderConfig
    text: TextEncoderConfig
    dit: HunyuanDiTConfig
    vae: DacDecoderConfig
    visual_fps: float = 8.0
    sync_fps: float = 25.0
    latent_rate: int = 50
    dit_file: str = "hunyuanvideo_foley"  # stem of the DiT checkpoint in the release folder

    @property
    def sample_rate(self) -> int:
        return self.vae.sample_rate

    @classmethod
    def named(cls, name: str, config: str | Path | None = None) -> "ModelSpec":
        """The model `name`; `config` (a release config yaml) replaces its built-in DiT architecture."""
        dit = HunyuanDiTConfig.from_file(config) if config else None
        if name == "tiny":
            return cls("tiny", VisualEncoderConfig.tiny(), SyncEncoderConfig.tiny(), TextEncoderConfig.tiny(),
                       dit or HunyuanDiTConfig.tiny(), DacDecoderConfig.tiny())
        if name in ("hunyuan_xl", "hunyuan_xxl"):
            size = name.removeprefix("hunyuan_")
            return cls(name, VisualEncoderConfig.real(), SyncEncoderConfig.real(), TextEncoderConfig.real(),
                       dit or HunyuanDiTConfig.builtin(size), DacDecoderConfig.real(),
                       dit_file="hunyuanvideo_foley_xl" if size == "xl" else "hunyuanvideo_foley")
        raise FoleyError(f"unknown model {name!r}; use model=tiny, model=hunyuan_xl or model=hunyuan_xxl")

    @classmethod
    def for_config(cls, cfg: ModelConfig) -> "ModelSpec":
        if cfg.config and not Path(cfg.config).is_file():
            raise FoleyError(f"model.config={cfg.config} not found; pass the release's config yaml "
                             "(e.g. configs/hunyuanvideo-foley-xl.yaml) or leave it unset for the built-in one")
        return cls.named(cfg.name, cfg.config)


@contextmanager
def _cast_as_built(dtype: torch.dtype | None) -> Iterator[None]:
    """Cast each submodule to `dtype` as soon as it is built and attached to its parent: it was
    initialised in fp32 as before (same values as building the whole model and casting it), but the
    fp32 copy of the whole model never exists, only that of the layer being built."""
    if dtype is None:
        yield
        return
    handle = register_module_module_registration_hook(lambda parent, name, sub: None if sub is None else sub.to(dtype))
    try:
        yield
    finally:
        handle.remove()


def random_part(spec: ModelSpec, part: str, seed: int, device: torch.device = torch.device("cpu"),
                dtype: torch.dtype | None = None) -> nn.Module:
    """Random init seeded per part, so every rank that builds a part gets the same weights (on the
    same device type). On CUDA the DiT is initialised on the GPU: a full-size random XL/XXL DiT
    (model.config=...) builds in seconds there instead of minutes on the CPU. `dtype` (the DiT's
    parts only) casts it layer by layer while it is built."""
    if part == "dit_condition":
        # The condition projections are built before the blocks, so a DiT without blocks draws the
        # same weights for them from the same seed, without the whole model's transient.
        blockless = replace(spec, dit=replace(spec.dit, depth_triple_blocks=0, depth_single_blocks=0))
        dit = random_part(blockless, "dit", seed, device, dtype)
        dit.config = spec.dit
        return strip_to_condition(dit)
    torch.manual_seed(seed * len(PARTS) + PARTS.index(part))
    if part == "dit":
        with torch.device(device if device.type == "cuda" else "cpu"), _cast_as_built(dtype):
            return HunyuanDiT(spec.dit)
    return {
        "visual": lambda: VisualEncoder.from_config(spec.visual),
        "sync": lambda: SyncEncoder(spec.sync),
        "text": lambda: TextEncoder.from_config(spec.text, fixed_length=False),
        "vae": lambda: AudioDecoder(spec.vae),
    }[part]()


def find_weights(root: Path, stem: str) -> Path:
    """`stem`.safetensors (preferred, see `foley-dist convert`) or `stem`.pth under the release folder."""
    for suffix in (".safetensors", ".pth"):
        if (root / f"{stem}{suffix}").is_file():
            return root / f"{stem}{suffix}"
    raise FoleyError(f"{root} has no {stem}.safetensors or {stem}.pth; model.path must hold the official release (see README.md)")


def _official_part(spec: ModelSpec, part: str, root: Path, device: torch.device,
                   dit_dtype: torch.dtype = torch.float32, dit_prefixes: tuple[str, ...] | None = None) -> nn.Module:
    if part == "visual":
        return VisualEncoder.from_pretrained_dir(root / "siglip2")
    if part == "text":
        return TextEncoder.from_pretrained_dir(root / "clap", fixed_length=False)
    if part == "sync":
        return SyncEncoder.load_official(find_weights(root, "synchformer_state_dict"), spec.sync)
    if part == "vae":
        return AudioDecoder.from_official(find_weights(root, "vae_128d_48k"))
    with torch.device("meta"):  # no memory until the checkpoint's tensors are assigned
        dit = HunyuanDiT(spec.dit)
    prefixes = CONDITION_PREFIXES if part == "dit_condition" else dit_prefixes  # read only what this rank uses
    path = find_weights(root, spec.dit_file)
    # Mapped on the host, then each tensor is copied once to `device` in `dit_dtype`: the device
    # never holds more than the final weights plus one tensor in flight (issue 17 item 7).
    state = load_state_dict(path, prefixes=prefixes)
    load_into(dit, state, what="HunyuanVideo-Foley DiT", prefixes=prefixes, source=path, dtype=dit_dtype, device=device)
    return strip_to_condition(dit) if part == "dit_condition" else dit


def weights_root(spec: ModelSpec, cfg: ModelConfig) -> Path | None:
    """The release folder for official weights (checked before any rank loads anything); None for tiny."""
    if spec.name == "tiny":
        return None
    if not cfg.path:
        raise FoleyError(f"model={spec.name} needs model.path=DIR pointing at the downloaded release (see README.md)")
    root = Path(cfg.path)
    if not root.is_dir():
        raise FoleyError(f"model.path={root} is not a directory; point it at the downloaded release (see README.md)")
    return root


def build_parts(spec: ModelSpec, parts: tuple[str, ...], cfg: ModelConfig, device: torch.device,
                dit_dtype: torch.dtype = torch.float32, fp8: bool = False, offload: bool = False,
                blocks: tuple[int, int] | None = None) -> dict[str, nn.Module]:
    """Build (tiny) or load (official weights from cfg.path) the given parts, in eval mode on `device`.

    The DiT (and its condition projections) is cast to `dit_dtype`, as the release casts it to bf16
    on GPU; every other part stays fp32. `fp8` / `offload`: the whole DiT's memory options
    (models/dit_memory.py), built in host memory first. `blocks`: a layer split's range [start,
    stop): the DiT holds only those blocks (plus the embedders on the first range and the final
    layer on the last), and only their tensors are read from the checkpoint."""
    root = weights_root(spec, cfg)
    out = {}
    for part in parts:
        path = find_weights(root, spec.dit_file) if root is not None and part == "dit" else None
        fp8_dit = part == "dit" and (fp8 or (path is not None and is_fp8_file(path)))  # an fp8 file loads as fp8
        prefixes = range_prefixes(spec.dit, *blocks) if part == "dit" and blocks is not None else None
        if part == "dit" and (fp8_dit or offload):
            dit = (random_part(spec, part, cfg.init_seed, device) if path is None
                   else load_dit(spec.dit, path, dit_dtype, fp8_dit, prefixes))
            dit = strip_to_range(dit, *blocks) if blocks is not None else dit
            out[part] = place_dit(dit, device, dit_dtype, fp8_dit, offload)
            continue
        dtype = dit_dtype if part in ("dit", "dit_condition") else None
        if spec.name == "tiny":
            module = random_part(spec, part, cfg.init_seed, device, dtype)
        else:  # the DiT arrives on `device` in `dtype` already (both ways): the .to below is then a no-op
            module = _official_part(spec, part, root, device, dtype or torch.float32, prefixes)
        if prefixes is not None:
            module = strip_to_range(module, *blocks)
        out[part] = (module.to(device, dtype) if dtype else module.to(device)).eval().requires_grad_(False)
    return out
