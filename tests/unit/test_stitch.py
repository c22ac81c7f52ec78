"""Stitcher: exact length, seam-free restitching, bounded memory, ordering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foley_dist.audio.stitch import Stitcher, equal_power_fade
from foley_dist.media.segments import SegmentPlan

SR = 1000
FREQ = 5.0

# (duration, segment_seconds, overlap_seconds): regular tiling, shifted tail (large and tiny),
# shorter than one segment, exactly one segment, no overlap.
PLANS = [
    (13.0, 5.0, 1.0),
    (10.3, 5.0, 1.0),
    (9.01, 5.0, 1.0),
    (3.2, 5.0, 1.0),
    (5.0, 5.0, 1.0),
    (12.0, 4.0, 0.0),
    (7.777, 2.5, 0.5),
]


def _sine(n: int) -> np.ndarray:
    return np.sin(2 * np.pi * FREQ * np.arange(n) / SR).astype(np.float32)


def _stitch(plan: SegmentPlan, signal: np.ndarray, as_torch: bool = False) -> np.ndarray:
    stitcher = Stitcher(plan, SR)
    parts = []
    for seg in plan.segments:
        first, last = seg.sample_range(SR)
        wave = signal[first:last]
        parts.append(stitcher.add(seg.index, torch.from_numpy(wave) if as_torch else wave))
    parts.append(stitcher.finish())
    return np.concatenate(parts)


def test_equal_power_fade():
    fade_out, fade_in = equal_power_fade(257)
    assert fade_out.dtype == np.float32
    np.testing.assert_allclose(fade_out.astype(np.float64) ** 2 + fade_in.astype(np.float64) ** 2, 1.0, atol=1e-6)
    np.testing.assert_array_equal(fade_in[::-1], fade_out)
    assert np.all(np.diff(fade_in) > 0)


@pytest.mark.parametrize("duration,seg,ov", PLANS)
def test_restitched_sine_matches_original(duration, seg, ov):
    """Identical coherent inputs give out = gain * sine. Where c segments cover a sample, equal-power
    fades bound the gain to [1, sqrt(c)]: exactly 1 outside overlaps, <= sqrt(2) in a normal overlap,
    <= sqrt(3) where a tiny shifted tail overlaps two predecessors (9.01 s). No click at any seam: the
    largest sample-to-sample step is below 1.05 * sqrt(max c) times the sine's own largest step."""
    plan = SegmentPlan.build(duration, seg, ov)
    longest = max(s.sample_range(SR)[1] for s in plan.segments)
    signal = _sine(longest)
    out = _stitch(plan, signal, as_torch=(ov == 0))

    total = plan.total_samples(SR)
    assert out.shape == (total,) and out.dtype == np.float32
    ref = signal[:total]
    cover = np.zeros(total, int)
    for s in plan.segments:
        first, last = s.sample_range(SR)
        cover[first:last] += 1
    assert np.all(np.abs(out) <= np.sqrt(cover) * np.abs(ref) + 1e-5)
    assert np.all(np.abs(out) >= np.abs(ref) - 1e-5)
    steps = np.abs(np.diff(out))
    assert np.max(steps) < 1.05 * np.sqrt(cover.max()) * np.max(np.abs(np.diff(ref)))
    single = cover == 1
    np.testing.assert_array_equal(out[single], ref[single])


def test_independent_noise_keeps_power_across_seam():
    """Equal power: two uncorrelated segments keep the mean power through the crossfade."""
    plan = SegmentPlan.build(9.0, 5.0, 1.0)
    rng = np.random.default_rng(0)
    stitcher = Stitcher(plan, SR)
    out = np.concatenate([stitcher.add(s.index, rng.standard_normal(5 * SR).astype(np.float32)) for s in plan.segments])
    overlap = out[4 * SR : 5 * SR]
    assert abs(np.mean(overlap**2) - 1.0) < 0.1


@pytest.mark.parametrize("sr", [8000, 16000, 44100, 48000])
def test_streaming_emits_exact_length_with_bounded_buffer(sr):
    rng = np.random.default_rng(1)
    for duration in rng.uniform(0.05, 40.0, size=25):
        seg = float(rng.choice([1.0, 2.56, 5.0, 8.0]))
        ov = float(rng.uniform(0.0, 0.6) * seg)
        plan = SegmentPlan.build(float(duration), seg, ov)
        stitcher = Stitcher(plan, sr)
        emitted = 0
        for s in plan.segments:
            first, last = s.sample_range(sr)
            emitted += len(stitcher.add(s.index, np.zeros(last - first, np.float32)))
            assert stitcher.buffered_samples <= last - first
            assert emitted == stitcher.emitted_samples
        emitted += len(stitcher.finish())
        assert emitted == plan.total_samples(sr), (duration, seg, ov)


def test_out_of_order_waves_raise():
    plan = SegmentPlan.build(13.0, 5.0, 1.0)
    stitcher = Stitcher(plan, SR)
    with pytest.raises(ValueError, match="index order"):
        stitcher.add(1, np.zeros(5 * SR, np.float32))
    stitcher.add(0, np.zeros(5 * SR + 64, np.float32))  # longer waves are cut to the segment
    with pytest.raises(ValueError, match="index order"):
        stitcher.add(0, np.zeros(5 * SR, np.float32))
    with pytest.raises(ValueError, match="finish"):
        stitcher.finish()
    for s in plan.segments[1:]:
        stitcher.add(s.index, np.zeros(5 * SR, np.float32))
    with pytest.raises(ValueError, match="index order"):
        stitcher.add(len(plan), np.zeros(5 * SR, np.float32))


def test_short_waves_follow_the_release_length_rule():
    """Segment audio may end before its window (release length: sync frames / 25 s): a gap before the
    next segment holds the last sample; a short last segment ends the output early, as the release's does."""
    plan = SegmentPlan.build(9.0, 5.0, 1.0)  # [0, 5), [4, 9)
    stitcher = Stitcher(plan, SR)
    first = stitcher.add(0, np.full(int(3.5 * SR), 0.5, np.float32))  # ends 0.5 s before segment 1 starts
    assert len(first) == 4 * SR and np.all(first[int(3.5 * SR):] == 0.5)
    last = stitcher.add(1, np.ones(int(4.2 * SR), np.float32))
    assert stitcher.emitted_samples == int(8.2 * SR) and len(last) == int(4.2 * SR)
    assert len(stitcher.finish()) == 0
    single = Stitcher(SegmentPlan.build(2.4, 5.0, 1.0), SR)  # a one-pass clip: 2.36 s of audio for 2.4 s of video
    assert len(single.add(0, np.ones(int(2.36 * SR), np.float32))) == int(2.36 * SR)


def test_rounding_gaps_are_held_not_zeroed():
    """Overlap 0 with a non-integer segment length: rounded ranges leave 1-sample gaps between segments."""
    sr = 16000
    plan = SegmentPlan.build(3.0, 0.33333, 0.0)
    ranges = [s.sample_range(sr) for s in plan.segments]
    assert any(nxt[0] > prev[1] for prev, nxt in zip(ranges, ranges[1:]))
    stitcher = Stitcher(plan, sr)
    out = np.concatenate([stitcher.add(i, np.ones(last - first, np.float32)) for i, (first, last) in enumerate(ranges)])
    assert len(out) == plan.total_samples(sr)
    assert np.all(out >= 1.0 - 1e-6)
