"""Per-rank main loop. The same code runs one rank per stage under torchrun and every stage in one
process (the reference path): only the topology differs.

Every rank validates the inputs and derives the same static schedule on its own, builds only the
model parts its stages need, then walks its actions: receive a message, run its stages, send the
result on; the last rank's sink stitches segment audio and streams it to disk.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from foley_dist import transport
from foley_dist.config import GenerateConfig
from foley_dist.message import Message
from foley_dist.metrics import Recorder, RankStats, chrome_trace, summarize
from foley_dist.models.foley import ModelSpec, build_parts, stage_parts
from foley_dist.output import AudioWriter, write_json_atomic
from foley_dist.schedule import STAGES, Action, Topology, build_schedule, peers
from foley_dist.segments import SegmentPlan
from foley_dist.stages import DiffusionStage, FusionStage, VisionStage
from foley_dist.stitch import Stitcher
from foley_dist.video import VideoInfo, probe


@dataclass(frozen=True)
class Job:
    """One video to score: every rank builds the identical list, so no rank needs to be told."""

    video: str
    prompt: str
    output: str
    seed: int
    info: VideoInfo
    plan: SegmentPlan


def make_job(cfg: GenerateConfig, video: str, prompt: str, output: str, seed: int) -> Job:
    info = probe(video)
    return Job(video, prompt, output, seed, info, SegmentPlan.build(info.duration, cfg.segment_seconds, cfg.overlap_seconds))


def work_items(jobs: list[Job]) -> list[Message]:
    """The pipeline's microbatches: every segment of every job, back to back."""
    items = []
    for j, job in enumerate(jobs):
        for seg in job.plan.segments:
            meta = {"job": j, "video": job.video, "prompt": job.prompt, "seed": job.seed,
                    "segment": seg.index, "start": seg.start, "end": seg.end}
            items.append(Message(len(items), {}, meta))
    return items


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means plain fp32. `auto` is bf16 for the DiT on CUDA and fp32 on CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def build_stages(names: tuple[str, ...], cfg: GenerateConfig, spec: ModelSpec, device: torch.device) -> list[torch.nn.Module]:
    parts = build_parts(spec, stage_parts(names), cfg.model, device)
    make = {
        "vision": lambda: VisionStage(spec, parts["visual"], parts["sync"], cfg.decoder, device),
        "fusion": lambda: FusionStage(spec, parts["text"], parts["dit"], cfg.model.negative_prompt),
        "diffusion": lambda: DiffusionStage(spec, parts["dit"], parts["vae"], cfg.model.steps, cfg.model.guidance_scale,
                                            device, autocast_dtype(cfg.hardware.precision, device)),
    }
    return [make[n]() for n in names]


class Sink:
    """Stitches each job's segments in order and streams the result to its output file."""

    def __init__(self, jobs: list[Job], sample_rate: int, progress: bool):
        self.jobs, self.sample_rate = jobs, sample_rate
        self._open: dict[int, tuple[Stitcher, AudioWriter]] = {}
        total = sum(len(j.plan) for j in jobs)
        self._bar = tqdm(total=total, desc="segments", unit="seg", file=sys.stderr, disable=not progress, dynamic_ncols=True)

    def collect(self, msg: Message) -> None:
        job_id, seg = msg.meta["job"], msg.meta["segment"]
        job = self.jobs[job_id]
        if seg == 0:
            self._open[job_id] = (Stitcher(job.plan, self.sample_rate), AudioWriter(job.output, self.sample_rate))
        stitcher, writer = self._open[job_id]
        writer.write(stitcher.add(seg, msg.tensors["audio"].cpu()))
        if seg == len(job.plan) - 1:
            writer.write(stitcher.finish())
            writer.close()
            del self._open[job_id]
        self._bar.update(1)

    def abort(self) -> None:
        for _, writer in self._open.values():
            writer.abort()
        self._open.clear()
        self._bar.close()

    def close(self) -> None:
        self._bar.close()


def execute(actions: list[Action], stages: list[torch.nn.Module], items: list[Message], tr: transport.Transport | None,
            rec: Recorder, sink: Sink | None) -> None:
    """Walk this rank's schedule. Messages wait in `held` between receive, compute and send."""
    held: dict[int, Message] = {}
    for a in actions:
        if a.kind == "recv":
            with rec.span("recv", "comm", a.item):
                msg = tr.recv(a.peer)
            if msg.segment != a.item:
                raise RuntimeError(f"expected item {a.item} from rank {a.peer}, got {msg.segment}: ranks are out of step")
            held[a.item] = msg
        elif a.kind == "compute":
            msg = held.pop(a.item) if a.item in held else items[a.item]
            for stage in stages:
                with rec.span(stage.name, "compute", a.item):
                    msg = stage(msg)
            held[a.item] = msg
        elif a.kind == "send":
            with rec.span("send", "comm", a.item):
                tr.send(held.pop(a.item), a.peer)
        else:
            with rec.span("sink", "io", a.item):
                sink.collect(held.pop(a.item))


def end_of_stream(tr: transport.Transport, up: list[int], down: list[int], rec: Recorder) -> None:
    """Tell downstream peers we are done and check upstream peers are too, so every rank exits cleanly."""
    for dst in down:
        tr.send(Message.end(), dst)
    for src in up:
        with rec.span("recv", "comm", -1):
            msg = tr.recv(src)
        if not msg.is_end:
            raise RuntimeError(f"rank {src} sent item {msg.segment} after the last scheduled one: ranks are out of step")
    with rec.span("flush", "comm", -1):
        tr.flush()


def log(rank: int, text: str) -> None:
    print(f"[rank {rank}] {text}", file=sys.stderr, flush=True)


def run(cfg: GenerateConfig, jobs: list[Job]) -> dict | None:
    """Run `jobs` through the pipeline on this rank. Returns the run report on the sink rank."""
    env = transport.detect_env(cfg.hardware.device)
    layout = cfg.layout.ranks if env.world_size > 1 else ["+".join(STAGES)]
    topo = Topology.parse(layout, env.world_size)
    if cfg.hardware.threads > 0:
        torch.set_num_threads(cfg.hardware.threads)
    spec = ModelSpec.named(cfg.model.name)
    items = work_items(jobs)
    names = topo.stages_of(env.rank)

    transport.init(env, cfg.hardware.timeout_s)
    rec = Recorder(env.rank, list(names), env.device)
    log(env.rank, f"{'+'.join(names)} on {env.device} ({env.backend}, world {env.world_size}); building model '{spec.name}'")
    with rec.span("build", "setup", -1):
        stages = build_stages(names, cfg, spec, env.device)
    tr = transport.Transport(env.device, cfg.hardware.timeout_s, cfg.hardware.max_inflight) if env.world_size > 1 else None
    is_sink = env.rank == topo.sink
    sink = Sink(jobs, spec.sample_rate, cfg.progress) if is_sink else None
    start = time.time()
    try:
        execute(build_schedule(topo, len(items))[env.rank], stages, items, tr, rec, sink)
        if tr is not None:
            end_of_stream(tr, *peers(topo, env.rank), rec)
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    stats = rec.finish()
    gathered = transport.gather_objects(stats, topo.sink, env.world_size)
    if not is_sink:
        return None
    sink.close()
    return build_report(cfg, topo, jobs, gathered, time.time() - start)


def build_report(cfg: GenerateConfig, topo: Topology, jobs: list[Job], ranks: list[RankStats], wall_s: float) -> dict:
    report = {
        "model": cfg.model.name,
        "layout": [{"stages": list(g.stages), "ranks": list(g.ranks)} for g in topo.groups],
        "world_size": topo.world_size,
        "wall_s": round(wall_s, 3),
        "jobs": [
            {
                "video": j.video, "output": j.output, "prompt": j.prompt, "seed": j.seed,
                "duration_s": j.info.duration, "size": [j.info.width, j.info.height], "fps": j.info.fps,
                "segments": [[s.start, s.end] for s in j.plan.segments],
            }
            for j in jobs
        ],
        "settings": {"segment_seconds": cfg.segment_seconds, "overlap_seconds": cfg.overlap_seconds,
                     "steps": cfg.model.steps, "guidance_scale": cfg.model.guidance_scale, "decoder": cfg.decoder,
                     "precision": cfg.hardware.precision},
        **summarize(ranks),
    }
    if cfg.trace:
        write_json_atomic(cfg.trace, chrome_trace(ranks))
    return report


def report_path(cfg: GenerateConfig) -> Path:
    return Path(cfg.report) if cfg.report else Path(cfg.output).with_suffix(".json")
