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
) -> Path:
    """Write a clip of moving shapes with each frame's index stamped in it. `rotation` (degrees,
    counter-clockwise, multiple of 90) is stored as display-matrix metadata; the pixels stay landscape."""
    rate = Fraction(fps).limit_denominator(1001)
    count = max(1, round(seconds * rate))
    drawer = _FrameDrawer(width, height, rate, seed)
    with _atomic(path) as tmp, av.open(tmp, "w") as container:
        video = container.add_stream(codec, rate=rate, options=_encoder_options(codec))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.gop_size = max(1, round(2 * rate))  # a keyframe every 2 s, so seeking matters
        if rotation:
            video.set_display_rotation(rotation)
        audio = _add_audio(container, "aac") if with_audio else None
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(drawer.draw(i), format="yuv420p")
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
