"""The media boundary: damaged packets are skipped and counted, a variable frame rate or a slideshow
is not damage, a window without any frame is an error, decoder exceptions become FoleyError."""

from __future__ import annotations

import av
import pytest

from foley_dist.errors import FoleyError
from foley_dist.media import mediaguard, video
from foley_dist.media.testclip import damage, make_clip, make_plain


def _count(path) -> tuple[int, int]:
    """(frames decoded, frames counted as skipped) over the whole file."""
    before = mediaguard.frames_skipped()
    with av.open(str(path)) as c:
        n = sum(1 for _ in mediaguard.decode(c, c.streams.video[0]))
    return n, mediaguard.frames_skipped() - before


def test_damaged_packets_are_skipped_and_counted(tmp_path):
    clean = make_clip(tmp_path / "c.mp4", 12, 160, 96, 24, seed=1)
    assert _count(clean) == (288, 0)
    damaged = damage(clean, tmp_path / "d.mp4")
    with av.open(str(damaged)) as c:  # plain decoding gives up on it...
        with pytest.raises(av.FFmpegError):
            sum(1 for _ in c.decode(video=0))
    decoded, skipped = _count(damaged)  # ...the guard goes on, and the frames it lost are counted
    assert 0 < decoded < 288 and skipped > 0 and decoded + skipped <= 288 + 2


def test_variable_frame_rate_and_slideshow_are_not_damage(tmp_path):
    vfr = make_plain(tmp_path / "vfr.mkv", 0, 16, 16, times=[i * 0.02 + (i // 2) * 0.06 for i in range(60)])
    assert _count(vfr) == (60, 0)
    slides = make_plain(tmp_path / "slides.mkv", 0, 16, 16, fps=1, times=[0.0, 5.0, 10.0, 15.0])
    assert _count(slides) == (4, 0)
    frames = video.decode_segment(slides, [6.0 + k / 8 for k in range(25)], (8, 8))
    assert frames.shape[0] == 25  # a window between two slides is covered by the earlier one


def test_window_without_a_decodable_frame_is_an_error(tmp_path):
    gap = make_plain(tmp_path / "gap.mkv", 0, 16, 16, times=[i / 24 for i in range(48)] + [8 + i / 24 for i in range(48)])
    with pytest.raises(FoleyError, match="no decodable video frame between 3.00 s and 6.00 s"):
        video.decode_segment(gap, [3.0 + k / 8 for k in range(25)], (8, 8))


def test_decoder_exceptions_become_foley_errors():
    with pytest.raises(FoleyError, match="clip.mp4: the video cannot be decoded"):
        with mediaguard.media_errors("clip.mp4"):
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
    DECORDError = type("DECORDError", (RuntimeError,), {"__module__": "decord._ffi.base"})
    with pytest.raises(FoleyError, match="decord cannot decode"):
        with mediaguard.media_errors("clip.mp4"):
            raise DECORDError("[12:00:00] src/video/ffmpeg/threaded_decoder.cc:292: Error sending packet")
    with pytest.raises(KeyError):  # a bug stays a bug
        with mediaguard.media_errors("clip.mp4"):
            raise KeyError("x")
