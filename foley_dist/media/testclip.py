"""Deterministic synthetic media for tests and benchmarks, written with PyAV (no ffmpeg binary).

Frames are drawn straight into YUV 4:2:0 planes with numpy slicing (no RGB frame and no colour
conversion per frame), so a 12 s 4K clip encodes in well under a minute on two cores. Every frame
carries its index as a binary stamp (`read_stamp`) so tests can check which source frame a decoder
returned after resizing or centre cropping.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import torch

STAMP_BITS = 12  # frame indices up to 4095 (2:43 at 25 fps)
_BLACK, _WHITE = 16, 235  # limited-range luma: survives compression and rescaling
AUDIO_RATE = 16_000


@contextlib.contextmanager
def _atomic(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path next to `path` (same suffix, so the muxer is the same); rename it on success."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield str(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Shape:
    """A box or disc bouncing around the frame; positions are a pure function of time (deterministic)."""

    disc: bool
    size: float  # fraction of the short side
    yuv: tuple[int, int, int]
    x0: float
    y0: float
    vx: float  # frame widths per second
    vy: float

    def box(self, t: float, width: int, height: int) -> tuple[int, int, int]:
        """(x, y, side) of the bounding square at time t, all even."""
        side = max(2, int(self.size * min(width, height))) & ~1
        x = _bounce(self.x0 + self.vx * t) * (width - side)
        y = _bounce(self.y0 + self.vy * t) * (height - side)
        x, y = int(x) & ~1, int(y) & ~1  # even, so the chroma box is exactly half the luma box
        return x, y, side


def _bounce(u: float) -> float:
    """Triangle wave in [0, 1]."""
    u = u % 2.0
    return u if u <= 1.0 else 2.0 - u


def _shapes(seed: int, count: int = 4) -> list[_Shape]:
    rng = np.random.default_rng(seed)
    return [
        _Shape(
            disc=bool(k % 2),
            size=float(rng.uniform(0.12, 0.3)),
            yuv=(int(rng.integers(60, 200)), int(rng.integers(40, 216)), int(rng.integers(40, 216))),
            x0=float(rng.uniform(0, 2)),
            y0=float(rng.uniform(0, 2)),
            vx=float(rng.uniform(0.1, 0.4)),
            vy=float(rng.uniform(0.1, 0.4)),
        )
        for k in range(count)
    ]


def _disc_mask(side: int) -> np.ndarray:
    r = (np.arange(side) - (side - 1) / 2) / (side / 2)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= 1.0


class _FrameDrawer:
    """Draws frame i into one reused yuv420p buffer (the layout `VideoFrame.from_ndarray` expects)."""

    def __init__(self, width: int, height: int, fps: Fraction, seed: int):
        if width % 2 or height % 2 or width < 16 or height < 16:
            raise ValueError(f"width and height must be even and >= 16, got {width}x{height}")
        self.width, self.height, self.fps = width, height, fps
        self.shapes = _shapes(seed)
        self.buf = np.empty(width * height * 3 // 2, np.uint8)
        n, q = width * height, width * height // 4
        self.y = self.buf[:n].reshape(height, width)
        self.u = self.buf[n : n + q].reshape(height // 2, width // 2)
        self.v = self.buf[n + q :].reshape(height // 2, width // 2)
        xs, ys = np.linspace(0, 1, width, dtype=np.float32), np.linspace(0, 1, height, dtype=np.float32)
        self.y_bg = (40 + 60 * xs[None, :] + 60 * ys[:, None]).astype(np.uint8)
        self.u_bg = (96 + 64 * xs[None, ::2]).astype(np.uint8)  # broadcast over rows on assignment
        self.v_bg = (160 - 64 * ys[::2, None]).astype(np.uint8)  # broadcast over columns
        self.masks: dict[int, np.ndarray] = {}  # disc masks by side length

    def draw(self, index: int) -> np.ndarray:
        t = index / self.fps
        self.y[:], self.u[:], self.v[:] = self.y_bg, self.u_bg, self.v_bg
        for shape in self.shapes:
            x, y, s = shape.box(float(t), self.width, self.height)
            self._fill(self.y, (y, x, s), shape.yuv[0], shape.disc)
            self._fill(self.u, (y // 2, x // 2, s // 2), shape.yuv[1], shape.disc)
            self._fill(self.v, (y // 2, x // 2, s // 2), shape.yuv[2], shape.disc)
        self._stamp(index)
        return self.buf.reshape(self.height * 3 // 2, self.width)

    def _fill(self, plane: np.ndarray, box: tuple[int, int, int], value: int, disc: bool) -> None:
        y, x, s = box
        region = plane[y : y + s, x : x + s]
        if not disc:
            region[:] = value
            return
        if s not in self.masks:
            self.masks[s] = _disc_mask(s)
        region[self.masks[s]] = value

    def _stamp(self, index: int) -> None:
        """Bits of `index`, top to bottom, in a vertical strip at the horizontal centre. Resizing and
        centre-cropping a landscape frame both keep the full height and the centre column, so the
        stamp reads back the same way from either view."""
        x0, x1 = (self.width * 15 // 32) & ~1, (self.width * 17 // 32) & ~1
        self.u[:, x0 // 2 : x1 // 2] = self.v[:, x0 // 2 : x1 // 2] = 128
        for b, (r0, r1) in enumerate(_stamp_rows(self.height)):
            self.y[r0:r1, x0:x1] = _WHITE if index >> b & 1 else _BLACK


def _stamp_rows(height: int) -> list[tuple[int, int]]:
    return [(height * b // STAMP_BITS, height * (b + 1) // STAMP_BITS) for b in range(STAMP_BITS)]


def read_stamp(frame: torch.Tensor) -> int:
    """Frame index stamped by `make_clip`, from a decoded [3, H, W] uint8 frame of a landscape or
    square clip (resized or centre-cropped, not rotated)."""
    luma = frame.float().mean(0)
    height, width = luma.shape
    half = max(1, width // 64)
    column = luma[:, width // 2 - half : width // 2 + half].mean(1)
    index = 0
    for b, (r0, r1) in enumerate(_stamp_rows(height)):
        pad = (r1 - r0) // 4
        if column[r0 + pad : r1 - pad].mean() > (_BLACK + _WHITE) / 2:
            index |= 1 << b
    return index


def _encoder_options(codec: str) -> dict[str, str]:
    if codec == "h264":
        return {"preset": "ultrafast", "crf": "20"}
    if codec == "mpeg4":
        return {"qscale": "4"}
    raise ValueError(f"codec must be 'h264' or 'mpeg4', got {codec!r}")


def _tone(seconds: float, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate), dtype=np.float32) / sample_rate
    return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def _add_audio(container: av.container.OutputContainer, codec: str) -> av.audio.stream.AudioStream:
    return container.add_stream(codec, rate=AUDIO_RATE, layout="mono")


def _mux_audio(
    container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, samples: np.ndarray
) -> None:
    fmt = stream.codec_context.format.name
    chunk = stream.codec_context.frame_size or 1024
    for start in range(0, len(samples), chunk):
        block = samples[start : start + chunk]
        if fmt == "s16":
            block = (block * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(block[None, :], format=fmt, layout="mono")
        frame.sample_rate, frame.pts = AUDIO_RATE, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def make_clip(
    path: str | os.PathLike,
    seconds: float,
    width: int,
    height: int,
    fps: float = 25,
    seed: int = 0,
    codec: str = "h264",
    with_audio: bool = False,
    rotation: int = 0,
    pix_fmt: str = "yuv420p",
    faststart: bool = False,
) -> Path:
    """Write a clip of moving shapes with each frame's index stamped in it. `rotation` (degrees,
    counter-clockwise, multiple of 90) is stored as display-matrix metadata; the pixels stay landscape.
    `pix_fmt` other than yuv420p (e.g. yuv420p10le) converts each frame; `faststart` puts an MP4's
    index before its data, as streaming exports do."""
    rate = Fraction(fps).limit_denominator(1001)
    count = max(1, round(seconds * rate))
    drawer = _FrameDrawer(width, height, rate, seed)
    options = {"movflags": "faststart"} if faststart else {}
    with _atomic(path) as tmp, av.open(tmp, "w", options=options) as container:
        video = container.add_stream(codec, rate=rate, options=_encoder_options(codec))
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.codec_context.gop_size = max(1, round(2 * rate))  # a keyframe every 2 s, so seeking matters
        if rotation:
            video.set_display_rotation(rotation)
        audio = _add_audio(container, "aac") if with_audio else None
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(drawer.draw(i), format="yuv420p")
            if pix_fmt != "yuv420p":
                frame = frame.reformat(format=pix_fmt)
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            _mux_audio(container, audio, _tone(count / rate))
    return Path(path)


def make_audio_only(path: str | os.PathLike, seconds: float) -> Path:
    """A file with one audio stream (440 Hz tone) and no video: PCM for .wav, AAC otherwise."""
    codec = "pcm_s16le" if Path(path).suffix.lower() == ".wav" else "aac"
    with _atomic(path) as tmp, av.open(tmp, "w") as container:
        _mux_audio(container, _add_audio(container, codec), _tone(seconds))
    return Path(path)


def make_corrupt(path: str | os.PathLike, size: int = 64 * 1024, seed: int = 0) -> Path:
    """Random bytes under a video file name."""
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    with _atomic(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def make_empty(path: str | os.PathLike) -> Path:
    """A zero-length file under a video file name."""
    with _atomic(path) as tmp:
        Path(tmp).write_bytes(b"")
    return Path(path)


def make_no_frames(path: str | os.PathLike, width: int = 64, height: int = 64) -> Path:
    """A valid container whose video stream has no frames."""
    with _atomic(path) as tmp, av.open(tmp, "w") as container:
        video = container.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        container.start_encoding()  # writes the header; no packet ever follows
    return Path(path)


def make_plain(path: str | os.PathLike, seconds: float, width: int, height: int, fps: float = 24,
               times: list[float] | None = None) -> Path:
    """Lossless (FFV1, 4:4:4) clip of any size, 1x1 and odd sizes included, whose brightness ramps with
    time. `times` (seconds) gives frames irregular timestamps: a variable frame rate stream."""
    times = times if times is not None else [i / fps for i in range(max(1, round(seconds * fps)))]
    with _atomic(path) as tmp, av.open(tmp, "w") as container:
        video = container.add_stream("ffv1", rate=round(fps))
        video.width, video.height, video.pix_fmt = width, height, "yuv444p"
        video.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            rgb = np.full((height, width, 3), int(255 * i / max(1, len(times) - 1)), np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv444p")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    return Path(path)


def damage(src: str | os.PathLike, dst: str | os.PathLike, at: tuple[float, ...] = (0.3, 0.5, 0.7),
           length: int = 2000, seed: int = 0) -> Path:
    """A copy of `src` with `length` random bytes written over it at each fraction `at` of its size."""
    data = bytearray(Path(src).read_bytes())
    rng = np.random.default_rng(seed)
    for fraction in at:
        offset = int(len(data) * fraction)
        data[offset : offset + length] = rng.integers(0, 256, len(data[offset : offset + length]), dtype=np.uint8).tobytes()
    with _atomic(dst) as tmp:
        Path(tmp).write_bytes(bytes(data))
    return Path(dst)


def truncate(src: str | os.PathLike, dst: str | os.PathLike, keep: float | int) -> Path:
    """A copy of `src` cut after `keep` bytes (int) or that fraction of its size (float)."""
    data = Path(src).read_bytes()
    size = keep if isinstance(keep, int) else int(len(data) * keep)
    with _atomic(dst) as tmp:
        Path(tmp).write_bytes(data[:size])
    return Path(dst)


def header_only(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """A faststart MP4 cut right after its index: a valid header and no picture data."""
    data = Path(src).read_bytes()
    return truncate(src, dst, data.index(b"mdat") + 4)


def damaged_cases(folder: str | os.PathLike) -> dict[str, Path]:
    """Odd and damaged media nobody here would export on purpose, built from generated clips: what
    tests/distributed/test_damaged_media.py and scripts/bench_damaged.py run. 12 s sources at 24 fps."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    mp4 = make_clip(d / "src.mp4", 12, 160, 96, 24, seed=1)
    fast = make_clip(d / "src_faststart.mp4", 12, 160, 96, 24, seed=1, faststart=True)
    mkv = make_clip(d / "src.mkv", 12, 160, 96, 24, seed=1)
    ts = make_clip(d / "src.ts", 12, 160, 96, 24, seed=1)
    wrong = d / "wrong_extension.avi"
    wrong.write_bytes(mp4.read_bytes())
    return {
        "clean mp4": mp4,
        "bytes overwritten mp4 (3 places)": damage(mp4, d / "overwritten.mp4"),
        "bytes overwritten mkv (3 places)": damage(mkv, d / "overwritten.mkv"),
        "bytes overwritten ts (3 places)": damage(ts, d / "overwritten.ts"),
        "truncated mp4 at 50% (index at end)": truncate(mp4, d / "trunc50.mp4", 0.5),
        "truncated faststart mp4 at 30%": truncate(fast, d / "trunc30_fast.mp4", 0.3),
        "truncated faststart mp4 at 90%": truncate(fast, d / "trunc90_fast.mp4", 0.9),
        "truncated mkv at 50%": truncate(mkv, d / "trunc50.mkv", 0.5),
        "truncated ts at 50%": truncate(ts, d / "trunc50.ts", 0.5),
        "header only": header_only(fast, d / "header_only.mp4"),
        "zero-length video stream": make_no_frames(d / "no_frames.mp4"),
        "wrong extension": wrong,
        "audio only": make_audio_only(d / "audio_only.m4a", 3),
        "variable frame rate": make_plain(d / "vfr.mkv", 0, 32, 32, times=[i * 0.02 + (i // 2) * 0.06 for i in range(120)]),
        "rotation 90": make_clip(d / "rotated.mp4", 4, 96, 64, 24, seed=2, rotation=90),
        "1x1 frames": make_plain(d / "one_pixel.mkv", 3, 1, 1),
        "odd size 33x17": make_plain(d / "odd.mkv", 3, 33, 17),
        "10-bit h264": make_clip(d / "ten_bit.mp4", 3, 96, 64, 24, seed=3, pix_fmt="yuv420p10le"),
    }
