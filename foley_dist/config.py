"""Run configuration: dataclasses registered in hydra's ConfigStore, composed from the packaged
`foley_dist/conf/` + overrides.

The dataclasses are the schema (types, defaults, unknown keys rejected); the yaml files under conf/
(package data, found through the package itself, so a wheel install works from any folder) are the
config groups a user picks from (`model=tiny`, `layout=replicated`, `hardware=cpu`).
`key=value` overrides follow hydra's grammar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from foley_dist.errors import FoleyError


@dataclass
class ModelConfig:
    """Which model runs. `tiny` is random-initialised from `init_seed`; hunyuan_* load from `path`."""

    name: str = "tiny"
    path: Optional[str] = None
    config: Optional[str] = None  # DiT architecture: a release config yaml (default: the built-in copy for `name`)
    init_seed: int = 0
    steps: int = 50
    guidance_scale: float = 4.5
    negative_prompt: str = "noisy, harsh"


@dataclass
class LayoutConfig:
    """One entry per rank; `a+b` co-locates stages, `stage xK` replicates over K ranks; [auto] searches."""

    ranks: list[str] = field(default_factory=lambda: ["vision", "fusion", "diffusion"])
    # auto: seconds per segment per stage (e.g. from an earlier run report's stage_busy_s / segments);
    # empty = proportional to the stages' FLOPs from the model config
    costs: dict[str, float] = field(default_factory=dict)
    memory_gb: dict[str, float] = field(default_factory=dict)  # auto: per-stage memory, rules out groups...
    capacity_gb: Optional[float] = None  # ...whose sum exceeds this per-rank capacity


@dataclass
class HardwareConfig:
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 DiT on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    # a peer silent for this long is treated as dead; it must exceed the slowest stage's time per
    # segment (the real Synchformer alone takes minutes per segment on a CPU rank)
    timeout_s: float = 600.0
    max_inflight: int = 2  # sends outstanding per rank before it waits (back-pressure)
    threads: int = 1  # torch CPU threads per rank; results are bit-identical only at equal thread counts; 0 = torch's default
    # DiT block weights: full (stored in `precision`) | fp8 (e4m3 + per-channel scales, half of bf16, see
    # README "Any GPU size") | auto (full; with layout=auto whatever the planner picks to fit the GPU)
    weights: str = "auto"


@dataclass
class VisionConfig:
    """How the vision stage turns frames into features (see README.md, high resolution)."""

    tiling: bool = False  # encode overlapping tiles of a high-resolution frame and merge them
    tile_size: int = 224  # tile side in source pixels
    overlap_ratio: float = 0.2  # fraction of a tile shared with its neighbour
    tile_batch: int = 16  # tiles encoded at once: bounds activation memory
    preprocess: str = "release"  # release (the release's frame choice and transforms) | fast (scale while decoding)
    # release: threads preparing frames (decode ahead + per-frame RGB and resizes); 0 = the cores this rank may use
    workers: int = 0
    siglip_resize: str = "pil"  # release: pil (release-exact) | torch (antialiased bilinear, ~5x cheaper, not bit-exact)
    frame_sampling: str = "fixed"  # fixed | adaptive (lower sync rate on static shots)
    min_sync_fps: float = 15.0  # adaptive sampling never decodes fewer sync frames per second
    cache: str = "auto"  # feature cache folder; auto = $XDG_CACHE_HOME/foley_dist/features (~/.cache/...); "off"
    cache_max_gb: float = 20.0  # least recently used entries are evicted above this


@dataclass
class DiffusionConfig:
    """How the diffusion stage spreads one segment's sampling over ranks (see README.md, Seams)."""

    # evaluate the unconditional and conditional CFG branches separately; with paired diffusion ranks
    # (layout 'diffusion x2K') each pair splits them and swaps velocities every step
    cfg_parallel: bool = False
    # none | blocks (the DiT's blocks stay in host memory and stream in one ahead of use: fits small GPUs,
    # costs host-to-device copies) | auto (none; with layout=auto whatever the planner picks to fit the GPU)
    offload: str = "auto"


@dataclass
class RunConfig:
    """Settings shared by `generate` (one video) and `batch` (a manifest of videos)."""

    seed: int = 0
    segment_seconds: float = 5.0
    overlap_seconds: float = 1.0
    decoder: str = "pyav"  # pyav | decord
    report: Optional[str] = None  # default: beside the output
    trace: Optional[str] = None  # Chrome/Perfetto trace path
    progress: bool = True
    mux: bool = False  # also write a copy of the video with the generated audio track (see mux_output)
    seam: str = "joint"  # joint (one latent timeline, see foley_dist.models.joint) | crossfade (independent segments)
    seam_metric: bool = True  # measure loudness/spectral jumps at segment boundaries into the report
    vision: VisionConfig = field(default_factory=VisionConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)


@dataclass
class GenerateConfig(RunConfig):
    video: str = MISSING
    prompt: str = ""
    output: str = "out/foley.wav"
    mux_output: Optional[str] = None  # with mux=true; default OUTPUT_STEM.muxed.EXT (EXT: the input's container)
    noise: Optional[str] = None  # DIR: segment i's initial latents from DIR/seg{i:03d}.safetensors (key "noise")
    dump: Optional[str] = None  # DIR: write DIR/seg{i:03d}.safetensors with every intermediate tensor


@dataclass
class BatchConfig(RunConfig):
    manifest: str = MISSING  # .jsonl or .csv: video, prompt, output, optional seed and overrides
    output_root: str = "out/batch"  # every item's output must resolve inside this folder
    results: Optional[str] = None  # per-item status; default OUTPUT_ROOT/results.jsonl


def _register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(name="generate_schema", node=GenerateConfig)
    cs.store(name="batch_schema", node=BatchConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="layout", name="layout_schema", node=LayoutConfig)
    cs.store(group="hardware", name="hardware_schema", node=HardwareConfig)


_register()


def load(name: str, overrides: list[str]) -> Any:
    """Compose conf/<name>.yaml with `key=value` overrides into a validated dataclass instance."""
    try:
        with initialize_config_module(version_base=None, config_module="foley_dist.conf"):
            cfg = compose(config_name=name, overrides=overrides)
        return OmegaConf.to_object(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "missing mandatory value" in first.lower():
            key = first.rsplit(":", 1)[-1].strip()
            raise FoleyError(f"missing required setting '{key}': pass it as {key}=... (e.g. video=clip.mp4)") from None
        if first.startswith("Could not override"):
            key = first.split("'")[1]
            raise FoleyError(f"unknown setting '{key}': see README.md for the settings (hydra: {first})") from None
        raise FoleyError(f"bad configuration: {first} (see README.md for the settings)") from None
