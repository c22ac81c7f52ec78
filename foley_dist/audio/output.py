"""Writing results: streaming audio files, JSON reports and the muxed video, all atomically.

Every output is written to a hidden temp file in the destination directory, fsynced, then renamed
over the final path, so a crash or Ctrl-C never leaves a truncated file under the name a user (or a
batch job checking for existing outputs) would trust.

Formats:
- `.wav` is IEEE float32 (subtype FLOAT): the stitched waveform is float32, so this keeps it
  bit-exact (parallel-equals-serial checks compare files) and keeps peaks above 0 dBFS instead of
  clipping them.
- `.flac` is PCM_24 (FLAC has no float mode); samples are clipped to [-1, 1] first, since integer
  conversion of out-of-range floats would wrap around.
- Muxed video: the video stream is packet-copied (never re-encoded, so no quality loss and no codec
  settings to choose); the audio is always encoded to AAC, which every target container
  (mp4/mov/mkv) and player accepts. Audio, subtitle and data tracks of the source are dropped.
"""

from __future__ import annotations

import heapq
import json
import os
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np
import soundfile as sf
import torch

from foley_dist.errors import FoleyError

MARK = "foley_dist"  # tags every file written here: outpaths.py may replace a marked file, never another
AUDIO_FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24")}
VIDEO_CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
AAC_BIT_RATE = 192_000
_LAYOUTS = {1: "mono", 2: "stereo"}


def _temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.tmp"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    """fsync the temp file, rename it over `path`, fsync the directory so the rename survives a crash."""
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def _suffix(path: Path, allowed: dict[str, Any], what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise FoleyError(f"unsupported {what} extension {path.suffix!r} in {path}; use one of {', '.join(allowed)}")
    return suffix


class AudioWriter:
    """Streaming, atomic audio file writer; the format follows the extension (.wav float32, .flac 24-bit)."""

    def __init__(self, path: str | os.PathLike, sample_rate: int, channels: int = 1):
        self.path = Path(path)
        fmt, self.subtype = AUDIO_FORMATS[_suffix(self.path, AUDIO_FORMATS, "audio")]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _temp_path(self.path)
        self.frames = 0
        self._file = sf.SoundFile(
            self.tmp, "w", samplerate=sample_rate, channels=channels, format=fmt, subtype=self.subtype
        )
        self._file.software = MARK

    def write(self, chunk: np.ndarray | torch.Tensor) -> None:
        """Append samples: shape (n,) for mono or (n, channels)."""
        if isinstance(chunk, torch.Tensor):
            chunk = chunk.detach().to("cpu", torch.float32).numpy()
        chunk = np.asarray(chunk, dtype=np.float32)
        if self.subtype != "FLOAT":
            chunk = np.clip(chunk, -1.0, 1.0)
        self._file.write(chunk)
        self.frames += len(chunk)

    def close(self) -> None:
        self._file.close()
        _commit(self.tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "AudioWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _aac_packets(audio: sf.SoundFile, stream: av.audio.stream.AudioStream, block: int) -> Iterator[av.Packet]:
    """Encode the audio file block by block (bounded memory); the encoder re-chunks to AAC frames."""
    pts = 0
    for data in audio.blocks(blocksize=block, dtype="float32", always_2d=True):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.T), format="fltp", layout=stream.layout.name)
        frame.sample_rate = audio.samplerate
        frame.pts = pts
        pts += len(data)
        yield from stream.encode(frame)
    yield from stream.encode(None)


def _video_packets(
    source: av.container.InputContainer, stream: av.video.stream.VideoStream, out_stream: av.video.stream.VideoStream
) -> Iterator[av.Packet]:
    """Demuxed packets re-addressed to the output stream; timestamps are rebased by `mux`."""
    for packet in source.demux(stream):
        if packet.dts is not None:  # the demuxer's final flush packet carries no data
            packet.stream = out_stream
            yield packet


def _seconds(packet: av.Packet) -> float:
    return float(packet.dts * packet.time_base)


def mux(video_path: str | os.PathLike, audio_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    """Write `out_path`: the video's picture stream copied bit-for-bit plus `audio_path` as its only audio (AAC)."""
    out_path = Path(out_path)
    container_format = VIDEO_CONTAINERS[_suffix(out_path, VIDEO_CONTAINERS, "video output")]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(out_path)
    try:
        with av.open(str(video_path)) as source, sf.SoundFile(audio_path) as audio:
            if not source.streams.video:
                raise FoleyError(f"{video_path} has no video stream to mux audio into")
            if audio.channels not in _LAYOUTS:
                raise FoleyError(f"{audio_path} has {audio.channels} channels; muxing supports mono or stereo audio")
            in_video = source.streams.video[0]
            with av.open(str(tmp), "w", format=container_format) as out:
                out.metadata["comment"] = MARK
                out_video = out.add_stream_from_template(in_video)
                out_audio = out.add_stream("aac", rate=audio.samplerate)
                out_audio.layout = _LAYOUTS[audio.channels]
                out_audio.bit_rate = AAC_BIT_RATE
                video_packets = _video_packets(source, in_video, out_video)
                audio_packets = _aac_packets(audio, out_audio, audio.samplerate)
                # Interleave by time so the muxer never buffers one stream while waiting for the other.
                for packet in heapq.merge(video_packets, audio_packets, key=_seconds):
                    out.mux(packet)
        _commit(tmp, out_path)
    except (av.FFmpegError, sf.LibsndfileError) as exc:
        raise FoleyError(f"cannot mux {video_path} with {audio_path} into {out_path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def save_array_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """A .npy file that either exists whole or not at all (the resume state of finished segments)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    with open(tmp, "wb") as f:
        np.save(f, array)
    _commit(tmp, path)


def save_tensors_atomic(path: str | os.PathLike, tensors: dict) -> None:
    """A .safetensors file (CPU, contiguous copies) that either exists whole or not at all."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp))
    _commit(tmp, path)


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _commit(tmp, path)


def append_line(path: str | os.PathLike, obj: dict) -> None:
    """Append one JSON line and fsync: a journal whose complete lines survive any crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())
