"""Per-rank main loop. The same code runs one rank per stage under torchrun and every stage in one
process (the reference path): only the topology differs.

Every rank validates the inputs and derives the same static schedule on its own, builds only the
model parts its stages need, then walks its actions: receive a message, run its stages, send the
result on; the last rank's sink stitches segment audio and streams it to disk. Segments finished by
an earlier, interrupted run are skipped (the sink tells every rank which at start-up).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from foley_dist.audio.output import MARK, write_json_atomic
from foley_dist.audio.sink import Sink, finished_segments, joint_resume_state
from foley_dist.config import LayoutConfig, RunConfig
from foley_dist.console import say
from foley_dist.engine import liveness, transport
from foley_dist.engine.autolayout import choose_layout, predict_makespan
from foley_dist.engine.message import Message
from foley_dist.engine.metrics import RankStats, Recorder, chrome_trace, summarize
from foley_dist.engine.pipeline import execute, open_link, step_channel
from foley_dist.engine.protocol import ItemPlan
from foley_dist.engine.schedule import STAGES, Topology, build_schedule, expand_layout
from foley_dist.errors import FoleyError
from foley_dist.jobs import Job
from foley_dist.media.cache import file_identity
from foley_dist.models.foley import ModelSpec, build_parts, stage_parts, weights_root
from foley_dist.models.hunyuan_cost import block_ranges
from foley_dist.models.joint import joined_items, link_neighbours
from foley_dist.models.split import SplitRole
from foley_dist.planning.estimates import stage_flops
from foley_dist.planning.memory_options import MemoryOption
from foley_dist.planning.plan import run_choice
from foley_dist.planning.host import Source, layout_costs, load_calibration
from foley_dist.stages import SEAM_MODES, DiffusionStage, FusionStage, VisionStage


def work_items(jobs: list[Job], done: dict[int, set[int]], identities: dict[int, str] | None = None) -> list[Message]:
    """The pipeline's microbatches: every unfinished segment of every job, back to back; `identities`
    (feature-cache identity per job, computed once on the sink) ride along as `video_id`."""
    items = []
    for j, job in enumerate(jobs):
        for seg in job.plan.segments:
            if seg.index in done.get(j, ()):
                continue
            meta = {"job": j, "video": job.video, "prompt": job.prompt, "seed": job.seed,
                    "segment": seg.index, "start": seg.start, "end": seg.end, **job.overrides}
            if identities and j in identities:
                meta["video_id"] = identities[j]
            items.append(Message(len(items), {}, meta))
    return items


def continue_from(items: list[Message], jobs: list[Job], tails: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """seam=joint resume: the first unfinished segment of each job in `tails` continues its finished
    predecessor (meta `joint_prev`); returns {item: the predecessor's per-step tails} to preload."""
    out = {}
    for n, msg in enumerate(items):
        j = msg.meta["job"]
        if j in tails and "joint_prev" not in msg.meta and msg.meta["segment"] > 0:
            prev = jobs[j].plan.segments[msg.meta["segment"] - 1]
            msg.meta["joint_prev"] = [prev.start, prev.end]
            out[n] = tails[j]
    return out


def item_plans(cfg: RunConfig, topo: Topology, items: list[Message], latent_rate: int) -> list[ItemPlan]:
    """What the point-to-point protocol needs of each item: its steps (batch items may override them),
    whether it continues its predecessor (joint) and whether a CFG pair swaps velocities."""
    joined = joined_items([m.meta for m in items], latent_rate) if cfg.seam == "joint" else [False] * len(items)
    paired = bool(topo.groups[-1].partners)
    return [ItemPlan(m.meta.get("model.steps", cfg.model.steps), j,
                     paired and m.meta.get("model.guidance_scale", cfg.model.guidance_scale) > 1)
            for m, j in zip(items, joined)]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means plain fp32. `auto` is bf16 for the DiT on CUDA and fp32 on CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise FoleyError(f"hardware.precision={precision!r}: use auto, fp32, bf16 or fp16")
    return dtypes[precision]


def sync_autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The release runs Synchformer under fp16 autocast on GPU; fp32 on CPU and with precision=fp32."""
    return torch.float16 if device.type == "cuda" and precision != "fp32" else None


def set_fp32_math(precision: str) -> None:
    """precision=fp32 means IEEE fp32 on CUDA as well: cuDNN convolutions (Synchformer, the DiT's
    ConvSwiGLU, the audio decoder) default to TF32, a 10-bit mantissa. Other precisions keep cuDNN's
    default, as the release runs. Process-wide flags, so every build sets them."""
    exact = precision == "fp32"
    torch.backends.cudnn.conv.fp32_precision = "ieee" if exact else "tf32"
    if exact:
        torch.backends.cuda.matmul.fp32_precision = "ieee"


def split_role(topo: Topology, rank: int, spec: ModelSpec, segment_seconds: float) -> SplitRole | None:
    """This rank's block range in its split pipeline (ranges balanced by FLOPs), or None."""
    role = topo.split_role(rank)
    if role is None:
        return None
    position, count = role
    if count > spec.dit.depth_triple_blocks + spec.dit.depth_single_blocks:
        raise FoleyError(f"layout splits the DiT over {count} ranks but model={spec.name} has only "
                         f"{spec.dit.depth_triple_blocks + spec.dit.depth_single_blocks} blocks; use fewer ranks per split")
    return SplitRole(position, count, *block_ranges(spec.dit, count, segment_seconds)[position])


def build_stages(names: tuple[str, ...], cfg: RunConfig, spec: ModelSpec, device: torch.device,
                 parts: dict[str, torch.nn.Module], memory: MemoryOption = MemoryOption(),
                 split: SplitRole | None = None) -> list[torch.nn.Module]:
    """The rank's stages around its model parts; parts already in `parts` (an earlier call's) are
    reused. `split`: this rank's place in a layer split (its DiT holds only its block range)."""
    dit_dtype = autocast_dtype(cfg.hardware.precision, device)
    set_fp32_math(cfg.hardware.precision)
    missing = tuple(p for p in stage_parts(names) if p not in parts)
    blocks = (split.start, split.stop) if split is not None else None
    parts.update(build_parts(spec, missing, cfg.model, device, dit_dtype or torch.float32, memory.fp8, memory.offload,
                             blocks))
    dump, noise = getattr(cfg, "dump", None) is not None, getattr(cfg, "noise", None)
    model_id = f"{cfg.model.name}:{Path(cfg.model.path).resolve() if cfg.model.path else cfg.model.init_seed}"
    if cfg.model.config:
        model_id += f":{Path(cfg.model.config).resolve()}"
    make = {
        "vision": lambda: VisionStage(spec, parts["visual"], parts["sync"], cfg.decoder, device, cfg.vision, model_id,
                                      sync_autocast_dtype(cfg.hardware.precision, device), dump),
        "fusion": lambda: FusionStage(spec, parts["text"], parts.get("dit_condition", parts.get("dit")),
                                      cfg.model.negative_prompt, dit_dtype, dump),
        "diffusion": lambda: DiffusionStage(spec, parts["dit"], parts["vae"], cfg.model.steps, cfg.model.guidance_scale,
                                            device, dit_dtype, cfg.seam, cfg.diffusion.cfg_parallel, noise, dump),
    }
    stages = [make[n]() for n in names]
    if split is not None:
        stages[names.index("diffusion")].split = split
    return stages


def log(rank: int, text: str) -> None:
    say(f"[rank {rank}] {text}")


@dataclass
class Outcome:
    """What the sink rank returns: the run report and each job's status."""

    report: dict
    status: dict[int, dict]


def stage_costs(cfg: RunConfig, spec: ModelSpec, jobs: list[Job], device: torch.device) -> dict[str, float]:
    """Per-segment stage costs for layout search: configured seconds, else estimated seconds as `foley-dist
    plan` shows them (device seconds from FLOPs, the vision rank's host time for the first video)."""
    if cfg.layout.costs:
        return dict(cfg.layout.costs)
    flops = stage_flops(spec, cfg.segment_seconds, cfg.model.steps, cfg.model.guidance_scale)
    info = jobs[0].info
    return layout_costs(load_calibration(), flops, Source(info.width, info.height, info.fps, info.codec),
                        cfg.segment_seconds, spec.visual_fps, spec.sync_fps, cfg.vision, device.type, cfg.hardware.threads)


def run(cfg: RunConfig, jobs: list[Job], journal: Path | None = None,
        parts_cache: dict[str, torch.nn.Module] | None = None) -> Outcome | None:
    """Run `jobs` through the pipeline on this rank. Returns the outcome on the sink rank, else None.

    `parts_cache` keeps the built model parts between calls (FoleyPipeline passes its own)."""
    env = transport.detect_env(cfg.hardware.device)
    spec = ModelSpec.for_config(cfg.model)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype(cfg.hardware.precision, env.device)]
    memory, planned = run_choice(cfg, env.world_size, env.device, precision,
                                 [(j.info.width, j.info.height, j.info.duration) for j in jobs])
    costs = stage_costs(cfg, spec, jobs, env.device)  # layout=auto and the protocol's key order use the same
    if planned is not None:  # layout=auto on a GPU of known size: the planner's choice (foley-dist plan)
        layout = planned
    elif cfg.layout.ranks == ["auto"]:  # every rank searches the same way, so all agree
        layout = choose_layout(costs, env.world_size, sum(len(j.plan) for j in jobs),
                               cfg.layout.memory_gb or None, cfg.layout.capacity_gb, max_inflight=cfg.hardware.max_inflight)
    else:
        needed = len(expand_layout(cfg.layout.ranks))  # a bad layout is an error even in one process
        layout = cfg.layout.ranks if env.world_size > 1 else ["+".join(STAGES)]
        if env.world_size == 1 and needed > 1 and cfg.layout.ranks != LayoutConfig().ranks:  # the default is silent
            log(0, f"note: layout {list(cfg.layout.ranks)} needs {needed} ranks; this one process runs every stage "
                   f"(start it with foley-dist launch --nproc_per_node={needed} -- ... to spread them)")
    topo = Topology.parse(layout, env.world_size, cfg.diffusion.cfg_parallel and env.world_size > 1)
    if cfg.hardware.threads > 0:
        torch.set_num_threads(cfg.hardware.threads)
    weights_root(spec, cfg.model)
    autocast_dtype(cfg.hardware.precision, env.device)  # a bad precision fails before any rank starts work
    if cfg.seam not in SEAM_MODES:
        raise FoleyError(f"seam={cfg.seam!r} is not one of {', '.join(SEAM_MODES)} (continuation was retired: use joint)")
    names = topo.stages_of(env.rank)
    is_sink = env.rank == topo.sink

    liveness.configure_nccl(cfg.hardware.timeout_s)
    transport.init(env, cfg.hardware.timeout_s)
    beat = liveness.Heartbeat.start(env.rank, env.world_size)  # None in one process
    # joint resumes from the first unfinished segment of a job, with the per-step tails its predecessor saved
    joint = {j: joint_resume_state(job) for j, job in enumerate(jobs)} if is_sink and cfg.seam == "joint" else {}
    local = {j: finished_segments(job) for j, job in enumerate(jobs)} if is_sink and cfg.seam == "crossfade" else {}
    local.update({j: kept for j, (kept, _) in joint.items()})
    # the feature-cache identity of each video: read once here, not by every vision rank
    ident = {j: file_identity(job.video) for j, job in enumerate(jobs)} if is_sink and cfg.vision.cache != "off" else {}
    tails = {j: t for j, (_, t) in joint.items() if t is not None}
    done, ident, tails = transport.broadcast_object((local, ident, tails), topo.sink, env.world_size)  # one broadcast
    items = work_items(jobs, done, ident)
    resumed_tails = {}
    if cfg.seam == "joint":
        link_neighbours([m.meta for m in items])
        resumed_tails = continue_from(items, jobs, tails)
    topo = Topology.parse(layout, env.world_size, cfg.diffusion.cfg_parallel and env.world_size > 1, len(items))  # windows
    rec = Recorder(env.rank, list(names), env.device)
    resumed = sum(len(v) for v in done.values())
    schedule = build_schedule(topo, len(items))[env.rank]
    role = split_role(topo, env.rank, spec, cfg.segment_seconds)
    mine = sum(len(a.items) for a in schedule if a.kind == "compute")
    log(env.rank, f"{'+'.join(names)} on {env.device} ({env.backend}, world {env.world_size}); model '{spec.name}'; "
                  f"this rank runs {mine} of {len(items)} segment(s)" + (f", {resumed} already finished" if resumed else "")
                  + (f"; DiT {memory.name}" if memory != MemoryOption() else "")
                  + (f"; DiT blocks [{role.start}, {role.stop}) of {spec.dit.depth_triple_blocks + spec.dit.depth_single_blocks}"
                     if role is not None else ""))
    link = open_link(topo, item_plans(cfg, topo, items, spec.latent_rate), costs, env, cfg.hardware.timeout_s,
                     cfg.hardware.max_inflight)
    with rec.span("build", "setup", -1):
        stages = build_stages(names, cfg, spec, env.device, {} if parts_cache is None else parts_cache, memory, role)
    if "vision" in names:  # its frame preparation decodes the next segment of this rank's order ahead
        stages[names.index("vision")].upcoming([items[a.item].meta for a in schedule if a.kind == "compute"])
    links = step_channel(topo, link, env.rank) if link is not None else None
    if links is not None:
        stages[names.index("diffusion")].channel = links
    group = topo.groups[-1]
    for n, t in resumed_tails.items():
        if "diffusion" in names and env.rank in (group.owner(n), group.partner(n)):
            stages[names.index("diffusion")].channel.preload(n, torch.from_numpy(t).to(env.device))
    sink = Sink(jobs, spec.sample_rate, done, cfg.progress, cfg.seam_metric, journal,
                coherent=cfg.seam == "joint", dump=getattr(cfg, "dump", None)) if is_sink else None
    if beat is not None and sink is not None:
        beat.cleanup = sink.abort  # a peer found dead ends this process without the except below
    start = time.time()
    try:
        execute(schedule, stages, items, link, rec, sink)
        if link is not None:
            with rec.span("flush", "comm", -1):
                link.finish()
        if sink is not None:
            sink.finish()
    except BaseException as e:
        if sink is not None:
            sink.abort()
        liveness.stop(beat, e)
        raise
    finally:
        if "vision" in names:
            stages[names.index("vision")].close()
    gathered = transport.gather_objects(rec.finish(), topo.sink, env.world_size)
    liveness.stop(beat)
    if not is_sink:
        return None
    return Outcome(build_report(cfg, spec, topo, jobs, gathered, time.time() - start, resumed, sink.status), sink.status)


def bound(report: dict, status: dict[int, dict]) -> dict:
    """Host-bound or device-bound: the busiest rank sets the pace; it is host-bound when it runs the vision
    stage and that stage waited longer for frame preparation (decode, RGB, resizes not hidden behind
    encoding) than it spent in its encoders."""
    wait = sum(s.get("vision", {}).get("host_wait_s", 0.0) for s in status.values())
    encode = sum(s.get("vision", {}).get("encode_s", 0.0) for s in status.values())
    busiest = max(report["ranks"], key=lambda r: r["busy_s"])["stages"] if report["ranks"] else []
    host = "vision" in busiest and wait > encode
    return {"by": "host" if host else "device", "busiest_rank_stages": list(busiest),
            "vision_host_wait_s": round(wait, 3), "vision_encode_s": round(encode, 3)}


def build_report(cfg: RunConfig, spec: ModelSpec, topo: Topology, jobs: list[Job], ranks: list[RankStats], wall_s: float,
                 resumed: int, status: dict[int, dict]) -> dict:
    report = {
        "generator": MARK,  # lets a later run tell its own earlier report from someone's file (outpaths.py)
        "model": cfg.model.name,
        "sample_rate": spec.sample_rate,
        "layout": [{"stages": list(g.stages), "ranks": list(g.ranks), **({"split": g.split} if g.split > 1 else {})}
                   for g in topo.groups],
        "world_size": topo.world_size,
        "wall_s": round(wall_s, 3),
        "segments_resumed": resumed,
        "segments_cached": sum(s.get("vision", {}).get("cached_segments", 0) for s in status.values()),
        "frames_skipped": sum(s.get("vision", {}).get("frames_skipped", 0) for s in status.values()),
        "jobs": [
            {
                "video": j.video, "output": j.output, "prompt": j.prompt, "seed": j.seed,
                "duration_s": j.info.duration, "size": [j.info.width, j.info.height], "fps": j.info.fps,
                "segments": [[s.start, s.end] for s in j.plan.segments],
                **{k: status[i][k] for k in ("seams", "vision") if k in status.get(i, {})},
            }
            for i, j in enumerate(jobs)
        ],
        "settings": {"segment_seconds": cfg.segment_seconds, "overlap_seconds": cfg.overlap_seconds, "seam": cfg.seam,
                     "cfg_parallel": cfg.diffusion.cfg_parallel, "steps": cfg.model.steps, "guidance_scale": cfg.model.guidance_scale, "decoder": cfg.decoder,
                     "precision": cfg.hardware.precision, "weights": cfg.hardware.weights, "offload": cfg.diffusion.offload},
        **summarize(ranks),
    }
    report["bound"] = bound(report, status)
    segments = sum(len(j.plan) for j in jobs) - resumed
    measured = {k: v / segments for k, v in report["stage_busy_s"].items()} if segments else {}
    if set(measured) == set(STAGES):  # the scheduling model fed with this run's own stage costs
        report["predicted_makespan_s"] = round(predict_makespan(topo, measured, segments, max_inflight=cfg.hardware.max_inflight), 3)
    if cfg.trace:
        write_json_atomic(cfg.trace, chrome_trace(ranks))
    return report
