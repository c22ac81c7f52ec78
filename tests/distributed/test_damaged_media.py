"""Damaged and odd media through the real CLI: decode what is decodable, count what is skipped, and
fail only the item that has a segment without any decodable frame, always with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from foley_dist.media.testclip import damaged_cases
from tests.conftest import run_cli

FAST = ["model.steps=2", "progress=false", "vision.cache=off", "seam_metric=false"]

# case -> ("done", audio seconds, frames skipped > 0) or ("failed", words of the reason). Videos of one
# segment (up to 5 s) get the release's length: picked 25 fps frames / 25 s, a frame short of the header
# here; longer ones are sampled jointly (seam=joint) on the timeline of the header duration
EXPECTED = {
    "clean mp4": ("done", 12.0, False),
    "bytes overwritten mp4 (3 places)": ("done", 12.0, True),
    "bytes overwritten mkv (3 places)": ("done", 12.0, True),
    "bytes overwritten ts (3 places)": ("done", 12.0, True),
    "truncated mp4 at 50% (index at end)": ("failed", "truncated"),
    "truncated faststart mp4 at 30%": ("failed", "no decodable video frame between"),
    "truncated faststart mp4 at 90%": ("done", 12.0, False),
    "truncated mkv at 50%": ("failed", "no decodable video frame between"),
    "truncated ts at 50%": ("done", 6.0, False),  # MPEG-TS has no duration header: the readable part counts
    "header only": ("failed", "no frames"),
    "zero-length video stream": ("failed", "no video stream"),
    "wrong extension": ("done", 12.0, False),
    "audio only": ("failed", "no video stream"),
    "variable frame rate": ("done", 5.962, False),
    "rotation 90": ("done", 3.96, False),
    "1x1 frames": ("done", 2.96, False),
    "odd size 33x17": ("done", 2.96, False),
    "10-bit h264": ("done", 2.96, False),
}


@pytest.fixture(scope="module")
def cases(media_dir) -> dict[str, Path]:
    return damaged_cases(media_dir / "damaged")


def test_each_damaged_case_has_its_outcome_in_one_batch(cases, tmp_path):
    """One batch holds every case: bad items fail alone with their reason, the others finish."""
    assert set(cases) == set(EXPECTED)
    names = list(cases)
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps({"video": str(cases[n]), "prompt": "x", "output": f"o{i}.wav"}) + "\n"
                                for i, n in enumerate(names)))
    r = run_cli(["batch", f"manifest={manifest}", f"output_root={tmp_path / 'out'}", *FAST], timeout=600)
    assert r.returncode == 4, r.stderr[-2000:]  # partial: some items failed
    assert "Traceback" not in r.stderr
    rows = {Path(row["output"]).name: row for row in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}
    for i, name in enumerate(names):
        row, (status, *want) = rows[f"o{i}.wav"], EXPECTED[name]
        assert row["status"] == status, (name, row)
        if status == "failed":
            assert want[0] in row["reason"] and "\n" not in row["reason"], (name, row["reason"])
            continue
        seconds, damaged = want
        assert abs(sf.info(row["output"]).duration - seconds) < 0.05, name
        assert (row["vision"]["frames_skipped"] > 0) == damaged, (name, row["vision"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["frames_skipped"] == sum(row.get("vision", {}).get("frames_skipped", 0) for row in rows.values()) > 0


@pytest.mark.parametrize("case", ["truncated mkv at 50%", "header only"])
def test_generate_on_undecodable_media_exits_2_with_one_line(cases, case, tmp_path):
    """Caught at probe (header only) or in the vision stage mid-run (a segment with no frame)."""
    r = run_cli(["generate", f"video={cases[case]}", f"output={tmp_path / 'o.wav'}", *FAST], timeout=300)
    errors = [line for line in r.stderr.splitlines() if line.startswith("foley-dist: error:")]
    assert r.returncode == 2 and len(errors) == 1 and EXPECTED[case][1] in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "o.wav").exists()


def test_damaged_media_summary_counts_skipped_frames_with_decord(cases, tmp_path):
    """decord gives up on damaged packets; the run falls back to PyAV, which skips and counts them."""
    out = tmp_path / "o.wav"
    r = run_cli(["generate", f"video={cases['bytes overwritten mp4 (3 places)']}", f"output={out}", "decoder=decord",
                 *FAST], timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["frames_skipped"] > 0
    assert f"damaged or missing video frames skipped: {report['frames_skipped']}" in r.stdout
