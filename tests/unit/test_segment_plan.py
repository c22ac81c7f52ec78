"""SegmentPlan: equal-length windows, tail shifted back to end at the video's end, clear errors."""

from __future__ import annotations

import pytest

from foley_dist.errors import FoleyError
from foley_dist.media.segments import Segment, SegmentPlan


def _spans(plan: SegmentPlan) -> list[tuple[float, float]]:
    return [(s.start, s.end) for s in plan.segments]


def _check_invariants(plan: SegmentPlan) -> None:
    assert [s.index for s in plan.segments] == list(range(len(plan)))
    assert all(s.seconds == pytest.approx(plan.segment_seconds) for s in plan.segments)
    assert plan.segments[0].start == 0.0
    for prev, nxt in zip(plan.segments, plan.segments[1:]):
        assert nxt.start > prev.start
        assert prev.end - nxt.start >= plan.overlap_seconds - 1e-9  # no gaps, at least the overlap
    if plan.duration >= plan.segment_seconds:
        assert plan.segments[-1].end == pytest.approx(plan.duration)  # nothing padded


def test_video_shorter_than_one_segment_gets_one_window_past_the_end():
    plan = SegmentPlan.build(3.2, 5.0, 1.0)
    assert _spans(plan) == [(0.0, 5.0)]
    assert plan.total_samples(16_000) == 51_200
    assert plan.segments[0].sample_range(16_000) == (0, 80_000)


def test_video_exactly_one_segment():
    assert _spans(SegmentPlan.build(5.0, 5.0, 1.0)) == [(0.0, 5.0)]


def test_exact_multiple_of_the_stride_needs_no_shift():
    plan = SegmentPlan.build(13.0, 5.0, 1.0)
    assert _spans(plan) == [(0.0, 5.0), (4.0, 9.0), (8.0, 13.0)]
    _check_invariants(plan)


def test_tail_is_shifted_back_to_end_at_the_video_end():
    plan = SegmentPlan.build(14.0, 5.0, 1.0)
    assert _spans(plan) == [(0.0, 5.0), (4.0, 9.0), (8.0, 13.0), (9.0, 14.0)]
    assert plan.segments[-2].end - plan.segments[-1].start == 4.0  # more overlap than asked, no padding
    _check_invariants(plan)


@pytest.mark.parametrize("duration", [5.01, 7.3, 12.0, 60.04, 3600.0])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 1.0, 4.9])
def test_invariants_hold(duration: float, overlap: float):
    _check_invariants(SegmentPlan.build(duration, 5.0, overlap))


def test_segment_sample_ranges_have_equal_length():
    plan = SegmentPlan.build(12.0, 5.0, 1.0)
    lengths = {b - a for a, b in (s.sample_range(44_100) for s in plan.segments)}
    assert lengths == {5 * 44_100}
    assert Segment(0, 0.0, 5.0).seconds == 5.0


@pytest.mark.parametrize("overlap", [5.0, 6.0, -0.5])
def test_bad_overlap_is_rejected_with_a_clear_error(overlap: float):
    with pytest.raises(FoleyError, match=r"overlap_seconds=.* must be >= 0 and < segment_seconds=5.0"):
        SegmentPlan.build(12.0, 5.0, overlap)


@pytest.mark.parametrize("duration", [0.0, -1.0])
def test_zero_duration_is_rejected(duration: float):
    with pytest.raises(FoleyError, match="nothing to generate"):
        SegmentPlan.build(duration, 5.0, 1.0)


def test_non_positive_segment_length_is_rejected():
    with pytest.raises(FoleyError, match="segment_seconds=0.0 must be > 0"):
        SegmentPlan.build(12.0, 0.0, 0.0)
