"""Adaptive sync sampling: fewer decoded frames on static stretches, full rate in motion (with a
margin around it), nearest-in-time resampling back to the 25 fps grid, on synthetic thumbnails and
on generated static and moving clips."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from foley_dist.media import framesampling as fs
from foley_dist.media import testclip
from foley_dist.media.segments import Segment
from foley_dist.media.video import decode_segment, sample_times

SEG = Segment(0, 0.0, 5.0)
GRID = sample_times(SEG, 25)  # 125 sync frames
VISUAL = sample_times(SEG, 8)  # 40 visual frames


def make_static_clip(path: Path, seconds: float, width: int, height: int, fps: int = 25) -> Path:
    """Identical frames (a fixed random picture), H.264."""
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=fps, options={"preset": "ultrafast", "crf": "20"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sampling")
    return {
        "static": make_static_clip(root / "static.mp4", 5.0, 160, 96),
        "moving": testclip.make_clip(root / "moving.mp4", 5.0, 160, 96, fps=25),
    }


def _thumbs(moving: list[bool]) -> torch.Tensor:
    """Thumbnails whose consecutive differences are large exactly where `moving` says."""
    values = np.cumsum([0.0] + [0.5 if m else 0.0 for m in moving]) % 1.0
    return torch.tensor(values, dtype=torch.float32)[:, None, None].expand(-1, 32, 32)


def test_static_decodes_min_fps_evenly():
    plan = fs.adaptive_plan(GRID, 25, VISUAL, _thumbs([False] * 39), min_fps=15)
    assert len(plan.times) == 75 and plan.saved == pytest.approx(0.4)
    assert set(plan.times) <= set(GRID) and list(plan.times) == sorted(plan.times)
    kept = [GRID.index(t) for t in plan.times]
    assert max(b - a for a, b in zip(kept, kept[1:])) <= 2
    assert len(plan.source) == 125
    # nearest in time: every grid frame takes a decoded frame at most one grid step away
    assert all(abs(GRID[k] - plan.times[i]) <= 1 / 25 + 1e-9 for k, i in enumerate(plan.source))


def test_moving_decodes_every_frame():
    plan = fs.adaptive_plan(GRID, 25, VISUAL, _thumbs([True] * 39), min_fps=15)
    assert plan == fs.fixed_plan(GRID) and plan.saved == 0.0


def test_motion_keeps_full_rate_with_a_margin():
    moving = [False] * 39
    moving[20] = True  # visual frames 20 -> 21: 2.5 s .. 2.625 s
    plan = fs.adaptive_plan(GRID, 25, VISUAL, _thumbs(moving), min_fps=15)
    kept = {round(t * 25) for t in plan.times}
    assert set(range(round(2.375 * 25), round(2.75 * 25))) <= kept  # the interval and one either side
    assert 0 < plan.saved < 0.4


def test_min_fps_at_or_above_fps_and_short_segments_decode_everything():
    static = _thumbs([False] * 39)
    assert fs.adaptive_plan(GRID, 25, VISUAL, static, min_fps=25).saved == 0.0
    assert fs.adaptive_plan(GRID, 25, VISUAL[:1], static[:1], min_fps=15).saved == 0.0
    with pytest.raises(ValueError):
        fs.adaptive_plan(GRID, 25, VISUAL, static, min_fps=0)


def test_lower_min_fps_saves_more():
    static = _thumbs([False] * 39)
    saved = [fs.adaptive_plan(GRID, 25, VISUAL, static, min_fps=r).saved for r in (20, 15, 10, 5)]
    assert saved == sorted(saved) and saved[-1] == pytest.approx(0.8)


def test_thumbnails_and_motion():
    frames = torch.zeros(3, 3, 64, 96, dtype=torch.uint8)
    frames[2, :, :2, :3] = 255  # one 2x3 pixel corner: exactly one thumbnail pixel
    thumbs = fs.thumbnails(frames)
    assert thumbs.shape == (3, 32, 32)
    m = fs.motion(thumbs)
    assert m[0] == 0 and m[1] == pytest.approx(1.0, abs=1e-3)


def _plan(clip: Path) -> fs.SyncPlan:
    thumbs = fs.thumbnails(decode_segment(clip, VISUAL, (64, 64), "resize"))
    return fs.adaptive_plan(GRID, 25, VISUAL, thumbs, min_fps=15)


def test_static_clip_decodes_fewer_frames_moving_clip_full_rate(clips: dict[str, Path]):
    static, moving = _plan(clips["static"]), _plan(clips["moving"])
    assert len(static.times) == 75 and static.saved == pytest.approx(0.4)
    assert len(moving.times) == 125 and moving.saved == 0.0
    assert _plan(clips["static"]) == static  # deterministic


def test_resampled_frames_have_the_fixed_shape(clips: dict[str, Path]):
    plan = _plan(clips["static"])
    frames = fs.resample(decode_segment(clips["static"], plan.times, (32, 32), "center_crop"), plan)
    full = decode_segment(clips["static"], GRID, (32, 32), "center_crop")
    assert frames.shape == full.shape == (125, 3, 32, 32)
    assert (frames.float() - full.float()).abs().mean() < 1.0  # static: the held frames look the same
