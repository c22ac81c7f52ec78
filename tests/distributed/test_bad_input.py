"""Bad input: exit code 2, one line naming the problem, from every rank, quickly and without a hang."""

from __future__ import annotations

import time

import pytest
import torch

from foley_dist.media.testclip import make_audio_only, make_corrupt, make_empty, make_no_frames
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def bad_inputs(media_dir):
    text = media_dir / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    return {
        "missing": (media_dir / "nope.mp4", "not found"),
        "text file": (text, "not a media file"),
        "corrupt": (make_corrupt(media_dir / "corrupt.mp4"), "corrupt"),
        "zero-length": (make_empty(media_dir / "empty.mp4"), "empty"),
        "audio-only": (make_audio_only(media_dir / "audio_only.m4a", 2), "no video stream"),
        "no frames": (make_no_frames(media_dir / "no_frames.mp4"), "no video stream"),
    }


CASES = ["missing", "text file", "corrupt", "zero-length", "audio-only", "no frames"]


@pytest.mark.parametrize("case", CASES)
def test_single_process_exit_2_one_line(bad_inputs, case, tmp_path):
    path, needle = bad_inputs[case]
    start = time.monotonic()
    r = run_cli(["generate", f"video={path}", f"output={tmp_path / 'o.wav'}"], timeout=60)
    assert time.monotonic() - start < 60
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("foley-dist: error:"), lines
    assert needle in lines[0].lower() and str(path.name) in lines[0]
    assert "Traceback" not in r.stderr and not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize("case", ["corrupt", "audio-only"])
def test_every_rank_reports_under_torchrun(bad_inputs, case, tmp_path):
    path, needle = bad_inputs[case]
    start = time.monotonic()
    r = run_cli(["generate", f"video={path}", f"output={tmp_path / 'o.wav'}"], nproc=3, timeout=60)
    assert time.monotonic() - start < 60
    assert r.returncode != 0  # torchrun exits 1 when its workers fail; each worker exited 2
    # Every rank validates the input itself; torchrun stops the others as soon as one exits, so a rank
    # still importing may be ended before it prints. Ranks share one stderr pipe: count messages.
    # torchrun's own report quotes the root-cause rank's recorded line after "traceback : "
    errors = r.stderr.count("foley-dist: error:") - r.stderr.count("traceback : foley-dist: error:")
    assert 1 <= errors <= 3 and r.stderr.lower().count(needle) >= errors, r.stderr[-2000:]
    assert "exitcode  : 2" in r.stderr  # torchrun's summary names a rank that exited 2


@pytest.mark.parametrize("override,needle", [
    ("colour=red", "unknown setting 'colour'"),
    ("segment_seconds=5 overlap_seconds=5", "overlap_seconds=5.0 must be"),
    ("layout.ranks=[vision,diffusion]", "exactly once"),
    ("model=hunyuan_xl", "model.path"),
    ("segment_seconds=20", "15 s window"),
    ("hardware.precision=fp8", "hardware.precision='fp8'"),
    pytest.param("hardware=gpu", "no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")),
])
def test_bad_config_is_one_line(clip12, override, needle, tmp_path):
    r = run_cli(["generate", f"video={clip12}", f"output={tmp_path / 'o.wav'}", *override.split()], timeout=60)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
