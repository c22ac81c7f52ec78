"""`FoleyPipeline`: the one code path from a video and a prompt to Foley audio.

    pipe = FoleyPipeline.from_pretrained("tiny")                      # or a release folder
    result = pipe("clip.mp4", "rain on a tin roof", num_inference_steps=50, seed=7)
    result.audio, result.sample_rate                                  # float32 mono waveform, 48000
    result.save("rain.wav")

The CLI (`foley-dist generate|batch`) is a thin layer over this class. Model parts are built on the
first call and kept, so a notebook or a service pays the weight load once. Under torchrun the same
script runs on every rank: each rank builds only its stages' parts, and the call returns the result
on the sink (last) rank and None on the others.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch

from foley_dist import config
from foley_dist.config import RunConfig
from foley_dist.errors import FoleyError
from foley_dist.jobs import Job, make_job, run_outputs

MODEL_NAMES = ("tiny", "hunyuan_xl", "hunyuan_xxl")
_PRECISIONS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class SegmentInfo:
    """One microbatch of the video timeline (seconds)."""

    index: int
    start: float
    end: float


@dataclass
class FoleyResult:
    """The audio of one video. `audio` is the float32 mono waveform; `report` the run report."""

    video: str
    sample_rate: int
    segments: list[SegmentInfo]
    report: dict
    status: dict = field(default_factory=dict)
    path: str | None = None  # where the audio was streamed, when the call wrote a file
    _audio: np.ndarray | None = None

    @property
    def audio(self) -> np.ndarray:
        if self._audio is None:  # streamed to `path` (a long video): read only when asked for
            self._audio, _ = sf.read(self.path, dtype="float32")
        return self._audio

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    def save(self, path: str | os.PathLike, mux: bool = False) -> Path:
        """Write the audio (.wav float32 / .flac 24-bit) atomically; `mux` also writes PATH_STEM.muxed.EXT
        (EXT the input's container). Never over the input or a file foley-dist did not write (outpaths)."""
        from foley_dist.audio.outpaths import Output, check_outputs, default_mux_output
        from foley_dist.audio.output import AudioWriter
        from foley_dist.audio.output import mux as mux_video

        path = Path(path)
        muxed = Path(default_mux_output(path, self.video)) if mux else None
        check_outputs([Output("audio", path, "path", self.audio.nbytes),
                       *([Output("video", muxed, "mux output", os.path.getsize(self.video))] if muxed else [])],
                      [self.video])
        writer = AudioWriter(path, self.sample_rate)
        writer.write(self.audio)
        writer.close()
        if muxed:
            mux_video(self.video, str(path), str(muxed))
        return path


def _overrides(settings: dict) -> list[str]:
    """Keyword settings as hydra overrides: `model__steps=8` or `**{"model.steps": 8}`; lists as [a,b]."""
    out = []
    for key, value in settings.items():
        if isinstance(value, (list, tuple)):
            value = "[" + ",".join(str(v) for v in value) + "]"
        elif value is None:
            value = "null"
        out.append(f"{key.replace('__', '.')}={value}")
    return out


class FoleyPipeline:
    """A configured model and layout; call it with videos and prompts."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self._parts: dict = {}  # model parts built so far on this rank, kept between calls

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike = "tiny", model: str | None = None,
                        device: str | None = None, dtype: torch.dtype | str | None = None,
                        layout: str | Sequence[str] | None = None, **settings) -> "FoleyPipeline":
        """A release folder (`model` names its size, default hunyuan_xxl) or a built-in name ("tiny").

        `device`: "cpu" | "cuda" | None (auto); `dtype`: torch.float32 / bfloat16 / float16 or "fp32"...
        (None: bf16 DiT on CUDA, fp32 on CPU); `layout`: a preset ("pipeline", "replicated", "auto",
        "single") or one entry per rank (["vision+fusion", "diffusion x3"]); other settings are the
        CLI's keys (`segment_seconds=10`, `**{"vision.cache": "off"}`, `hardware__timeout_s=30`).
        """
        name = str(path_or_name)
        overrides = []
        if name in MODEL_NAMES:
            if model not in (None, name):
                raise FoleyError(f"from_pretrained({name!r}, model={model!r}): pass a release folder to load {model}")
            overrides.append(f"model={name}")
        else:
            overrides += [f"model={model or 'hunyuan_xxl'}", f"model.path={Path(name).resolve()}"]
        if device is not None:
            overrides.append(f"hardware.device={device}")
        if dtype is not None:
            overrides.append(f"hardware.precision={_PRECISIONS.get(dtype, dtype)}")
        if layout is not None:  # a preset name picks the config group, a list sets the ranks
            settings = {"layout" if isinstance(layout, str) else "layout.ranks": layout, **settings}
        return cls(config.load("run", overrides + _overrides(settings)))

    def __call__(self, video: str | os.PathLike | Sequence, prompt: str | Sequence[str] = "",
                 negative_prompt: str | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, seed: int | None = None, segment_seconds: float | None = None,
                 overlap_seconds: float | None = None, seam: str | None = None, progress: bool | None = None,
                 output: str | os.PathLike | Sequence | None = None) -> FoleyResult | list[FoleyResult] | None:
        """Generate audio for one video (a FoleyResult) or a list of videos (a list, one batch).

        With `output` the audio streams to that file as segments finish (resumable: a re-run after an
        interruption skips finished segments); without, it is returned in memory. Returns None on
        ranks other than the sink under torchrun."""
        batch = not isinstance(video, (str, os.PathLike))
        videos = [str(v) for v in (video if batch else [video])]
        prompts = [prompt] * len(videos) if isinstance(prompt, str) else list(prompt)
        outputs = [output] * len(videos) if output is None or isinstance(output, (str, os.PathLike)) else list(output)
        if len(prompts) != len(videos) or len(outputs) != len(videos) or (batch and output is not None and
                                                                           isinstance(output, (str, os.PathLike))):
            raise FoleyError(f"{len(videos)} video(s) need as many prompts and outputs (got {len(prompts)} prompt(s))")
        per_call = {k: v for k, v in (("segment_seconds", segment_seconds), ("overlap_seconds", overlap_seconds),
                                      ("seam", seam), ("progress", progress)) if v is not None}
        cfg = dataclasses.replace(self.cfg, **per_call)
        item = {k: v for k, v in (("model.steps", num_inference_steps), ("model.guidance_scale", guidance_scale),
                                  ("model.negative_prompt", negative_prompt)) if v is not None}
        scratch = Path(tempfile.mkdtemp(prefix="foley_dist_")) if None in outputs else None
        try:
            jobs = [make_job(cfg, v, p, str(o or scratch / f"{i:05d}.wav"), self.cfg.seed if seed is None else seed, item)
                    for i, (v, p, o) in enumerate(zip(videos, prompts, outputs))]
            run_outputs({}, jobs, [])  # never over an input or a file foley-dist did not write
            results = self.run_jobs(jobs, cfg=cfg)
            if results is None:
                return None
            for r, o in zip(results, outputs):
                if r.status.get("status") != "done":
                    raise FoleyError(f"{r.video}: {r.status.get('reason', 'no audio was produced')}")
                if o is None:  # in memory: read the scratch file before it goes
                    _ = r.audio
                    r.path = None
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        return results if batch else results[0]

    def run_jobs(self, jobs: list[Job], journal: Path | None = None, cfg: RunConfig | None = None) -> list[FoleyResult] | None:
        """Run prepared jobs (the CLI's entry: manifests, resume journal) and return one result per job
        on the sink rank (failed jobs carry their reason in `.status`), None elsewhere."""
        from foley_dist.runtime import run

        outcome = run(cfg or self.cfg, jobs, journal, parts_cache=self._parts)
        if outcome is None:
            return None
        return [FoleyResult(j.video, outcome.report["sample_rate"],
                            [SegmentInfo(s.index, s.start, s.end) for s in j.plan.segments], outcome.report,
                            outcome.status.get(i, {"status": "failed", "reason": "not finished"}), j.output)
                for i, j in enumerate(jobs)]
