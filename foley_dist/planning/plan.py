"""Resource planner (`foley-dist plan`): model x precision x resolution x duration x GPUs -> memory per
stage, time shares, layout, and whether it fits. The estimates themselves live in `estimates.py`,
the diffusion stage's memory options (layer split, fp8 weights, block offload) in `memory_options.py`;
this module turns them into a recommended option and layout and the printed / JSON plan.
"""


from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import torch
from hydra.core.config_store import ConfigStore

from foley_dist import config
from foley_dist.audio.output import write_json_atomic
from foley_dist.config import ModelConfig, RunConfig, VisionConfig
from foley_dist.engine.autolayout import choose_layout, predict_makespan
from foley_dist.engine import protocol
from foley_dist.engine.protocol import ItemPlan
from foley_dist.engine.schedule import STAGES, Topology, expand_layout
from foley_dist.errors import DoesNotFit, FoleyError
from foley_dist.media.segments import SegmentPlan
from foley_dist.media.video import probe
from foley_dist.models.foley import ModelSpec
from foley_dist.models.hunyuan_cost import block_ranges
from foley_dist.planning.estimates import (
    ACTIVATION_FACTOR,
    BYTES,
    CUDA_CONTEXT,
    DECODER_BASE,
    DECODER_FRAMES,
    FRAMEWORK_RSS,
    NCCL_PEER_BYTES,
    RUNTIME_OVERHEAD,
    StageEstimate,
    estimate_stages,
    part_params,
    tile_grid,
)
from foley_dist.planning.memory_options import (
    MemoryOption,
    candidates,
    diffusion_ranks,
    dit_memory,
    rank_bytes,
    relative_time,
)
from foley_dist.planning.host import (
    HOST_CORES,
    Source,
    device_seconds,
    format_host,
    host_summary,
    load_calibration,
    stage_seconds,
    vision_host_seconds,
)

RESOLUTIONS = {"360p": (640, 360), "480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080),
               "1440p": (2560, 1440), "2160p": (3840, 2160), "4k": (3840, 2160)}
_UNITS = {"": 1e9, "g": 1e9, "gb": 1e9, "gib": 2**30, "m": 1e6, "mb": 1e6, "mib": 2**20, "t": 1e12, "tb": 1e12,
          "tib": 2**40}




@dataclass
class PlanConfig:
    """`foley-dist plan` settings; `video` fills resolution and duration unless they are given."""

    video: Optional[str] = None
    resolution: Optional[str] = None  # 360p ... 2160p, 4k, or WIDTHxHEIGHT
    duration: Optional[float] = None  # seconds
    gpus: int = 1
    gpu_memory: str = "80GB"  # per GPU; GB = 1e9 bytes (an "80GB" card holds ~85e9: planning errs low)
    precision: str = "auto"  # auto (bf16: the planner plans for GPUs) | fp32 | bf16 | fp16
    segment_seconds: float = 5.0
    overlap_seconds: float = 1.0
    json: Optional[str] = None  # also write the plan as JSON here
    weights: str = "auto"  # DiT block weights: auto (plan picks) | full | fp8 (as hardware.weights)
    offload: str = "auto"  # auto (plan picks) | none | blocks (as diffusion.offload)
    split: str = "auto"  # the DiT's blocks over N ranks per pipeline ('diffusion/N'): auto (plan picks) | none | N
    # host time (planning/host.py): the source's codec and frame rate (default: the video's, else h264, 25)
    # and the GPUs' effective TFLOPS for device seconds (default: host_calibration.json's, an estimate)
    codec: Optional[str] = None
    fps: Optional[float] = None
    cuda_tflops: Optional[float] = None
    host_cores: int = HOST_CORES  # cores of a vision rank on the GPU node: what vision.workers=0 gives there
    vision: VisionConfig = field(default_factory=VisionConfig)  # vision.tiling=true plans tiled encoding
    model: ModelConfig = field(default_factory=ModelConfig)


ConfigStore.instance().store(name="plan_schema", node=PlanConfig)


def nccl_links(topo: Topology, segments: int) -> dict[int, int]:
    """Per rank, the (process group, peer) pairs its NCCL communicators connect (Link.connect
    connects every pair the job's protocol uses): one video of `segments` segments under the default
    seam=joint (CFG pairs swapping velocities where the layout has them). A few items already cover
    every pair the round robin uses."""
    items = min(segments, 2 * topo.world_size + 2)
    paired = bool(topo.groups[-1].partners)
    programs = protocol.check_job(topo, [ItemPlan(2, i > 0, paired) for i in range(items)])
    return {r: sum(len(p) for p in protocol.connections(programs.get(r, [])).values()) for r in range(topo.world_size)}


def rank_rows(topo: Topology, rank_bytes: Callable[[tuple[str, ...], int], int], segments: int) -> list[dict]:
    """GPU bytes per rank group, of a split group per position in its pipelines (the positions hold
    different blocks): the stages (`rank_bytes(stages, position)`), and NCCL buffers for the
    best-connected rank's links."""
    links, rows = nccl_links(topo, segments), []
    for g in topo.groups:
        for j in range(g.split):
            ranks = g.ranks[j :: g.split]
            peers = max(links[r] for r in ranks + g.partners)
            rows.append({"ranks": list(ranks), "stages": list(g.stages), "position": j if g.split > 1 else None,
                         "gpu_bytes": rank_bytes(g.stages, j) + peers * NCCL_PEER_BYTES})
    return rows


def recommend_layout(est: dict[str, StageEstimate], rank_bytes: Callable[[tuple[str, ...], int], int], precision: str,
                     gpus: int, segments: int, budget: int, costs: dict[str, float], split: int = 1) -> list[str]:
    """The fastest layout (autolayout.choose_layout, `costs`: seconds per segment, host time included;
    `split`: the DiT's blocks over that many ranks per pipeline) whose ranks fit `budget`
    (`rank_bytes`: a rank's GPU bytes under the memory option).

    choose_layout adds per-stage memory, which counts a shared DiT twice; so the unconstrained best
    layout is checked exactly first, and only when it does not fit is the (conservative) additive
    constraint used (a split rank's memory: its largest position's)."""
    try:
        layout = choose_layout(costs, gpus, segments, split=split)
    except FoleyError as e:  # no layout of this split completes: not an option for the job
        raise DoesNotFit(str(e)) from None
    if all(r["gpu_bytes"] <= budget for r in rank_rows(Topology.parse(layout, gpus), rank_bytes, segments)):
        return layout
    memory = {s: float(e.gpu_bytes() - CUDA_CONTEXT) for s, e in est.items()}
    try:
        return choose_layout(costs, gpus, segments, memory, float(budget - CUDA_CONTEXT), split=split)
    except FoleyError:
        alone = ", ".join(f"{s} {e.gpu_bytes() / 1e9:.1f}" for s, e in est.items())
        raise DoesNotFit(f"no layout of {gpus} GPU(s) fits {budget / 1e9:.1f} GB per GPU (stages alone need {alone} GB; "
                         f"stages sharing a GPU add up): pass gpus={len(STAGES)} for one stage per GPU"
                         + (" or precision=bf16" if precision == "fp32" else "")) from None


# --- inputs ---------------------------------------------------------------------------------------------


def parse_resolution(text: str) -> tuple[int, int]:
    """'1080p', '4k' or '3840x2160' -> (width, height)."""
    key = str(text).strip().lower()
    if key in RESOLUTIONS:
        return RESOLUTIONS[key]
    match = re.fullmatch(r"(\d+)\s*x\s*(\d+)", key)
    if match and int(match.group(1)) > 0 and int(match.group(2)) > 0:
        return int(match.group(1)), int(match.group(2))
    raise FoleyError(f"resolution={text!r} is not understood; use one of {', '.join(RESOLUTIONS)} or WIDTHxHEIGHT "
                     "(e.g. resolution=3840x2160)")


def parse_memory(text: str) -> int:
    """'80GB', '24 GiB', '81920MiB' -> bytes (GB = 1e9, GiB = 2^30; a bare number is GB)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        raise FoleyError(f"gpu_memory={text!r} is not a memory size; use e.g. gpu_memory=80GB or gpu_memory=24GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16"
    if precision not in BYTES:
        raise FoleyError(f"precision={precision!r} is not one of auto, {', '.join(BYTES)}; bf16 is the GPU default")
    return precision


def source(cfg: PlanConfig) -> tuple[int, int, float]:
    """(width, height, duration): explicit settings first, then the probed video."""
    info = probe(cfg.video) if cfg.video is not None else None
    if cfg.resolution is not None:
        width, height = parse_resolution(cfg.resolution)
    elif info is not None:
        width, height = info.width, info.height
    else:
        raise FoleyError("no source resolution: pass resolution=1080p (or 3840x2160, ...) or video=PATH")
    duration = cfg.duration if cfg.duration is not None else (info.duration if info is not None else None)
    if duration is None:
        raise FoleyError("no duration: pass duration=SECONDS (e.g. duration=600) or video=PATH")
    if not duration > 0:
        raise FoleyError(f"duration={duration} must be > 0 seconds; pass e.g. duration=600 or video=PATH")
    return width, height, float(duration)


# --- the plan -------------------------------------------------------------------------------------------


def host_inputs(cfg: PlanConfig, spec: ModelSpec, width: int, height: int, flops: dict[str, float]) -> dict:
    """Host and device seconds per segment (planning/host.py) for the source's size, rate and codec."""
    info = probe(cfg.video) if cfg.video is not None else None
    src = Source(width, height, cfg.fps or (info.fps if info else 25.0), cfg.codec or (info.codec if info else "h264"))
    cal = load_calibration()
    if cfg.cuda_tflops is not None:
        cal = replace(cal, cuda_tflops=cfg.cuda_tflops)
    host_s = vision_host_seconds(cal, src, cfg.segment_seconds, spec.visual_fps, spec.sync_fps, cfg.vision.preprocess,
                                 cfg.vision.siglip_resize)
    device_s = device_seconds(cal, flops, "cuda")
    workers = cfg.vision.workers or cfg.host_cores
    note = (f"host seconds: {src.codec} at {src.fps:g} fps, calibrated on {cal.machine} ({cal.measured}; "
            f"scripts/calibrate_host.py rewrites it)"
            + ("" if cal.decode_op(src.codec) == f"decode_{src.codec}" else f"; {src.codec} costed as h264")
            + f"; device seconds at an assumed {cal.cuda_tflops:g} effective TFLOPS (cuda_tflops=...)")
    return {"host_s": host_s, "device_s": device_s, "workers": workers, "note": note,
            "costs": stage_seconds(device_s, host_s, workers)}



def tiling_advice(spec: ModelSpec, vision: VisionConfig, width: int, height: int) -> str:
    side, grid = spec.visual.image_size, tile_grid(vision, width, height)
    if vision.tiling:
        return (f"on: {len(grid.boxes)} tiles of {vision.tile_size} px over a {grid.width}x{grid.height} working frame "
                f"+ the whole frame = {grid.images_per_frame}x the SigLIP work")
    if not grid.boxes:
        return f"off: {width}x{height} fits in one {vision.tile_size} px tile; tiling would add nothing"
    return (f"off (default): each frame is scaled from {width}x{height} to {side}x{side} (release-exact: one full-size "
            f"frame per vision worker at a time; vision.preprocess=fast decodes straight to that size); vision.tiling=true adds {len(grid.boxes)} tiles per frame for small details, at "
            f"{grid.images_per_frame}x the SigLIP work")


@dataclass
class OptionPlan:
    """One memory option's layout for the job and its predicted time, or why it does not fit."""

    option: MemoryOption
    spec: ModelSpec
    est: dict[str, StageEstimate]  # the diffusion stage: its largest rank's under the option
    diffusion: list[StageEstimate]  # the diffusion stage per position of a split pipeline (one unsplit)
    params: dict[str, int]
    precision: str
    seconds: float
    layout: list[str] | None = None
    error: DoesNotFit | None = None
    time_s: float | None = None  # predicted seconds per segment of the whole job (autolayout's replay)

    @classmethod
    def make(cls, spec: ModelSpec, est: dict[str, StageEstimate], params: dict[str, int], precision: str,
             cfg: PlanConfig, segments: int, budget: int, option: MemoryOption, costs: dict[str, float]) -> "OptionPlan":
        """`costs`: plain seconds per segment; the diffusion stage's is scaled by the option's time
        model (a split pipeline's per rank: autolayout divides it by N)."""
        diffusion = diffusion_ranks(est, spec, precision, option, cfg.segment_seconds)
        est = {**est, "diffusion": max(diffusion, key=StageEstimate.gpu_bytes)}
        plan = cls(option, spec, est, diffusion, params, precision, cfg.segment_seconds)
        costs = {**costs, "diffusion": costs["diffusion"] * plan.stage_time * option.split}
        too_big = [s for s in STAGES if est[s].gpu_bytes() > budget]
        try:
            if too_big:
                s = too_big[0]
                hint = "precision=bf16, " if precision == "fp32" else ""
                per_rank = " per split rank" if s == "diffusion" and option.split > 1 else ""
                raise DoesNotFit(f"model={spec.name} precision={precision}: the {s} stage alone needs "
                                 f"{est[s].gpu_bytes() / 1e9:.1f} GB{per_rank} but gpu_memory={cfg.gpu_memory}; use "
                                 f"{hint}GPUs with more memory or a smaller model")
            plan.layout = recommend_layout(est, plan.rank_bytes, precision, cfg.gpus, segments, budget, costs, option.split)
            plan.time_s = predict_makespan(plan.layout, costs, segments, cfg.gpus) / segments
        except DoesNotFit as e:
            plan.error = e
        return plan

    @property
    def fits(self) -> bool:
        return self.layout is not None

    @property
    def stage_time(self) -> float:
        """The DiT's time per segment on one rank (one split pipeline) relative to plain on one GPU."""
        return relative_time(self.spec, self.seconds, self.precision, self.option)

    def rank_bytes(self, stages: tuple[str, ...], position: int = 0) -> int:
        est = {**self.est, "diffusion": self.diffusion[position]}
        return rank_bytes(stages, est, self.params, self.precision, self.spec, self.option, self.seconds)

    def summary(self, reference_s: float, segments: int) -> dict:
        """`reference_s`: the plain option's seconds per segment on GPUs large enough for any layout."""
        memory = [dit_memory(self.spec, self.precision, self.option, self.seconds, j) for j in range(self.option.split)]
        rows = rank_rows(Topology.parse(self.layout, len(expand_layout(self.layout))), self.rank_bytes, segments) if self.fits else []
        return {"option": self.option.name, "fits": self.fits, "layout": self.layout,
                "rank_bytes": [r["gpu_bytes"] for r in rows],
                "largest_rank_bytes": max((r["gpu_bytes"] for r in rows), default=None),
                "diffusion_rank_bytes": [e.gpu_bytes() for e in self.diffusion],
                "dit_device_bytes": [d for d, _ in memory], "dit_host_bytes": [h for _, h in memory],
                "relative_time": round(self.time_s / reference_s, 3) if self.fits else None,
                "stage_time": round(self.stage_time, 3), "why_not": str(self.error) if self.error else None}


def smallest_fit(spec: ModelSpec, est: dict[str, StageEstimate], params: dict[str, int], precision: str,
                 cfg: PlanConfig, segments: int, options: list[OptionPlan], costs: dict[str, float]
                 ) -> tuple[int, MemoryOption]:
    """The least memory per GPU (to 0.1 GB) with which one of `options` fits cfg.gpus GPUs, and that option."""
    def fits(budget: int, option: MemoryOption) -> bool:
        return OptionPlan.make(spec, est, params, precision, cfg, segments, budget, option, costs).fits

    best = (int(1e13), options[0].option)
    for o in options:
        if not fits(best[0], o.option):  # no better than the best so far
            continue
        lo, hi = 0, best[0]
        while hi - lo > 1e8:  # fitting is monotone in the budget
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(mid, o.option) else (mid, hi)
        best = (hi, o.option)
    return best


def option_settings(option: MemoryOption) -> dict[str, str]:
    """The settings that select `option`: a run's hardware.weights, diffusion.offload, and the split."""
    return {"weights": "fp8" if option.fp8 else "full", "offload": "blocks" if option.offload else "none",
            "split": str(option.split) if option.split > 1 else "none"}


def make_plan(cfg: PlanConfig) -> dict:
    """The plan as a JSON-ready dict; raises FoleyError for configurations that cannot run."""
    if cfg.gpus < 1:
        raise FoleyError(f"gpus={cfg.gpus}: the planner needs at least one GPU; pass gpus=1 or more")
    spec = ModelSpec.for_config(cfg.model)
    precision = resolve_precision(cfg.precision)
    width, height, duration = source(cfg)
    budget = parse_memory(cfg.gpu_memory)
    segments = len(SegmentPlan.build(duration, cfg.segment_seconds, cfg.overlap_seconds))
    params = part_params(spec)
    est = estimate_stages(spec, precision, cfg.segment_seconds, width, height, cfg.model.steps, cfg.model.guidance_scale,
                          cfg.vision, params)
    host = host_inputs(cfg, spec, width, height, {s: float(e.flops) for s, e in est.items()})
    options = [OptionPlan.make(spec, est, params, precision, cfg, segments, budget, o, host["costs"])
               for o in candidates(cfg.weights, cfg.offload, cfg.split, cfg.gpus)]
    fitting = [o for o in options if o.fits]
    if not fitting:
        if len(options) == 1:  # the option was fixed: its own reason
            raise options[0].error
        need, option = smallest_fit(spec, est, params, precision, cfg, segments, options, host["costs"])
        settings = " ".join(f"{k}={v}" for k, v in option_settings(option).items())
        raise DoesNotFit(f"model={spec.name} precision={precision}: no memory option fits {cfg.gpus} GPU(s) of "
                         f"{cfg.gpu_memory}; the smallest that fits is {cfg.gpus} GPU(s) of {math.ceil(need / 1e8) / 10:.1f} GB "
                         f"with {option.name} ({settings})")
    plain = choose_layout(host["costs"], cfg.gpus, segments)  # the plain layout, were the GPUs large enough
    reference_s = predict_makespan(plain, host["costs"], segments, cfg.gpus) / segments
    # fastest; on a tie the smaller split, then exact weights
    chosen = min(fitting, key=lambda o: (round(o.time_s / reference_s, 2), o.option.split, o.option.fp8))
    est, layout = chosen.est, chosen.layout
    total_flops = sum(e.flops for e in est.values())
    topo = Topology.parse(layout, cfg.gpus)
    ranges = block_ranges(spec.dit, chosen.option.split, cfg.segment_seconds)
    size = {g.stages: len(g.ranks) for g in topo.groups}
    ranks = [{**r, "blocks": list(ranges[r["position"]]) if r["position"] is not None else None,
              "flops_per_segment": sum(est[s].flops for s in r["stages"]) / size[tuple(r["stages"])]}
             for r in rank_rows(topo, chosen.rank_bytes, segments)]
    return {
        "model": spec.name,
        "precision": precision,
        "precision_note": "DiT weights and activations in this precision; encoders, sampler state and audio decoder fp32",
        "source": {"width": width, "height": height, "duration_s": duration, "video": cfg.video},
        "segments": segments,
        "segment_seconds": cfg.segment_seconds,
        "gpus": cfg.gpus,
        "gpu_memory_bytes": budget,
        "stages": {s: {**asdict(e), "parts": list(e.parts), "gpu_bytes": e.gpu_bytes(),
                       "host_bytes": int(FRAMEWORK_RSS + RUNTIME_OVERHEAD + e.host), "time_share": e.flops / total_flops}
                   for s, e in est.items()},
        "memory_option": {"name": chosen.option.name, **option_settings(chosen.option)},
        "reference": {"layout": plain, "seconds_per_segment": reference_s,
                      "note": "relative_time: the job's predicted seconds per segment over the plain option's on GPUs "
                              "large enough for any layout; stage_time: the DiT's per segment on one rank (a split: "
                              "one pipeline) over plain on one GPU; estimates (planning/memory_options.py)"},
        "options": [o.summary(reference_s, segments) for o in options],
        "layout": layout,
        "ranks": ranks,
        "fits": all(r["gpu_bytes"] <= budget for r in ranks),
        "tiling": tiling_advice(spec, cfg.vision, width, height),
        "host": host_summary(host["device_s"], host["host_s"], host["workers"],
                             [(g.stages, len(g.ranks)) for g in Topology.parse(layout, cfg.gpus).groups], host["note"]),
        "calibration": {"framework_rss": FRAMEWORK_RSS, "runtime_overhead": RUNTIME_OVERHEAD,
                        "activation_factor": ACTIVATION_FACTOR, "decoder_base": DECODER_BASE,
                        "decoder_frames": DECODER_FRAMES, "cuda_context": CUDA_CONTEXT, "nccl_peer_bytes": NCCL_PEER_BYTES},
    }


def format_plan(plan: dict) -> str:
    gb, src = 1e9, plan["source"]
    lines = [
        f"model {plan['model']}, {plan['precision']} ({plan['precision_note']})",
        (f"source {src['width']}x{src['height']}, {src['duration_s']:.1f} s -> {plan['segments']} segment(s) of "
         f"{plan['segment_seconds']:g} s; {plan['gpus']} GPU(s) of {plan['gpu_memory_bytes'] / gb:.1f} GB"),
        "",
        f"{'stage':<10} {'weights GB':>10} {'activ. GB':>10} {'GPU GB':>8} {'host GB':>8} {'GFLOP/seg':>10} {'time':>6}",
    ]
    for name, s in plan["stages"].items():
        lines.append(f"{name:<10} {s['weights'] / gb:>10.3f} {s['activations'] / gb:>10.3f} {s['gpu_bytes'] / gb:>8.2f} "
                     f"{s['host_bytes'] / gb:>8.2f} {s['flops'] / 1e9:>10.1f} {s['time_share']:>6.1%}")
    lines += ["", f"{'DiT memory option':<22} {'fits':>4} {'DiT GPU GB/rank':>15} {'DiT host GB':>11} "
                  f"{'largest rank GB':>15} {'time vs plain':>13} {'DiT/rank':>8}  layout"]
    for o in plan["options"]:
        largest = f"{o['largest_rank_bytes'] / gb:.2f}" if o["fits"] else f"(diffusion {max(o['diffusion_rank_bytes']) / gb:.2f})"
        time = f"{o['relative_time']:.2f}x" if o["fits"] else "-"
        lines.append(f"{o['option']:<22} {'yes' if o['fits'] else 'no':>4} {max(o['dit_device_bytes']) / gb:>15.2f} "
                     f"{max(o['dit_host_bytes']) / gb:>11.2f} {largest:>15} {time:>13} {o['stage_time']:>7.2f}x  "
                     f"{o['layout'] or '-'}")
    chosen = plan["memory_option"]
    lines.append(f"chosen: {chosen['name']} (run with hardware.weights={chosen['weights']} diffusion.offload={chosen['offload']}"
                 + (f" and the layout's 'diffusion/{chosen['split']}'" if chosen["split"] != "none" else "")
                 + "); time vs plain: the job's time per segment over the plain layout's on large enough GPUs; "
                   "DiT/rank: the DiT's per segment on one rank or split pipeline over plain; estimates "
                   "(planning/memory_options.py)")
    lines += ["", f"layout: {plan['layout']}", f"{'ranks':<8} {'stages':<26} {'GPU GB':>8} {'fits':>5}"]
    for r in plan["ranks"]:
        ranks = ",".join(map(str, r["ranks"])) if r["blocks"] else str(r["ranks"][0]) + (
            f"-{r['ranks'][-1]}" if len(r["ranks"]) > 1 else "")
        stages = "+".join(r["stages"]) + (f" blocks [{r['blocks'][0]},{r['blocks'][1]})" if r["blocks"] else "")
        lines.append(f"{ranks:<8} {stages:<26} {r['gpu_bytes'] / gb:>8.2f} "
                     f"{'yes' if r['gpu_bytes'] <= plan['gpu_memory_bytes'] else 'NO':>5}")
    largest = max(r["gpu_bytes"] for r in plan["ranks"])
    lines.append(f"fits: {'yes' if plan['fits'] else 'NO'} (largest rank {largest / gb:.2f} GB of "
                 f"{plan['gpu_memory_bytes'] / gb:.1f} GB)")
    lines.append(f"tiling: {plan['tiling']}")
    lines += format_host(plan["host"])
    return "\n".join(lines)


def plan_command(overrides: list[str]) -> int:
    """`foley-dist plan resolution=2160p duration=600 gpus=4 model=hunyuan_xxl [json=plan.json]`."""
    cfg = config.load("plan", overrides)
    plan = make_plan(cfg)
    print(format_plan(plan), flush=True)
    if cfg.json:
        write_json_atomic(cfg.json, plan)
        print(f"wrote {cfg.json}", flush=True)
    if not plan["fits"]:
        raise DoesNotFit(f"the job does not fit {cfg.gpus} GPU(s) of {cfg.gpu_memory} (plan above)")
    return 0


def run_choice(run: RunConfig, world_size: int, device: torch.device, precision: str,
               sizes: list[tuple[int, int, float]]) -> tuple[MemoryOption, list[str] | None]:
    """The DiT memory option of a run, and the planner's layout when it made one.

    `hardware.weights` / `diffusion.offload` set to auto take the planner's choice (the same as
    `foley-dist plan`) when `layout=auto` without layout.costs / layout.memory_gb and the GPU size is
    known (layout.capacity_gb, else the CUDA device's memory), planned for the largest of the jobs'
    (width, height, duration) `sizes`; otherwise auto means off. The planner may split the DiT
    (option.split, the layout's 'diffusion/N'); a layout given by hand decides the split itself.
    A job that fits no option exits 5."""
    allowed = candidates(run.hardware.weights, run.diffusion.offload)
    capacity = run.layout.capacity_gb * 1e9 if run.layout.capacity_gb else (
        torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None)
    if run.layout.ranks != ["auto"] or run.layout.costs or run.layout.memory_gb or capacity is None or not sizes:
        return allowed[0], None
    width, height, duration = max(sizes, key=lambda s: (s[0] * s[1], s[2]))
    plan = make_plan(PlanConfig(resolution=f"{width}x{height}", duration=duration, gpus=world_size,
                                gpu_memory=f"{capacity / 1e9}GB", precision=precision, segment_seconds=run.segment_seconds,
                                overlap_seconds=run.overlap_seconds, vision=run.vision, model=run.model,
                                weights=run.hardware.weights, offload=run.diffusion.offload))
    chosen = plan["memory_option"]
    split = 1 if chosen["split"] == "none" else int(chosen["split"])
    return MemoryOption(chosen["weights"] == "fp8", chosen["offload"] == "blocks", split), plan["layout"]
