"""The sink: segment audio in, finished files out, nothing finished ever lost.

Each segment's raw audio is saved atomically as soon as it arrives (the resume state), then fed
to the job's stitcher in order; the stitched audio streams into a temp file that is renamed into
place when the job's last segment lands. A re-run finds the saved segments, schedules only the
missing ones, and stitches the same bits as an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
from tqdm import tqdm

from foley_dist.audio.outpaths import parts_path
from foley_dist.audio.output import AudioWriter, append_line, mux, save_array_atomic, save_tensors_atomic
from foley_dist.audio.seam import seam_report
from foley_dist.audio.stitch import Stitcher
from foley_dist.engine.message import Message
from foley_dist.errors import FoleyError

if TYPE_CHECKING:  # jobs sit above audio/: only their type is needed here
    from foley_dist.jobs import Job


def parts_dir(job: Job) -> Path:
    """Hidden folder beside the output holding the job's finished segments (removed when it completes)."""
    return parts_path(job.output, job.key)


def finished_jobs(journal: Path) -> set[str]:
    """Keys of jobs an earlier run completed (a torn last line from a crash is ignored)."""
    keys = set()
    if journal.is_file():
        for line in journal.read_text().splitlines():
            try:
                keys.add(json.loads(line)["key"])
            except (json.JSONDecodeError, KeyError):
                continue
    return keys


def skip_finished_jobs(jobs: list[Job], journal: Path) -> tuple[list[Job], list[Job]]:
    """(jobs still to run, jobs finished earlier with the same settings whose output still exists)."""
    done = finished_jobs(journal)
    finished = [j for j in jobs if j.key in done and Path(j.output).is_file()]
    return [j for j in jobs if j not in finished], finished


def finished_segments(job: Job) -> set[int]:
    d = parts_dir(job)
    return {int(p.stem[3:]) for p in d.glob("seg*.npy")} if d.is_dir() else set()


def joint_resume_state(job: Job) -> tuple[set[int], np.ndarray | None]:
    """seam=joint: the finished segments a re-run keeps — the prefix 0..p-1 — and the tails segment p-1
    handed on at every step [steps + 1, 1, C, frames], which segment p needs to continue exactly."""
    done, p = finished_segments(job), 0
    while p in done:
        p += 1
    if p in (0, len(job.plan)):
        return set(range(p)), None
    path = parts_dir(job) / f"tails{p - 1:05d}.npy"
    return (set(range(p)), np.load(path)) if path.is_file() else (set(), None)


def seam_times(job: Job) -> list[float]:
    """Where one segment hands over to the next: the middle of each overlap."""
    segs = job.plan.segments
    return [round((b.start + a.end) / 2, 6) for a, b in zip(segs, segs[1:])]


def measure_seams(job: Job, sample_rate: int) -> dict:
    """The seam metric of a finished output (read back: it holds one job's audio, not the video)."""
    audio, _ = sf.read(job.output, dtype="float32")
    return seam_report(audio, sample_rate, seam_times(job))


@dataclass
class JobState:
    stitcher: Stitcher
    writer: AudioWriter
    next_segment: int = 0
    started: float = field(default_factory=time.time)


class Sink:
    """Stitches each job's segments in order and streams the result to its output file."""

    def __init__(self, jobs: list[Job], sample_rate: int, done: dict[int, set[int]], progress: bool,
                 measure_seams: bool, journal: Path | None = None, coherent: bool = False, dump: str | None = None):
        self.jobs, self.sample_rate, self.done = jobs, sample_rate, done
        self.measure_seams = measure_seams
        self.coherent = coherent  # seam=joint: overlaps are one signal, blended with a linear fade
        self.journal = journal  # finished jobs are appended here as they complete (batch resume)
        self.dump = dump  # generate's dump=DIR: each segment's intermediate tensors (stages forward them as dump.*)
        self.status: dict[int, dict] = {}  # job index -> {"status": "done" | "failed", ...}
        self._open: dict[int, JobState] = {}
        self._vision: dict[int, dict] = {}  # per job: feature-cache hits and adaptive-sampling savings
        total = sum(len(j.plan) - len(done.get(i, ())) for i, j in enumerate(jobs))
        self._bar = tqdm(total=total, desc="segments", unit="seg", file=sys.stderr, disable=not progress, dynamic_ncols=True)

    def collect(self, msg: Message) -> None:
        j, seg = msg.meta["job"], msg.meta["segment"]
        self._bar.update(1)
        if j in self.status:  # an earlier segment of this job failed
            return
        if "error" in msg.meta:
            self.fail(j, msg.meta["error"])
            return
        job = self.jobs[j]
        stats = self._vision.setdefault(j, {"cached_segments": 0, "frames_skipped": 0, "sync_frames_saved": [],
                                             "host_wait_s": 0.0, "encode_s": 0.0})
        stats["cached_segments"] += int(bool(msg.meta.get("cached")))
        for k in ("host_wait_s", "encode_s"):  # release path: frame preparation vs encoders (report's `bound`)
            stats[k] += float(msg.meta.get(k, 0.0))
        stats["frames_skipped"] += int(msg.meta.get("frames_skipped", 0))
        stats["sync_frames_saved"].append(float(msg.meta.get("sync_frames_saved", 0.0)))
        if self.dump is not None:
            save_tensors_atomic(Path(self.dump) / f"seg{seg:03d}.safetensors",
                                {k.removeprefix("dump."): v for k, v in msg.tensors.items() if k.startswith("dump.")})
        audio = msg.tensors["audio"].cpu().numpy()
        if "tails" in msg.tensors:  # joint: saved before the audio, so every finished segment has its tails
            save_array_atomic(parts_dir(job) / f"tails{seg:05d}.npy", msg.tensors["tails"].cpu().numpy())
            (parts_dir(job) / f"tails{seg - 1:05d}.npy").unlink(missing_ok=True)  # only the newest is needed
        save_array_atomic(parts_dir(job) / f"seg{seg:05d}.npy", audio)
        self.done.setdefault(j, set()).add(seg)
        self._advance(j, {seg: audio})

    def finish(self) -> None:
        """Complete jobs whose remaining segments were all finished by an earlier run."""
        for j in range(len(self.jobs)):
            if j not in self.status:
                self._advance(j)
        self._bar.close()

    def fail(self, j: int, reason: str) -> None:
        state = self._open.pop(j, None)
        if state is not None:
            state.writer.abort()
        self.status[j] = {"status": "failed", "reason": reason}

    def abort(self) -> None:
        """Drop in-flight outputs (temp files); saved segments stay for the next run."""
        for state in self._open.values():
            state.writer.abort()
        self._open.clear()
        self._bar.close()

    def _advance(self, j: int, arrived: dict[int, np.ndarray] | None = None) -> None:
        """Feed every available segment of job j, in order, to its stitcher; close the job when complete.

        `arrived` holds audio already in memory; other finished segments are read back from disk."""
        arrived = arrived or {}
        job, have = self.jobs[j], self.done.get(j, set())
        state = self._open.get(j)
        if state is None:
            if 0 not in have:
                return
            state = self._open[j] = JobState(Stitcher(job.plan, self.sample_rate, self.coherent), AudioWriter(job.output, self.sample_rate))
        while state.next_segment in have:
            wave = arrived.get(state.next_segment)
            if wave is None:
                wave = np.load(parts_dir(job) / f"seg{state.next_segment:05d}.npy")
            state.writer.write(state.stitcher.add(state.next_segment, wave))
            state.next_segment += 1
        if state.next_segment == len(job.plan):
            state.writer.write(state.stitcher.finish())
            state.writer.close()
            del self._open[j]
            shutil.rmtree(parts_dir(job), ignore_errors=True)
            entry = {"status": "done", "seconds": round(time.time() - state.started, 3)}
            if j in self._vision:
                saved = self._vision[j]["sync_frames_saved"]
                entry["vision"] = {"cached_segments": self._vision[j]["cached_segments"],
                                   "frames_skipped": self._vision[j]["frames_skipped"],
                                   "sync_frames_saved": round(sum(saved) / len(saved), 4),
                                   **{k: round(self._vision[j][k], 4) for k in ("host_wait_s", "encode_s")}}
            if self.measure_seams and len(job.plan) > 1:
                entry["seams"] = measure_seams(job, self.sample_rate)
            if job.mux_output:
                entry["muxed"] = job.mux_output
                try:
                    mux(job.video, job.output, entry["muxed"])
                except FoleyError as e:
                    entry = {"status": "failed", "reason": f"audio written, mux failed: {e}"}
            self.status[j] = entry
            if self.journal is not None and entry["status"] == "done":
                append_line(self.journal, {"key": job.key, "output": job.output})
