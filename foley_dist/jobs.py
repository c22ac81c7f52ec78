"""Jobs: the videos a run scores, from `generate` arguments or a batch manifest.

Every rank builds the identical job list itself (probing each video), so no rank has to be told what
to do. A job's key hashes everything its audio depends on, so resume state from a run with other
settings is never mistaken for this one's.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from foley_dist.audio.outpaths import Output, check_outputs, default_mux_output, job_outputs
from foley_dist.config import BatchConfig, GenerateConfig, RunConfig
from foley_dist.errors import FoleyError
from foley_dist.media.segments import SegmentPlan
from foley_dist.media.video import VideoInfo, probe

MAX_SEGMENT_SECONDS = 15.0  # the longest clip HunyuanVideo-Foley was built for
ITEM_OVERRIDES = {"model.steps": int, "model.guidance_scale": float, "model.negative_prompt": str}


@dataclass(frozen=True)
class Job:
    video: str
    prompt: str
    output: str
    seed: int
    info: VideoInfo
    plan: SegmentPlan
    key: str
    overrides: dict = field(default_factory=dict)  # per-item model.steps / guidance_scale / negative_prompt
    mux_output: str | None = None  # the video with the generated audio, when muxing

    def outputs(self) -> list[Output]:
        return job_outputs(self.video, self.output, self.mux_output, self.key, self.info.duration,
                           sum(s.seconds for s in self.plan.segments))


@dataclass(frozen=True)
class Rejected:
    """A manifest item that cannot run, with the reason (reported, never fatal to the batch)."""

    index: int
    video: str
    output: str
    reason: str


def job_key(cfg: RunConfig, video: str, prompt: str, seed: int, overrides: dict) -> str:
    st = os.stat(video)
    ident = {
        "video": os.path.abspath(video), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "prompt": prompt, "seed": seed,
        "model": [cfg.model.name, cfg.model.path, cfg.model.config, cfg.model.init_seed, cfg.model.steps,
                  cfg.model.guidance_scale, cfg.model.negative_prompt],
        "noise": getattr(cfg, "noise", None),
        "plan": [cfg.segment_seconds, cfg.overlap_seconds], "decoder": cfg.decoder, "vision": vars(cfg.vision),
        "precision": cfg.hardware.precision, "overrides": overrides,
        "sampling": [cfg.seam, cfg.diffusion.cfg_parallel],  # both change the audio's bits
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_job(cfg: RunConfig, video: str, prompt: str, output: str, seed: int, overrides: dict | None = None,
             mux_output: str | None = None) -> Job:
    """Probe the video and cut its timeline into segments; refuse outputs that could destroy a file or
    fail late (outpaths.py). Raises FoleyError naming the problem."""
    overrides = overrides or {}
    if cfg.segment_seconds > MAX_SEGMENT_SECONDS:
        raise FoleyError(f"segment_seconds={cfg.segment_seconds} exceeds the model's {MAX_SEGMENT_SECONDS:g} s window; "
                         f"long videos are handled by more segments, pass segment_seconds<={MAX_SEGMENT_SECONDS:g}")
    info = probe(video)
    plan = SegmentPlan.build(info.duration, cfg.segment_seconds, cfg.overlap_seconds)
    if cfg.mux:
        mux_output = mux_output or default_mux_output(output, video)
    job = Job(video, prompt, output, seed, info, plan, job_key(cfg, video, prompt, seed, overrides), overrides,
              mux_output if cfg.mux else None)
    check_outputs(job.outputs(), [video])
    return job


def run_outputs(files: dict[str, str | None], jobs: list[Job], inputs: list[str]) -> None:
    """Check the run's own files (report, trace, results: setting -> path) against every job's
    outputs and inputs; a problem is exit 2 before any work."""
    outs = [Output("jsonl" if setting == "results" else "json", Path(path), setting) for setting, path in files.items() if path]
    check_outputs([*outs, *(o for j in jobs for o in j.outputs())], [*inputs, *(j.video for j in jobs)])


def generate_jobs(cfg: GenerateConfig) -> list[Job]:
    job = make_job(cfg, cfg.video, cfg.prompt, cfg.output, cfg.seed, mux_output=cfg.mux_output)
    run_outputs({"report": report_path(cfg), "trace": cfg.trace}, [job], [])
    return [job]


def report_path(cfg: GenerateConfig) -> str:
    return cfg.report or str(Path(cfg.output).with_suffix(".json"))


def read_manifest(path: str) -> list[dict]:
    """Rows of a .jsonl (one object per line) or .csv (header: video,prompt,output[,seed])."""
    p = Path(path)
    if not p.is_file():
        raise FoleyError(f"manifest {path} not found; pass manifest=PATH to a .jsonl or .csv file")
    text = p.read_text()
    if p.suffix.lower() == ".csv":
        return [dict(r) for r in csv.DictReader(text.splitlines())]
    if p.suffix.lower() != ".jsonl":
        raise FoleyError(f"manifest {path}: unsupported extension {p.suffix!r}; use .jsonl or .csv")
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise FoleyError(f"manifest {path} line {n} is not valid JSON ({e.msg}); one object per line") from None
    return rows


def safe_output(root: Path, output: str) -> Path:
    """`output` resolved under `root`; anything that would land outside it is refused."""
    target = (root / output).resolve()
    if not target.is_relative_to(root.resolve()):
        raise FoleyError(f"output {output!r} resolves outside output_root {root}; use a path inside it")
    return target


def batch_jobs(cfg: BatchConfig) -> tuple[list[Job], list[Rejected]]:
    """Every manifest item as a Job, or as Rejected with the reason (bad video, bad path, bad fields)."""
    rows = read_manifest(cfg.manifest)
    base, root = Path(cfg.manifest).resolve().parent, Path(cfg.output_root)
    jobs, rejected, taken = [], [], {}
    for i, row in enumerate(rows):
        video = str(base / row["video"]) if row.get("video") else ""
        output = str(row.get("output") or "")
        try:
            if not video or not output:
                raise FoleyError("item needs both 'video' and 'output'")
            target = safe_output(root, output)
            if target in taken:
                raise FoleyError(f"output {output!r} is also item {taken[target]}'s output; give each item its own")
            taken[target] = i
            overrides = dict(row.get("overrides") or {})
            unknown = sorted(set(overrides) - set(ITEM_OVERRIDES))
            if unknown:
                raise FoleyError(f"unsupported override(s) {unknown}; allowed: {sorted(ITEM_OVERRIDES)}")
            overrides = {k: ITEM_OVERRIDES[k](v) for k, v in overrides.items()}
            seed = int(row["seed"]) if row.get("seed") not in (None, "") else cfg.seed
            jobs.append(make_job(cfg, video, str(row.get("prompt") or ""), str(target), seed, overrides))
        except (FoleyError, ValueError) as e:
            rejected.append(Rejected(i, video, output, str(e)))
    return jobs, rejected
