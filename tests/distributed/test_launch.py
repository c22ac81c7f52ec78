"""`foley-dist launch` (torch's elastic agent) keeps the exit codes a farm manager acts on: bad input
2, a killed rank 3, a partly failed batch 4, SIGTERM 143; one line instead of torchrun's report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from foley_dist.media.testclip import make_audio_only, make_clip
from tests.conftest import ROOT
from tests.distributed.test_farm import _rank_process, _wait_for

FAST = ["progress=false", "vision.cache=off", "seam_metric=false", "hardware.timeout_s=20"]


def _launch(args: list[str], nproc: int, *options: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "foley_dist", "launch", "--standalone", f"--nproc-per-node={nproc}", *options,
           "--", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def _last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip()][-1]


def test_bad_input_is_refused_before_any_rank_starts(media_dir):
    bad = make_audio_only(media_dir / "launch_audio_only.m4a", 2)
    p = _launch(["generate", f"video={bad}", *FAST], 3)
    _, err = p.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "no video stream" in lines[0], err[-2000:]


def test_bad_input_found_by_the_ranks_exits_2_with_their_line_not_the_dump(media_dir, tmp_path):
    """A batch is validated by its ranks: every rank exits 2; the launcher keeps the code and one line."""
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("not json\n")
    p = _launch(["batch", f"manifest={manifest}", *FAST], 3)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2, err[-2000:]
    assert _last_line(err).startswith("foley-dist launch: exit 2 (rank ") and "not valid JSON" in _last_line(err)
    assert "Root Cause" not in err and "ChildFailedError" not in err and "Traceback" not in err
    verbose = _launch(["batch", f"manifest={manifest}", *FAST], 2, "--verbose")
    _, err = verbose.communicate(timeout=120)
    assert verbose.returncode == 2 and "Root Cause" in err  # the full report stays available


def test_killed_rank_exits_3(media_dir, tmp_path):
    clip = make_clip(media_dir / "launch_kill.mp4", 24, 96, 64, 24, seed=5)
    p = _launch(["generate", f"video={clip}", f"output={tmp_path / 'o.wav'}", "model.steps=30", *FAST], 3)
    _wait_for(lambda: list(tmp_path.glob(".o.wav.parts-*/seg*.npy")) or p.poll() is not None)
    assert p.poll() is None, "run finished before the kill; make it longer"
    _rank_process(p, 1).send_signal(signal.SIGKILL)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 3, err[-2000:]
    assert _last_line(err) == "foley-dist launch: exit 3 (rank 1): rank 1 was killed by SIGKILL; re-run the same command to resume"
    assert "Root Cause" not in err


def test_sigterm_exits_143(media_dir, tmp_path):
    clip = make_clip(media_dir / "launch_term.mp4", 24, 96, 64, 24, seed=6)
    p = _launch(["generate", f"video={clip}", f"output={tmp_path / 'o.wav'}", "model.steps=30", *FAST], 3)
    _wait_for(lambda: list(tmp_path.glob(".o.wav.parts-*/seg*.npy")) or p.poll() is not None)
    assert p.poll() is None
    os.killpg(p.pid, signal.SIGTERM)  # what Slurm sends the job step on pre-emption
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-2000:]
    assert "re-run" in _last_line(err) and "Root Cause" not in err


def test_partly_failed_batch_exits_4(media_dir, tmp_path):
    rows = [{"video": str(make_clip(media_dir / "launch_ok.mp4", 2, 96, 64, 24, seed=7)), "prompt": "p", "output": "ok.wav"},
            {"video": "missing.mp4", "prompt": "p", "output": "missing.wav"}]
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = _launch(["batch", f"manifest={manifest}", f"output_root={tmp_path / 'out'}", "model.steps=2", *FAST], 3)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 4, err[-2000:]
    assert _last_line(err).startswith("foley-dist launch: exit 4") and "1 of 2 batch item(s) failed" in _last_line(err)
    assert (tmp_path / "out" / "ok.wav").is_file()
