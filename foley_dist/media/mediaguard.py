"""The media boundary: decode what is decodable, count what is not, and never let a decoder error escape.

Real footage arrives damaged (a corrupt run of bytes mid-stream, a truncated upload, a lost cluster).
FFmpeg's own command line keeps going past such damage: a packet the decoder rejects is dropped and
decoding resumes at the next one it accepts. `decode` does the same over a PyAV container and counts
the frames that went missing, from gaps in the presentation timestamps (each frame is expected
`duration` after the previous one), so a rejected packet, a frame the decoder dropped waiting for a
keyframe and a cluster the demuxer skipped all count alike. The count is per thread
(`frames_skipped`), so segments decoded side by side on frame-preparation threads keep their own
counts; the vision stage reads it around each segment and the run report sums it.

`media_errors` turns whatever a decoder library raises (PyAV's FFmpegError, decord's DECORDError or
RuntimeError) into a one-line `FoleyError`, and `check_window` fails a segment that has no decodable
frame at all instead of filling it with the last good frame from seconds earlier.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator

import av

from foley_dist.errors import FoleyError

GAP_FACTOR = 1.5  # a step longer than this many expected steps means frames are missing
RECENT = 8  # steps between decoded frames that set the expected step
TIME_TOLERANCE = 1e-3  # s, as in video.py: timestamp rounding

log = logging.getLogger(__name__)
_counts = threading.local()


def frames_skipped() -> int:
    """Frames this thread found missing or undecodable so far (read it before and after a decode)."""
    return getattr(_counts, "skipped", 0)


def _count(n: int) -> None:
    _counts.skipped = frames_skipped() + n


def frame_span(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> tuple[float, float]:
    """(seconds from the stream's first frame, seconds the frame stays on screen)."""
    base = frame.time_base or stream.time_base
    rate = stream.average_rate or stream.guessed_rate
    nominal = float(1 / rate) if rate else 0.0
    duration = float(frame.duration * base) if frame.duration else nominal
    return float((frame.pts - (stream.start_time or 0)) * base), duration or nominal


def _packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.Packet]:
    """Demuxed packets; a demuxer error (truncated or garbled container) ends the stream like EOF does."""
    try:
        yield from container.demux(stream)
    except av.FFmpegError as e:
        log.debug("%s: demuxing stopped early (%s); using the frames read so far", container.name, e)


def decode(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
    """Decoded frames with a timestamp, in presentation order, skipping packets the decoder rejects.

    A drop-in for `container.decode(stream)`. A step between two decoded frames longer than GAP_FACTOR
    times the expected one counts its missing frames into `frames_skipped`; the expected step is the
    larger of the frame's duration and the last RECENT steps, so a variable frame rate is not damage."""
    times: list[float] = []
    for packet in _packets(container, stream):
        try:
            frames = packet.decode()
        except av.FFmpegError:
            continue  # counted by the timestamp gap it leaves
        for frame in frames:
            if frame.pts is None:
                _count(1)
                continue
            t, duration = frame_span(frame, stream)
            if times:
                steps = [b - a for a, b in zip(times, times[1:])]
                expected = max([duration, *steps])
                if len(steps) >= 2 and expected > 0 and t - times[-1] > GAP_FACTOR * expected:
                    _count(max(1, round((t - times[-1]) / expected) - 1))
            times = [*times[-RECENT:], t]  # the last RECENT steps
            yield frame
    with contextlib.suppress(av.FFmpegError):  # a demuxer error left the decoder holding frames: flush them
        for frame in stream.codec_context.decode(None):
            if frame.pts is not None:
                yield frame


def check_window(
    frames: Iterator[tuple[float, av.VideoFrame]], start: float, end: float, path: str,
    stream: av.video.stream.VideoStream,
) -> Iterator[tuple[float, av.VideoFrame]]:
    """Pass (time, frame) pairs through; raise `FoleyError` if no frame is on screen anywhere in
    [start, end]. A frame shows for GAP_FACTOR times the larger of its duration and the step that led
    to it (a slideshow's long frames count), longer means frames are missing."""
    covered, previous = False, None
    for t, frame in frames:
        shown = max(frame_span(frame, stream)[1], t - previous if previous is not None else 0.0)
        covered = covered or (t <= end + TIME_TOLERANCE and t + GAP_FACTOR * shown >= start - TIME_TOLERANCE)
        if not covered and t > end + TIME_TOLERANCE:
            break
        previous = t
        yield t, frame
    if not covered:
        raise FoleyError(f"{path}: no decodable video frame between {start:.2f} s and {end:.2f} s (the stream is "
                         "damaged or shorter than its header says); repair or re-encode the file")


@contextlib.contextmanager
def media_errors(path: str) -> Iterator[None]:
    """Translate decoder-library exceptions raised inside the block into one-line `FoleyError`s."""
    try:
        yield
    except FoleyError:
        raise
    except av.FFmpegError as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise FoleyError(f"{path}: the video cannot be decoded ({reason}); the file is damaged, re-encode it") from None
    except Exception as e:
        if type(e).__module__.startswith("decord") or type(e).__name__ == "DECORDError":
            raise FoleyError(f"{path}: decord cannot decode the video ({str(e).splitlines()[0] if str(e) else e}); "
                             "use decoder=pyav or re-encode the file") from None
        raise
