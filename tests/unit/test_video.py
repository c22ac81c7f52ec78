"""probe / decode_segment on generated clips: fields, one-line errors, frame selection shared by both
decoders (checked through the frame index stamped in every test frame), rotation, bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import pytest
import torch
import torch.nn.functional as F

from foley_dist.errors import FoleyError
from foley_dist.media import testclip, video
from foley_dist.media.segments import Segment

FPS = 25
SECONDS = 4.0  # keyframes every 2 s, so a segment starting at 2.5 s exercises the seek
DECODERS = ["pyav", "decord"]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    testclip.make_clip(root / "clip.mp4", SECONDS, 320, 180, fps=FPS, with_audio=True)
    for degrees in (90, 180, 270):
        testclip.make_clip(root / f"rot{degrees}.mp4", 0.4, 320, 180, fps=FPS, rotation=degrees)
    return root


@pytest.fixture
def clip(media: Path) -> str:
    return str(media / "clip.mp4")


def stamps(frames: torch.Tensor) -> list[int]:
    return [testclip.read_stamp(f) for f in frames]


# --- probe ------------------------------------------------------------------------------------------


def test_probe_fields(clip: str):
    info = video.probe(clip)
    assert info == video.VideoInfo(
        path=clip, duration=SECONDS, fps=FPS, width=320, height=180, rotation=0,
        num_frames=int(SECONDS * FPS), has_audio=True, codec="h264",
    )  # fmt: skip


def test_probe_reports_display_size_of_rotated_video(media: Path):
    info = video.probe(media / "rot90.mp4")
    assert (info.width, info.height, info.rotation, info.has_audio) == (180, 320, 90, False)


def _missing(d: Path) -> Path:
    return d / "nope.mp4"


def _text(d: Path, name: str = "notes.txt") -> Path:
    (d / name).write_text("hello world\nthis is text\n" * 50)  # FFmpeg opens this .txt as ANSI-art video
    return d / name


def _truncated(d: Path) -> Path:
    testclip.make_clip(d / "full.mp4", 1.0, 64, 64)
    (d / "cut.mp4").write_bytes((d / "full.mp4").read_bytes()[:1500])  # moov (at the end) is gone
    return d / "cut.mp4"


def _png(d: Path) -> Path:
    with av.open(str(d / "still.png"), "w") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 16, 16, "rgb24"
        container.mux(stream.encode(av.VideoFrame(16, 16, "rgb24")))
        container.mux(stream.encode(None))
    return d / "still.png"


def _fifo(d: Path) -> Path:
    os.mkfifo(d / "pipe.mp4")  # opening it for reading would block forever
    return d / "pipe.mp4"


BAD_INPUTS = {
    "missing": (_missing, "not found"),
    "directory": (lambda d: d, "is a directory"),
    "text": (_text, "is a text file, not a video"),
    "text_as_mp4": (lambda d: _text(d, "notes.mp4"), "not a media file"),
    "still_image": (_png, "is a still image, not a video"),
    "random_bytes": (lambda d: testclip.make_corrupt(d / "junk.mp4"), "corrupt, truncated or not a media file"),
    "truncated": (_truncated, "corrupt, truncated or not a media file"),
    "zero_length": (lambda d: testclip.make_empty(d / "empty.mp4"), "is empty (0 bytes)"),
    "audio_only": (lambda d: testclip.make_audio_only(d / "tone.m4a", 0.5), "no video stream (audio only: aac)"),
    "audio_only_wav": (lambda d: testclip.make_audio_only(d / "tone.wav", 0.5), "no video stream (audio only"),
    "zero_frames": (lambda d: testclip.make_no_frames(d / "noframes.avi"), "video stream has no frames"),
    "fifo": (_fifo, "not a regular file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_probe_rejects_bad_input_with_one_line(case: str, tmp_path: Path):
    make, problem = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(FoleyError) as err:
        video.probe(path)
    message = str(err.value)
    assert problem in message
    assert str(path) in message or Path(path).name in message
    assert "\n" not in message and ";" in message  # one line: the problem; the fix


def test_decode_of_bad_input_raises_foley_error(tmp_path: Path):
    with pytest.raises(FoleyError, match="corrupt"):
        video.decode_segment(testclip.make_corrupt(tmp_path / "junk.mp4"), [0.0], (32, 32))


# --- frame selection ----------------------------------------------------------------------------------


def test_sample_times():
    times = video.sample_times(Segment(1, 4.0, 9.0), 8.0)
    assert len(times) == 40 and times[0] == 4.0 and times[-1] == pytest.approx(8.875)
    assert len(video.sample_times(Segment(0, 0.0, 5.0), 25.0)) == 125


def test_select_frames_rule():
    frame_times = [k / 25 for k in range(10)]
    # at-or-before with 1 ms tolerance; clamped to the first and the last frame
    times = [-1.0, 0.0, 0.0385, 0.0395, 0.05, 0.36, 5.0]
    assert video.select_frames(frame_times, times) == [0, 0, 0, 1, 1, 9, 9]


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("mode", ["resize", "center_crop"])
def test_decode_shape_and_dtype(clip: str, decoder: str, mode: str):
    frames = video.decode_segment(clip, [0.0, 0.5, 1.0], (40, 56), mode, decoder)
    assert frames.shape == (3, 3, 40, 56) and frames.dtype == torch.uint8 and frames.is_contiguous()
    assert video.decode_segment(clip, [], (40, 56), mode, decoder).shape == (0, 3, 40, 56)


@pytest.mark.parametrize("fps", [8.0, 25.0])
@pytest.mark.parametrize("start", [0.0, 2.5])
def test_decoders_pick_the_same_frames(clip: str, fps: float, start: float):
    times = video.sample_times(Segment(0, start, start + 1.0), fps)
    expected = video.select_frames([k / FPS for k in range(int(SECONDS * FPS))], times)
    pyav = video.decode_segment(clip, times, (64, 64), "center_crop", "pyav")
    decord = video.decode_segment(clip, times, (64, 64), "center_crop", "decord")
    assert stamps(pyav) == stamps(decord) == expected
    assert (pyav.float() - decord.float()).abs().mean() < 1.0  # same scaler family: near-identical pixels


@pytest.mark.parametrize("decoder", DECODERS)
def test_times_past_the_end_repeat_the_last_frame_in_any_order(clip: str, decoder: str):
    last = int(SECONDS * FPS) - 1
    times = [SECONDS + 1.0, 3.9, -0.5, SECONDS, 1.0, SECONDS + 1.0]
    frames = video.decode_segment(clip, times, (64, 64), decoder=decoder)
    assert stamps(frames) == [last, last - 2, 0, last, 25, last]
    assert torch.equal(frames[0], frames[3])


@pytest.mark.parametrize("decoder", DECODERS)
def test_center_crop_is_the_centre_square(clip: str, decoder: str):
    """Against an independent reference: full-size RGB, crop the centre 180x180, antialiased resize."""
    with av.open(clip) as container:
        full = next(container.decode(video=0)).to_ndarray(format="rgb24")
    centre = torch.from_numpy(full).permute(2, 0, 1)[None, :, :, 70:250].float()
    reference = F.interpolate(centre, size=(60, 60), mode="bilinear", antialias=True)[0]
    frames = video.decode_segment(clip, [0.0], (60, 60), "center_crop", decoder)
    assert (frames[0].float() - reference).abs().mean() < 3.0


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_is_applied_counter_clockwise(media: Path, decoder: str, degrees: int):
    """Same seed, same pixels: decoding the rotated clip equals rotating the decoded plain clip."""
    quarter = degrees // 90
    plain_size = (32, 48) if quarter % 2 else (48, 32)
    testclip.make_clip(media / "plain.mp4", 0.4, 320, 180, fps=FPS)
    plain = video.decode_segment(media / "plain.mp4", [0.2], plain_size, "resize", "pyav")
    rotated = video.decode_segment(media / f"rot{degrees}.mp4", [0.2], (48, 32), "resize", decoder)
    expected = torch.rot90(plain, quarter, dims=(2, 3))
    assert (rotated.float() - expected.float()).abs().mean() < 6.0  # a wrong direction gives ~70


def test_decord_failure_falls_back_to_pyav(clip: str, monkeypatch: pytest.MonkeyPatch):
    import decord

    def refuse(*args, **kwargs):
        raise decord.DECORDError("cannot open")

    monkeypatch.setattr(decord, "VideoReader", refuse)
    times = [0.0, 1.0, 2.0]
    fallback = video.decode_segment(clip, times, (32, 32), decoder="decord")
    assert torch.equal(fallback, video.decode_segment(clip, times, (32, 32), decoder="pyav"))


def test_bad_decode_arguments_are_rejected(clip: str):
    with pytest.raises(FoleyError, match="unknown frame mode"):
        video.decode_segment(clip, [0.0], (32, 32), "stretch")  # type: ignore[arg-type]
    with pytest.raises(FoleyError, match="unknown video decoder"):
        video.decode_segment(clip, [0.0], (32, 32), decoder="opencv")  # type: ignore[arg-type]


# --- memory -----------------------------------------------------------------------------------------

_MEMORY_PROBE = textwrap.dedent(
    """
    import sys
    from foley_dist.media import video
    def status_mb(field):  # not ru_maxrss: it survives exec and would report pytest's own peak
        return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1]) / 1024
    path, decoder = sys.argv[1], sys.argv[2]
    video.decode_segment(path, [0.0], (64, 64), "resize", decoder)  # warm: libraries, first allocations
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    before = status_mb("VmRSS")
    frames = video.decode_segment(path, [k / 25 for k in range(50)], (64, 64), "resize", decoder)
    assert frames.shape == (50, 3, 64, 64)
    print(status_mb("VmHWM") - before)
    """
)


@pytest.fixture(scope="module")
def uhd_clip(media: Path) -> Path:
    return testclip.make_clip(media / "uhd.mp4", 2.0, 3840, 2160, fps=25)


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoding_4k_at_small_size_never_builds_full_size_frames(uhd_clip: Path, decoder: str):
    """50 frames of 4K as RGB would be 1.2 GB; decoding them to 64x64 must not grow the peak RSS by
    more than a few 4K frames, however many frames are asked for."""
    command = [sys.executable, "-c", _MEMORY_PROBE, str(uhd_clip), decoder]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    growth_mb = float(out.stdout.split()[-1])
    full_rgb_mb = 50 * 3840 * 2160 * 3 / 2**20
    assert growth_mb < 100, f"peak RSS +{growth_mb:.0f} MB for 50 4K frames at 64x64 (full RGB: {full_rgb_mb:.0f} MB)"


# --- test media ---------------------------------------------------------------------------------------


def test_clip_writes_are_atomic_and_stamped(tmp_path: Path):
    path = testclip.make_clip(tmp_path / "a.mp4", 0.4, 64, 48, codec="mpeg4")
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]  # no temp file left behind
    with av.open(str(path)) as container:
        decoded = [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in container.decode(video=0)]
    assert stamps(torch.stack(decoded)) == list(range(10))
    with pytest.raises(ValueError, match="even"):
        testclip.make_clip(tmp_path / "odd.mp4", 0.4, 63, 48)
    assert not (tmp_path / "odd.mp4").exists() and len(list(tmp_path.iterdir())) == 1
