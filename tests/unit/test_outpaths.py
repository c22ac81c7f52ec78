"""Output-path safety: inputs and files this tool did not write are never overwritten; bad extensions,
unwritable folders and a full disk are refused before any work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from foley_dist.audio.outpaths import Output, check_outputs, default_mux_output
from foley_dist.audio.output import AudioWriter, write_json_atomic
from foley_dist.errors import FoleyError


def _audio(path: Path) -> Output:
    return Output("audio", path, "output", 1000)


def test_output_that_is_the_input_is_refused(tmp_path: Path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"master")
    link = tmp_path / "link.mp4"
    os.link(video, link)  # a hard link is the same file under another name
    for path in (video, link, tmp_path / "sub" / ".." / "clip.mp4"):
        with pytest.raises(FoleyError, match="is an input of this run"):
            check_outputs([Output("video", path, "mux_output", 10)], [video])
    assert video.read_bytes() == b"master"


def test_unrelated_existing_file_is_refused_but_our_own_is_replaced(tmp_path: Path):
    theirs = tmp_path / "theirs.wav"
    theirs.write_bytes(b"RIFF someone's recording")
    with pytest.raises(FoleyError, match="not written by foley-dist"):
        check_outputs([_audio(theirs)], [])
    ours = tmp_path / "ours.wav"
    with AudioWriter(ours, 48000) as w:
        w.write(np.zeros(100, np.float32))
    check_outputs([_audio(ours)], [])  # an earlier run's output: may be replaced
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"layout": []}))
    with pytest.raises(FoleyError, match="not written by foley-dist"):
        check_outputs([Output("json", report, "report")], [])
    write_json_atomic(report, {"generator": "foley_dist"})
    check_outputs([Output("json", report, "report")], [])


def test_parts_folder_must_hold_only_segments(tmp_path: Path):
    parts = tmp_path / ".o.wav.parts-abc"
    parts.mkdir()
    (parts / "seg00000.npy").write_bytes(b"x")
    (parts / "tails00000.npy").write_bytes(b"x")  # seam=joint's resume state
    check_outputs([Output("parts", parts, "output (its resume folder)")], [])
    (parts / "thesis.docx").write_bytes(b"x")
    with pytest.raises(FoleyError, match="not written by foley-dist"):
        check_outputs([Output("parts", parts, "output (its resume folder)")], [])


@pytest.mark.parametrize("name,setting,needle", [("x.mp3", "audio", "unsupported extension '.mp3'"),
                                                 ("x.avi", "video", "unsupported extension '.avi'")])
def test_extension_is_checked(tmp_path: Path, name, setting, needle):
    with pytest.raises(FoleyError, match=needle):
        check_outputs([Output(setting, tmp_path / name, "output", 1)], [])


def test_two_outputs_on_one_file_are_refused(tmp_path: Path):
    with pytest.raises(FoleyError, match="are the same file"):
        check_outputs([_audio(tmp_path / "a.wav"), Output("json", tmp_path / "a.wav", "report")], [])


def test_unwritable_folder_is_refused(tmp_path: Path):
    """/proc takes no new files, for root either (a chmod'ed folder would not stop root)."""
    with pytest.raises(FoleyError, match="cannot create files in /proc"):
        check_outputs([_audio(Path("/proc/foley_dist_test/a.wav"))], [])


def test_folder_that_is_a_file_is_refused(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FoleyError, match="cannot create files"):
        check_outputs([_audio(tmp_path / "file" / "a.wav")], [])


def test_free_space_is_checked(tmp_path: Path):
    with pytest.raises(FoleyError, match="not enough free disk space"):
        check_outputs([Output("audio", tmp_path / "a.wav", "output", 1 << 62)], [])


def test_default_mux_output_never_takes_the_input_name(tmp_path: Path):
    assert default_mux_output("out/clip.wav", "in/clip.mp4") == "out/clip.muxed.mp4"
    assert default_mux_output("clip.wav", "clip.mov") == "clip.muxed.mov"
    assert default_mux_output("clip.wav", "clip.webm") == "clip.muxed.mp4"


def test_batch_items_with_unsafe_outputs_are_rejected_alone(clip12, tmp_path: Path):
    """In a batch, an item whose output is taken (by another item or by someone's file) fails alone."""
    from foley_dist import config
    from foley_dist.jobs import batch_jobs

    root = tmp_path / "out"
    root.mkdir()
    (root / "theirs.wav").write_bytes(b"someone's recording")
    rows = [{"video": str(clip12), "output": "a.wav"}, {"video": str(clip12), "output": "a.wav"},
            {"video": str(clip12), "output": "theirs.wav"}, {"video": str(clip12), "output": "b.mp3"},
            {"video": str(clip12), "output": "b.wav"}]
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    jobs, rejected = batch_jobs(config.load("batch", [f"manifest={manifest}", f"output_root={root}"]))
    assert [Path(j.output).name for j in jobs] == ["a.wav", "b.wav"]
    reasons = {r.index: r.reason for r in rejected}
    assert "also item 0's output" in reasons[1] and "not written by foley-dist" in reasons[2]
    assert "unsupported extension '.mp3'" in reasons[3]
    assert (root / "theirs.wav").read_bytes() == b"someone's recording"
