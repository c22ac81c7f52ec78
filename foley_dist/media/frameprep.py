"""Release-exact encoder inputs of a segment, prepared on the host's cores (vision.workers).

Threads, not processes: PyAV's decoding and colour conversion, PIL's resize and torch's kernels
release the GIL, threads share the decoded frames (nothing full-size is copied between processes)
and die with the process (a SIGKILLed rank leaves no orphan or zombie behind).

Two levels of parallelism:
- segments: every segment seeks to its own keyframe, so `prefetch` decodes the next segment on a
  decoder thread while the current one is encoded;
- frames: each picked frame is converted to RGB and resized on a worker thread. At most `workers`
  picked frames are in flight (a semaphore shared by all segments), so memory stays about one
  full-size frame per worker (plus each decoder's own frames) and the outputs.

Each frame's images go into fixed slots of the segment's preallocated batch, by pick order, so the
result is bit-identical to the serial path (workers=1: everything inline in the calling thread).
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import av
import torch

from foley_dist.media import mediaguard
from foley_dist.media.preprocess import siglip_frame, sync_frame
from foley_dist.media.video import release_frames, rgb24

LOOKAHEAD = 1  # segments decoded ahead of the one being encoded: enough to hide decoding, bounds memory


def affinity_cores() -> int:
    """The cores this process may run on: its CPU affinity, which torchrun's and Slurm's CPU binding set."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity
        return os.cpu_count() or 1


def resolve_workers(workers: int) -> int:
    """vision.workers: 0 = the cores this rank may use."""
    return workers if workers > 0 else affinity_cores()


@dataclass(frozen=True)
class Frames:
    """A segment's uint8 encoder inputs, as the release builds them, and their source times."""

    visual: torch.Tensor  # [Tv, 3, S, S]
    sync: torch.Tensor  # [Ts, 3, s, s]
    visual_times: list[float]
    sync_times: list[float]
    frames_skipped: int  # damaged or missing source frames (foley_dist.media.mediaguard)
    prep_s: float  # wall seconds from the first decode to the last resized frame


@dataclass(frozen=True)
class Recipe:
    """What to make of each picked frame: the rates it is picked at and the sizes it is resized to."""

    visual_fps: float
    sync_fps: float
    visual_size: int
    sync_size: int
    siglip_resize: str = "pil"


def _capacity(start: float, end: float, rate: float) -> int:
    """Most picks of a rate in [start, end): one per target, targets 1 / rate apart (+ float drift)."""
    return math.ceil((end - start) * rate) + 2


@torch.inference_mode()  # on any thread: the slots are inference tensors when the stage allocates them
def _convert(frame: av.VideoFrame, recipe: Recipe, visual: torch.Tensor | None, sync: torch.Tensor | None) -> None:
    """One picked frame -> its slots: full-size RGB once, then each resize; repeated picks copy the first."""
    rgb = rgb24(frame)
    if visual is not None:
        siglip_frame(rgb, recipe.visual_size, recipe.siglip_resize, out=visual[0])
        visual[1:] = visual[0]
    if sync is not None:
        sync_frame(rgb, recipe.sync_size, out=sync[0])
        sync[1:] = sync[0]


class FramePrep:
    """Prepares segments' release-exact inputs with `workers` threads (1: serially, in the caller)."""

    def __init__(self, recipe: Recipe, workers: int):
        self.recipe, self.workers = recipe, workers
        parallel = workers > 1
        self._frames = ThreadPoolExecutor(workers, "foley-frames") if parallel else None
        self._decoders = ThreadPoolExecutor(LOOKAHEAD, "foley-decode") if parallel else None
        self._in_flight = threading.BoundedSemaphore(workers)
        self._ahead: dict[tuple[str, float, float], Future] = {}
        self._closed = threading.Event()

    def _stopping(self) -> bool:
        """Closed, or the interpreter is exiting (the main thread has ended): decoder threads stop at the
        next frame instead of keeping a terminated rank alive until their segment is done."""
        return self._closed.is_set() or not threading.main_thread().is_alive()

    def prefetch(self, video: str, start: float, end: float) -> None:
        """Start decoding a later segment on a decoder thread (no-op when serial or enough are queued)."""
        key = (video, start, end)
        if self._decoders is None or key in self._ahead or len(self._ahead) >= LOOKAHEAD or self._closed.is_set():
            return
        self._ahead[key] = self._decoders.submit(self._prepare, video, start, end)

    def get(self, video: str, start: float, end: float) -> Frames:
        """The segment's inputs: the prefetched ones, else prepared now (decoding in this thread)."""
        ahead = self._ahead.pop((video, start, end), None)
        return ahead.result() if ahead is not None else self._prepare(video, start, end)

    @torch.inference_mode()
    def _prepare(self, video: str, start: float, end: float) -> Frames:
        r = self.recipe
        began, skipped = time.perf_counter(), mediaguard.frames_skipped()  # per thread: this segment's count
        visual = torch.empty(_capacity(start, end, r.visual_fps), 3, r.visual_size, r.visual_size, dtype=torch.uint8)
        sync = torch.empty(_capacity(start, end, r.sync_fps), 3, r.sync_size, r.sync_size, dtype=torch.uint8)
        visual_times: list[float] = []
        sync_times: list[float] = []
        pending: list[Future] = []
        for t, frame, (n_visual, n_sync) in release_frames(video, start, end, (r.visual_fps, r.sync_fps), self._stopping):
            slots = (visual[len(visual_times) : len(visual_times) + n_visual] if n_visual else None,
                     sync[len(sync_times) : len(sync_times) + n_sync] if n_sync else None)
            visual_times += [t] * n_visual
            sync_times += [t] * n_sync
            if self._frames is None:
                _convert(frame, r, *slots)
                continue
            self._in_flight.acquire()  # bounds the full-size frames alive at once
            job = self._frames.submit(_convert, frame, r, *slots)
            job.add_done_callback(lambda _: self._in_flight.release())
            pending.append(job)
        for job in pending:
            job.result()  # a worker's error surfaces here
        if self._stopping():
            raise RuntimeError("frame preparation stopped: the vision stage is closing")
        return Frames(visual[: len(visual_times)], sync[: len(sync_times)], visual_times, sync_times,
                      mediaguard.frames_skipped() - skipped, time.perf_counter() - began)

    def close(self) -> None:
        """Stop decoding ahead and let the threads go (idempotent)."""
        self._closed.set()
        for pool in (self._decoders, self._frames):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._ahead.clear()

