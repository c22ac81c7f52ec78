"""Overlap-add stitching of per-segment audio into one seam-free, video-length waveform.

Consecutive segments are blended with an equal-power (sin/cos) crossfade over their *actual* overlap:
the shifted last segment of a `SegmentPlan` overlaps its predecessor by more than `overlap_seconds`,
and fading over the whole shared span keeps the transition as slow as the plan allows. Equal power
(fade_out^2 + fade_in^2 == 1) is right for generated audio, where two segments' renderings of the
same moment are not sample-coherent: their powers add, so total loudness stays constant across the
seam. (For identical, coherent signals the gain is fade_out + fade_in, between 1 and sqrt(2).)
Joint sampling (`seam=joint`) makes neighbouring segments' overlap latents one signal, so their audio
is coherent there: `coherent=True` blends it with a linear fade (fade_out + fade_in == 1), which keeps
a shared signal at unit gain and moves each segment's decoder edge out of the output.

The `Stitcher` streams: it keeps only the not-yet-final overlap tail (at most one segment), so the
sink's memory does not grow with the video's length.
"""

from __future__ import annotations

import numpy as np
import torch

from foley_dist.media.segments import SegmentPlan


def equal_power_fade(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in) of length n, float32, with fade_out**2 + fade_in**2 == 1.

    Sampled at sample centres, so neither curve hits exactly 0 or 1 inside the overlap and the fade
    is symmetric: fade_in[::-1] == fade_out.
    """
    phase = (np.arange(n, dtype=np.float64) + 0.5) / n * (np.pi / 2)
    return np.cos(phase).astype(np.float32), np.sin(phase).astype(np.float32)


def linear_fade(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in) of length n, float32, summing to 1 (at sample centres, like equal_power_fade)."""
    fade_in = ((np.arange(n, dtype=np.float64) + 0.5) / n).astype(np.float32)
    return (1 - fade_in).astype(np.float32), fade_in


def _as_wave(wave: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to("cpu", torch.float32).numpy()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"segment audio must be 1-D (mono samples), got shape {wave.shape}")
    return wave


def _fit(buf: np.ndarray, n: int) -> np.ndarray:
    """First n samples of buf, repeating its last sample if it is shorter.

    Segment sample ranges are rounded independently, so a range can end one or two samples before the
    next begins (overlap 0) or before the video's end; holding the last value fills that without a click.
    """
    if len(buf) >= n:
        return buf[:n]
    return np.concatenate([buf, np.full(n - len(buf), buf[-1] if len(buf) else 0.0, np.float32)])


class Stitcher:
    """Streaming overlap-add: feed segments in index order, get back the samples that became final."""

    def __init__(self, plan: SegmentPlan, sample_rate: int, coherent: bool = False):
        self.plan = plan
        self.fade = linear_fade if coherent else equal_power_fade
        self.sample_rate = sample_rate
        self.total = plan.total_samples(sample_rate)
        self._ranges = [s.sample_range(sample_rate) for s in plan.segments]
        self._next = 0  # index of the segment expected next
        self._pos = 0  # global sample index of _tail[0] (== samples emitted so far)
        self._tail = np.zeros(0, np.float32)  # not-yet-final samples, starting at _pos

    @property
    def buffered_samples(self) -> int:
        """Samples held between calls (bounded by one segment's length)."""
        return len(self._tail)

    @property
    def emitted_samples(self) -> int:
        return self._pos

    def add(self, segment_index: int, wave: np.ndarray | torch.Tensor) -> np.ndarray:
        """Blend in segment `segment_index` and return every sample before the next segment's start
        (for the last segment: everything up to the video's end).

        Waves longer than the segment are cut (vocoders pad to a hop multiple). Shorter ones are
        normal: the release's length rule (sync frames picked / 25 s) can end a segment's audio before
        its window does; a gap before the next segment holds the last sample, and the output of a last
        segment that ends early ends with it (as the release's own output does).
        """
        if segment_index != self._next or segment_index >= len(self._ranges):
            raise ValueError(
                f"segments must be added once each, in index order: "
                f"expected {self._next} of {len(self._ranges)}, got {segment_index}"
            )
        first, last = self._ranges[segment_index]
        wave = _as_wave(wave)[: last - first]
        # _pos == first here (the previous add emitted up to this segment's start), so the tail is
        # exactly the overlap [first, end of previous segment), never longer than this segment.
        n = len(self._tail)
        wave = _fit(wave, max(n, len(wave)))  # (a wave shorter than the overlap holds its last sample)
        fade_out, fade_in = self.fade(n)
        mixed = self._tail[:n] * fade_out + wave[:n] * fade_in
        buf = np.concatenate([mixed, wave[n:]])

        self._next += 1
        done = self._next == len(self._ranges)
        final_until = min(self.total, self._pos + len(buf)) if done else self._ranges[self._next][0]
        cut = final_until - self._pos
        out = _fit(buf, cut)
        self._tail = np.zeros(0, np.float32) if done else buf[cut:].copy()  # copy: don't pin buf
        self._pos = final_until
        return out

    def finish(self) -> np.ndarray:
        """Check every segment arrived; return the rest, which is empty because the last `add` already
        emitted through the video's end (audio past it, from a segment running over the end, is dropped)."""
        if self._next != len(self._ranges):
            raise ValueError(f"finish() after {self._next} of {len(self._ranges)} segments")
        return np.zeros(0, np.float32)
