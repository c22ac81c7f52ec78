"""Adaptive sync-frame sampling: decode fewer Synchformer frames where nothing moves.

Synchformer needs a 25 fps grid, but on a static shot consecutive frames carry the same content, so
decoding (and scaling) every one of them is wasted work. Motion is measured on frames that are
decoded anyway (the 8 fps visual frames, shrunk to 32 x 32 luma thumbnails): the largest
thumbnail-pixel change between neighbouring visual frames. Around every visual interval that moves
(and one interval either side, so the onset of motion is not missed) every grid frame is decoded;
elsewhere grid frames are decoded at `min_sync_fps`, evenly spread. Each grid frame then takes the
nearest decoded frame in time, so the Synchformer sees the same [T, 3, S, S] as with fixed sampling.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import torch
import torch.nn.functional as F

THUMB_SIZE = 32
# Largest per-pixel luma change (0..1) of a thumbnail pixel below which an interval counts as static:
# above compression noise, far below a small object moving (each thumbnail pixel averages ~1/1000 of
# the frame, so sensor noise is averaged away while a moving edge is not).
STATIC_THRESHOLD = 8 / 255
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class SyncPlan:
    """Which grid frames to decode, and which decoded frame fills each grid slot."""

    times: tuple[float, ...]  # decode times, increasing, a subset of the grid
    source: tuple[int, ...]  # grid frame k is decoded frame source[k]

    @property
    def saved(self) -> float:
        """Fraction of grid frames not decoded."""
        return 1.0 - len(self.times) / len(self.source)


def thumbnails(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, 3, H, W] -> luma thumbnails float [T, 32, 32] in [0, 1] (area-averaged)."""
    weights = torch.tensor(_LUMA, device=frames.device).view(1, 3, 1, 1)
    luma = (frames.float() * weights).sum(1, keepdim=True) / 255
    return F.interpolate(luma, (THUMB_SIZE, THUMB_SIZE), mode="area")[:, 0].cpu()


def motion(thumbs: torch.Tensor) -> torch.Tensor:
    """[T, h, w] -> [T - 1]: largest pixel change between consecutive thumbnails."""
    return (thumbs[1:] - thumbs[:-1]).abs().flatten(1).amax(1)


def fixed_plan(grid: Sequence[float]) -> SyncPlan:
    return SyncPlan(tuple(grid), tuple(range(len(grid))))


def adaptive_plan(
    grid: Sequence[float],
    fps: float,
    visual_times: Sequence[float],
    thumbs: torch.Tensor,
    min_fps: float,
    threshold: float = STATIC_THRESHOLD,
) -> SyncPlan:
    """Plan the decode of `grid` (times at `fps`) from thumbnails of frames at `visual_times`."""
    if not 0 < min_fps:
        raise ValueError(f"min_fps must be > 0, got {min_fps}")
    if len(visual_times) < 2 or min_fps >= fps:
        return fixed_plan(grid)
    moving = (motion(thumbs) >= threshold).tolist()
    last = len(moving) - 1
    rate = Fraction(min_fps).limit_denominator(1000) / Fraction(fps).limit_denominator(1000)
    keep = []
    for k, t in enumerate(grid):
        j = min(last, max(0, bisect.bisect_right(visual_times, t) - 1))  # the visual interval holding t
        if any(moving[max(0, j - 1) : j + 2]) or k == 0 or int(k * rate) > int((k - 1) * rate):
            keep.append(k)
    source = []
    for k in range(len(grid)):
        i = bisect.bisect_left(keep, k)  # keep[i] >= k; the earlier neighbour wins a tie
        if i == len(keep) or (i > 0 and k - keep[i - 1] <= keep[i] - k):
            i -= 1
        source.append(i)
    return SyncPlan(tuple(grid[k] for k in keep), tuple(source))


def resample(frames: torch.Tensor, plan: SyncPlan) -> torch.Tensor:
    """Decoded frames [len(plan.times), ...] -> the full grid [len(plan.source), ...] (nearest in time)."""
    return frames[list(plan.source)]
