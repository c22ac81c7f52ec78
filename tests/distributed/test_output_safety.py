"""Never destroy an input: through the real CLI, outputs that would overwrite an input or someone's
file are refused before any work (exit 2, one line, nothing written); a re-run replaces its own."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli

FAST = ["model.steps=2", "progress=false", "vision.cache=off", "seam_metric=false"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def clip(clip12, tmp_path) -> Path:
    """A private copy: if a guard failed, the shared clip would not be the one destroyed."""
    return Path(shutil.copy(clip12, tmp_path / "clip.mp4"))


def _refused(r, needle: str) -> None:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr[-2000:]
    assert lines[0].startswith("foley-dist: error:")


def test_mux_with_the_inputs_stem_keeps_the_input_and_a_rerun_replaces_its_own_outputs(clip, tmp_path):
    before = _digest(clip)
    args = ["generate", f"video={clip}", f"output={tmp_path / 'clip.wav'}", "mux=true", *FAST]
    first = run_cli(args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert _digest(clip) == before and (tmp_path / "clip.muxed.mp4").is_file()
    again = run_cli(args)  # audio, muxed video and report of the first run are this tool's: replaced
    assert again.returncode == 0, again.stderr[-2000:]
    assert _digest(clip) == before


@pytest.mark.parametrize("extra,needle", [
    (["mux=true", "mux_output={clip}"], "is an input of this run"),
    (["report={clip}"], "is an input of this run"),
    (["trace={dir}/clip.wav"], "are the same file"),
])
def test_outputs_resolving_to_an_input_or_each_other_are_refused(clip, tmp_path, extra, needle):
    before = _digest(clip)
    r = run_cli(["generate", f"video={clip}", f"output={tmp_path / 'clip.wav'}",
                 *[e.format(clip=clip, dir=tmp_path) for e in extra], *FAST], timeout=60)
    _refused(r, needle)
    assert _digest(clip) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # nothing written, no parts folder


def test_unsupported_extension_is_refused_before_any_work(clip, tmp_path):
    r = run_cli(["generate", f"video={clip}", f"output={tmp_path / 'x.mp3'}", *FAST], timeout=60)
    _refused(r, "unsupported extension '.mp3'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    again = run_cli(["generate", f"video={clip}", f"output={tmp_path / 'x.mp3'}", *FAST], timeout=60)
    _refused(again, "unsupported extension '.mp3'")  # and no finished segment is claimed on a re-run


def test_someone_elses_file_at_the_output_path_is_refused(clip, tmp_path):
    theirs = tmp_path / "mix.wav"
    theirs.write_bytes(b"RIFF....WAVE a recording nobody may lose")
    r = run_cli(["generate", f"video={clip}", f"output={theirs}", *FAST], timeout=60)
    _refused(r, "not written by foley-dist")
    assert theirs.read_bytes() == b"RIFF....WAVE a recording nobody may lose"
