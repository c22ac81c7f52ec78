"""Atomic audio/JSON writing and stream-copy muxing with PyAV."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from foley_dist.audio.output import AudioWriter, mux, write_json_atomic
from foley_dist.errors import FoleyError

SR = 16000
FPS = 25


def _wave(n: int, seed: int = 0) -> np.ndarray:
    return (0.5 * np.random.default_rng(seed).standard_normal(n)).clip(-1, 1).astype(np.float32)


def test_wav_roundtrip_is_bit_exact_and_atomic(tmp_path):
    path = tmp_path / "sub" / "out.wav"
    wave = _wave(3 * SR)
    with AudioWriter(path, SR) as writer:
        writer.write(wave[:SR])
        writer.write(torch.from_numpy(wave[SR:]))
        assert not path.exists()
        assert writer.tmp.exists() and writer.tmp.name == f".out.wav.{os.getpid()}.tmp"
    data, sr = sf.read(path, dtype="float32")
    assert sr == SR and sf.info(path).subtype == "FLOAT"
    np.testing.assert_array_equal(data, wave)
    assert os.listdir(path.parent) == ["out.wav"]


def test_flac_roundtrip_is_24_bit_and_clipped(tmp_path):
    path = tmp_path / "out.flac"
    wave = _wave(SR)
    wave[:10] = 1.5  # out of range: must clip, not wrap around
    with AudioWriter(path, SR) as writer:
        writer.write(wave)
    data, _ = sf.read(path, dtype="float32")
    assert sf.info(path).subtype == "PCM_24"
    np.testing.assert_allclose(data[:10], 1.0, atol=1e-6)
    np.testing.assert_allclose(data[10:], wave[10:], atol=2.0**-22)


def test_abort_on_exception_leaves_nothing(tmp_path):
    path = tmp_path / "out.wav"
    with pytest.raises(RuntimeError, match="boom"):
        with AudioWriter(path, SR) as writer:
            writer.write(_wave(100))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_bad_extension(tmp_path):
    with pytest.raises(FoleyError, match=r"\.wav, \.flac"):
        AudioWriter(tmp_path / "out.mp3", SR)
    with pytest.raises(FoleyError, match=r"\.mp4, \.mov, \.mkv"):
        mux(tmp_path / "v.mp4", tmp_path / "a.wav", tmp_path / "out.avi")


def test_write_json_atomic(tmp_path):
    path = tmp_path / "a" / "report.json"
    write_json_atomic(path, {"x": [1, 2.5]})
    write_json_atomic(path, {"x": 3})
    assert json.loads(path.read_text()) == {"x": 3}
    assert os.listdir(path.parent) == ["report.json"]


def _make_video(path: Path, seconds: float = 1.0) -> None:
    """Tiny mpeg4 clip with its own (silent) AAC track, which mux must drop."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=44100)
        for i in range(round(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * i, np.uint8), format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        silence = av.AudioFrame.from_ndarray(np.zeros((1, 44100), np.float32), format="fltp", layout="mono")
        silence.sample_rate, silence.pts = 44100, 0
        out.mux(audio.encode(silence))
        out.mux(audio.encode(None))


def _video_payloads(path: Path) -> list[tuple[bytes, float]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [(bytes(p), float(p.pts * p.time_base)) for p in container.demux(stream) if p.size]


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_mux_copies_video_and_replaces_audio(tmp_path, ext):
    video, audio, out = tmp_path / "in.mp4", tmp_path / "gen.wav", tmp_path / "res" / f"out.{ext}"
    _make_video(video)
    sf.write(audio, 0.3 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR).astype(np.float32), SR, subtype="FLOAT")
    mux(video, audio, out)

    assert _video_payloads(out) == _video_payloads(video)
    with av.open(str(out)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac" and stream.sample_rate == SR
        last = max(p.pts + p.duration for p in container.demux(stream) if p.size)
    # Encoder priming sits at negative pts; mkv keeps the last AAC frame's padding (<= 1024 samples).
    assert abs(float(last * stream.time_base) - 1.0) <= 1 / FPS
    assert os.listdir(out.parent) == [out.name]


def test_mux_errors_are_foley_errors(tmp_path):
    audio = tmp_path / "gen.wav"
    sf.write(audio, np.zeros(SR, np.float32), SR)
    with pytest.raises(FoleyError, match="no video stream"):
        mux(audio, audio, tmp_path / "out.mp4")
    with pytest.raises(FoleyError, match="cannot mux"):
        mux(tmp_path / "missing.mp4", audio, tmp_path / "out.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.wav"]
