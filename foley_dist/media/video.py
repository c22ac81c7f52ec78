"""Probe a video and decode one segment's frames: as the release picks them, or straight at model size.

Release-exact picking (`release_picks`, the default path): the frames HunyuanVideo-Foley's own
`get_frames_av` takes, as full-size RGB, one at a time, for the release-exact preprocessing in
`foley_dist.media.preprocess`. The fast path below (`decode_segment`, `iter_frames`, vision.preprocess=fast):
frames are scaled by FFmpeg's swscale straight from the decoder's YUV planes to the target size, so a
4K frame never exists as a full-size RGB array (DESIGN.md invariant 3), and only the frames a segment
asks for are converted. Both decoders pick frames with the same rule (`select_frames`):

    for a requested time t (seconds from the first frame), take the last frame whose presentation
    time is <= t + 1 ms, i.e. the frame on screen at t. Times before the first frame give the first
    frame; times past the end repeat the last frame.

Display rotation (phone videos store portrait as landscape pixels plus a 90/180/270 degree display
matrix) is applied, so `size` and the output are in display orientation.
"""

from __future__ import annotations

import bisect
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from foley_dist.errors import FoleyError
from foley_dist.media import mediaguard
from foley_dist.media.segments import Segment

Mode = Literal["resize", "center_crop"]
Decoder = Literal["pyav", "decord"]

DEFAULT_DECODER: Decoder = "pyav"  # scripts/bench_decode.py: as fast as decord or faster, half its peak RSS
TIME_TOLERANCE = 1e-3  # s: absorbs timestamp rounding (decord reports float32 times)
_OPEN_TIMEOUT = 10.0  # s: av.open on a stalled or hostile input fails instead of hanging
_INTERPOLATION = "BILINEAR"  # what decord's scaler uses: the two decoders agree to ~0.2/255 on average
PYAV_THREAD_TYPE = "AUTO"  # frame + slice threads; scripts/bench_decode.py compares the settings
_NOT_VIDEO_FORMATS = {"tty": "a text file"}  # FFmpeg "decodes" .txt files as ANSI art

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    """What the planner needs to know about the input; width/height are display size (after rotation)."""

    path: str
    duration: float
    fps: float
    width: int
    height: int
    rotation: int  # degrees counter-clockwise applied for display: 0, 90, 180 or 270
    num_frames: int  # from the container header when present, else duration * fps
    has_audio: bool
    codec: str


def _check_file(path: str | os.PathLike) -> str:
    """Reject what FFmpeg would misreport (or block on, for pipes and devices) before opening it."""
    p = Path(path)
    if not p.exists():
        raise FoleyError(f"video file not found: {p}; check the path")
    if p.is_dir():
        raise FoleyError(f"{p} is a directory, not a video file; pass the path of a video file")
    st = p.stat()
    if not stat.S_ISREG(st.st_mode):
        raise FoleyError(f"{p} is not a regular file (pipe, socket or device); pass a video file on disk")
    if st.st_size == 0:
        raise FoleyError(f"{p} is empty (0 bytes); re-export or re-download the video")
    return str(p)


def _open(path: str) -> av.container.InputContainer:
    try:
        container = av.open(path, timeout=(_OPEN_TIMEOUT, None))
    except av.FFmpegError as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise FoleyError(
            f"cannot read {path} as a video ({reason}): the file is corrupt, truncated or not a media file; "
            "re-encode it (e.g. to H.264 MP4) or pass another file"
        ) from None
    except OSError as e:
        raise FoleyError(f"cannot open {path}: {e.strerror or e}; check that the file is readable") from None
    name = container.format.name
    kind = _NOT_VIDEO_FORMATS.get(name) or ("a still image" if name == "image2" or name.endswith("_pipe") else None)
    if kind is not None:
        container.close()
        raise FoleyError(f"{path} is {kind}, not a video (detected format '{name}'); pass a video file")
    return container


def _video_stream(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
    if container.streams.video:
        return container.streams.video[0]
    if container.streams.audio:
        codecs = ", ".join(s.codec_context.name for s in container.streams.audio)
        raise FoleyError(f"{path} has no video stream (audio only: {codecs}); pass a video file, not an audio file")
    raise FoleyError(f"{path} has no video stream (no streams at all); the file is truncated or empty, re-encode it")


def _first_frame(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: str
) -> av.VideoFrame:
    """Decode one frame: the cheapest proof that the stream is decodable, and the source of its rotation."""
    with mediaguard.media_errors(path):
        frame = next(mediaguard.decode(container, stream), None)
    if frame is None:
        raise FoleyError(f"{path}: the video stream has no frames; the file is empty or truncated, re-encode it")
    return frame


def _rotation(frame: av.VideoFrame) -> int:
    """Display rotation rounded to a quarter turn, in [0, 360)."""
    return int(round((frame.rotation or 0) / 90.0)) % 4 * 90


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read the header and the first frame; every unusable input becomes a one-line `FoleyError`."""
    path = _check_file(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        rotation = _rotation(_first_frame(container, stream, path))
        duration = _duration(container, stream)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else (stream.frames / duration if stream.frames and duration else 0.0)
        if not duration > 0 or not fps > 0:
            raise FoleyError(
                f"{path}: the video has no duration or frame rate in its header; "
                "remux or re-encode it (e.g. to H.264 MP4)"
            )
        width, height = stream.codec_context.width, stream.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(
            path=path,
            duration=duration,
            fps=fps,
            width=width,
            height=height,
            rotation=rotation,
            num_frames=stream.frames or round(duration * fps),
            has_audio=bool(container.streams.audio),
            codec=stream.codec_context.name,
        )


def sample_times(segment: Segment, fps: float) -> list[float]:
    """The segment's frame times at `fps`: start + k / fps, for a fixed count round(seconds * fps)."""
    return [segment.start + k / fps for k in range(round(segment.seconds * fps))]


def select_frames(frame_times: Sequence[float], times: Sequence[float]) -> list[int]:
    """The frame-selection rule (module docstring) over known, increasing frame times."""
    last = len(frame_times) - 1
    return [min(last, max(0, bisect.bisect_right(frame_times, t + TIME_TOLERANCE) - 1)) for t in times]


def _scaled_size(width: int, height: int, size: tuple[int, int], mode: Mode) -> tuple[int, int]:
    """(height, width) to scale the displayed frame to: the target itself for `resize`; for `center_crop`
    the smallest aspect-preserving size covering the target, cropped afterwards."""
    out_h, out_w = size
    if mode == "resize":
        return out_h, out_w
    scale = max(out_h / height, out_w / width)
    return max(out_h, round(height * scale)), max(out_w, round(width * scale))


def _center_crop(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    out_h, out_w = size
    top, left = (frames.shape[-2] - out_h) // 2, (frames.shape[-1] - out_w) // 2
    return frames[..., top : top + out_h, left : left + out_w]


def _check_args(size: tuple[int, int], mode: str, decoder: str) -> None:
    if mode not in ("resize", "center_crop"):
        raise FoleyError(f"unknown frame mode {mode!r}; use 'resize' or 'center_crop'")
    if decoder not in ("pyav", "decord"):
        raise FoleyError(f"unknown video decoder {decoder!r}; use 'pyav' or 'decord'")
    if len(size) != 2 or min(size) <= 0:
        raise FoleyError(f"frame size {size} must be (height, width) with both > 0")


def decode_segment(
    path: str | os.PathLike,
    times: Sequence[float],
    size: tuple[int, int],
    mode: Mode = "resize",
    decoder: Decoder = DEFAULT_DECODER,
    info: VideoInfo | None = None,
) -> torch.Tensor:
    """Frames at `times` (seconds, any order) as uint8 [T, 3, H, W] with (H, W) = `size`, in display
    orientation. `resize` stretches the whole frame to `size` (SigLIP); `center_crop` scales the short
    side to cover `size` and crops the centre (Synchformer). Only the frames from the keyframe before
    the earliest time to the one after the latest time are decoded. `info` (from `probe`) saves the
    decord path a probe; PyAV is used when decord is missing or cannot open the file."""
    _check_args(size, mode, decoder)
    path = _check_file(path)
    if len(times) == 0:
        return torch.empty(0, 3, *size, dtype=torch.uint8)
    with mediaguard.media_errors(path):
        if decoder == "decord":
            frames = _decode_decord(path, times, size, mode, info or probe(path))
            if frames is not None:
                return frames
        return _decode_pyav(path, times, size, mode)


# --- PyAV: seek once, decode forward, convert only the chosen frames --------------------------------


def _to_tensor(frame: av.VideoFrame, size: tuple[int, int], mode: Mode, scaler: VideoReformatter) -> torch.Tensor:
    """Scale a decoded frame to the target in one swscale call (no full-size RGB), then rotate and crop.
    One `scaler` per segment keeps swscale's context (filters, threads) instead of rebuilding it per frame."""
    k = _rotation(frame) // 90
    width, height = (frame.height, frame.width) if k % 2 else (frame.width, frame.height)
    out_h, out_w = _scaled_size(width, height, size, mode)
    coded_h, coded_w = (out_w, out_h) if k % 2 else (out_h, out_w)
    scaled = scaler.reformat(frame, width=coded_w, height=coded_h, format="rgb24", interpolation=_INTERPOLATION)
    image = torch.from_numpy(scaled.to_ndarray()).permute(2, 0, 1)
    if k:
        image = torch.rot90(image, k, dims=(1, 2))  # counter-clockwise, as the display matrix says
    return _center_crop(image, size) if mode == "center_crop" else image


def _timed(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Iterator[tuple[float, av.VideoFrame]]:
    for frame in mediaguard.decode(container, stream):  # skips and counts damaged packets
        yield mediaguard.frame_span(frame, stream)[0], frame


def _frames_from(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, start: float
) -> Iterator[tuple[float, av.VideoFrame]]:
    """(seconds from the first frame, frame) in presentation order from the keyframe at or before
    `start`; falls back to decoding from the beginning if the seek lands after `start`."""
    if start > TIME_TOLERANCE:
        target = (stream.start_time or 0) + int((start + TIME_TOLERANCE) / stream.time_base)
        container.seek(target, stream=stream, backward=True)
        frames = _timed(container, stream)
        first = next(frames, None)
        if first is not None and first[0] <= start + TIME_TOLERANCE:
            yield first
            yield from frames
            return
        container.seek(stream.start_time or 0, stream=stream, backward=True)
    yield from _timed(container, stream)


def _pick(
    frames: Iterator[tuple[float, av.VideoFrame]],
    times: Sequence[float],
    convert: Callable[[av.VideoFrame], torch.Tensor],
) -> Iterator[torch.Tensor]:
    """`select_frames` applied while streaming over increasing `times`: each source frame is converted
    at most once and released when the next one arrives, so one decoded frame is held at a time."""
    count = 0
    held: av.VideoFrame | None = None
    image: torch.Tensor | None = None
    for t, frame in frames:
        while count < len(times) and times[count] + TIME_TOLERANCE < t:
            if held is None:  # times before the first frame get the first frame
                held = frame
            if image is None:
                image = convert(held)
            yield image
            count += 1
        if count == len(times):
            return
        if frame is not held:
            held, image = frame, None
    if held is None:
        return
    image = image if image is not None else convert(held)
    for _ in range(len(times) - count):  # past the end: repeat the last frame
        yield image


def _absolute_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, start: float
) -> Iterator[tuple[float, av.VideoFrame]]:
    """(frame.time, frame) in presentation order from the keyframe at or before `start` (absolute
    stream seconds, as the release compares them); from the beginning if the seek lands after it.
    Damaged packets are skipped and counted (mediaguard.decode)."""
    frames = ((f.time, f) for f in mediaguard.decode(container, stream) if f.time is not None)
    if start > 0:
        container.seek(int(start / stream.time_base), stream=stream, backward=True)
        first = next(frames, None)
        if first is not None and first[0] <= start:
            yield first
            yield from frames
            return
        container.seek(stream.start_time or 0, stream=stream, backward=True)
        frames = ((f.time, f) for f in mediaguard.decode(container, stream) if f.time is not None)
    yield from frames


def release_frames(
    path: str | os.PathLike, start: float, end: float, rates: Sequence[float], stop: Callable[[], bool] = lambda: False
) -> Iterator[tuple[float, av.VideoFrame, tuple[int, ...]]]:
    """The release's frame choice (`get_frames_av`) for several rates in one decoding pass.

    Per rate a target time starts at `start` and is advanced by `+= 1 / rate` in float64 (accumulated,
    so it drifts from k / rate); every decoded frame with time t (absolute stream seconds; t < 0
    skipped) is taken while t >= target, possibly several times. Frames at or after `end` stop the
    search (the release stops after 15 s; a one-pass clip ends before that). Yields (t, decoded frame,
    picks per rate) for each frame taken at least once, still in the decoder's format, so the caller
    decides where (which thread) the full-size RGB conversion runs; `stop()` true ends the decoding
    early (a closing vision stage). Display rotation is not applied (the release does not apply it)."""
    path = _check_file(path)
    steps = [1 / r for r in rates]
    targets = [float(start)] * len(rates)
    with mediaguard.media_errors(path), _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = PYAV_THREAD_TYPE
        # a segment without any decodable frame fails (as on the fast path) instead of going silent
        for t, frame in mediaguard.check_window(_absolute_frames(container, stream, start), start, end, path, stream):
            if t < 0:
                continue
            if t >= end or stop():
                return
            counts = []
            for k, step in enumerate(steps):
                n = 0
                while t >= targets[k]:
                    targets[k] += step
                    n += 1
                counts.append(n)
            if any(counts):
                yield t, frame, tuple(counts)


def rgb24(frame: av.VideoFrame) -> np.ndarray:
    """Full-size RGB uint8 [H, W, 3], exactly as the release converts (`frame.to_ndarray(format="rgb24")`)."""
    return frame.to_ndarray(format="rgb24")


def release_picks(
    path: str | os.PathLike, start: float, end: float, rates: Sequence[float]
) -> Iterator[tuple[float, np.ndarray, tuple[int, ...]]]:
    """`release_frames` with each frame as full-size RGB (`rgb24`): one full-size frame exists at a time."""
    for t, frame, counts in release_frames(path, start, end, rates):
        yield t, rgb24(frame), counts


def iter_frames(path: str | os.PathLike, times: Sequence[float], size: tuple[int, int], mode: Mode = "resize") -> Iterator[torch.Tensor]:
    """Frames at increasing `times` as uint8 [3, H, W], one at a time, decoded in one forward pass
    with PyAV (same selection rule as `decode_segment`): for consumers, such as tiled encoding, that
    must not hold a segment of frames at their working size."""
    if list(times) != sorted(times):
        raise ValueError("iter_frames needs increasing times")
    path = _check_file(path)
    if not times:
        return
    with mediaguard.media_errors(path), _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = PYAV_THREAD_TYPE
        scaler = VideoReformatter()
        frames = mediaguard.check_window(_frames_from(container, stream, times[0]), times[0], times[-1], path, stream)
        yield from _pick(frames, times, lambda f: _to_tensor(f, size, mode, scaler))


def _decode_pyav(path: str, times: Sequence[float], size: tuple[int, int], mode: Mode) -> torch.Tensor:
    order = sorted(range(len(times)), key=lambda i: times[i])
    images = list(iter_frames(path, [times[i] for i in order], size, mode))
    out: list[torch.Tensor] = [images[0]] * len(times)
    for rank, i in enumerate(order):
        out[i] = images[rank]
    return torch.stack(out)


# --- decord: index the file, pick frame indices by timestamp, fetch them at the target size ---------


def _decode_decord(
    path: str, times: Sequence[float], size: tuple[int, int], mode: Mode, info: VideoInfo
) -> torch.Tensor | None:
    """None when decord is missing or cannot open the file (the caller falls back to PyAV). decord
    rotates by the display matrix itself and takes the output size in display orientation."""
    try:
        import decord
    except ImportError:
        return None
    out_h, out_w = _scaled_size(info.width, info.height, size, mode)
    try:
        reader = decord.VideoReader(path, width=out_w, height=out_h, num_threads=0)
    except (decord.DECORDError, RuntimeError) as e:
        log.warning("decord cannot open %s (%s); decoding with PyAV", path, str(e).splitlines()[0] if str(e) else e)
        return None
    starts = reader.get_frame_timestamp(range(len(reader)))[:, 0].astype(np.float64)
    indices = select_frames((starts - starts[0]).tolist(), times)
    unique = sorted(set(indices))
    row = {index: k for k, index in enumerate(unique)}
    try:
        batch = torch.from_numpy(reader.get_batch(unique).asnumpy()).permute(0, 3, 1, 2)
    except (decord.DECORDError, RuntimeError) as e:  # damaged packets: PyAV skips them, decord gives up
        log.warning("decord cannot decode %s (%s); decoding with PyAV", path, str(e).splitlines()[0] if str(e) else e)
        return None
    frames = batch[[row[i] for i in indices]]
    return (_center_crop(frames, size) if mode == "center_crop" else frames).contiguous()
