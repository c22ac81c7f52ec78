"""SegmentPlan: the timeline cut into fixed-length, overlapping windows (the pipeline's microbatches).

Every segment has the same length so every stage sees the same tensor shapes (the model's 5 s
window, caching and batching all rely on that). The tail is handled by shifting the last window back
so it ends exactly at the end of the video: it overlaps its predecessor by more than
`overlap_seconds`, and nothing is padded. A video shorter than one segment gets a single window that
runs past the end; the frames past the end repeat the last frame and the audio is trimmed to the
video's duration by the stitcher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from foley_dist.errors import FoleyError


@dataclass(frozen=True)
class Segment:
    """One window [start, end) of the video, in seconds; `end - start == segment_seconds`."""

    index: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def sample_range(self, sample_rate: int) -> tuple[int, int]:
        """[first, last) global sample indices this segment's audio covers (may exceed the video)."""
        first = round(self.start * sample_rate)
        return first, first + round(self.seconds * sample_rate)


@dataclass(frozen=True)
class SegmentPlan:
    duration: float
    segment_seconds: float
    overlap_seconds: float
    segments: tuple[Segment, ...]

    @classmethod
    def build(cls, duration: float, segment_seconds: float = 5.0, overlap_seconds: float = 1.0) -> "SegmentPlan":
        if not duration > 0:
            raise FoleyError(f"video duration is {duration} s: nothing to generate; pass a video with at least one frame")
        if not segment_seconds > 0:
            raise FoleyError(f"segment_seconds={segment_seconds} must be > 0 (default 5)")
        if not 0 <= overlap_seconds < segment_seconds:
            raise FoleyError(
                f"overlap_seconds={overlap_seconds} must be >= 0 and < segment_seconds={segment_seconds}; "
                "pass a smaller overlap_seconds= (default 1)"
            )
        stride = segment_seconds - overlap_seconds
        if duration <= segment_seconds:
            starts = [0.0]
        else:
            count = math.ceil((duration - segment_seconds) / stride - 1e-9) + 1
            starts = [min(k * stride, duration - segment_seconds) for k in range(count)]
        segments = tuple(Segment(i, round(float(s), 6), round(float(s + segment_seconds), 6)) for i, s in enumerate(starts))
        return cls(duration, segment_seconds, overlap_seconds, segments)

    def __len__(self) -> int:
        return len(self.segments)

    def total_samples(self, sample_rate: int) -> int:
        return round(self.duration * sample_rate)
