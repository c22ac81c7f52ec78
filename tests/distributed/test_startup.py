"""Honest start-up and summary: a layout that needs more ranks than exist is a note (one process) or
an error (under the launcher), never silent; each rank's start-up line states the segments it will
run; the summary and report count the segments the feature cache served (XDG_CACHE_HOME honoured)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.conftest import ROOT, run_cli

FAST = ["model.steps=2", "progress=false", "vision.cache=off", "seam_metric=false"]


def _launch(args: list[str], nproc: int, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "foley_dist", "launch", "--standalone", f"--nproc-per-node={nproc}",
                           "--", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_one_process_notes_a_layout_it_cannot_spread(clip12, tmp_path):
    r = run_cli(["generate", f"video={clip12}", f"output={tmp_path / 'o.wav'}", "layout=replicated", *FAST])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "note: layout ['vision+fusion', 'diffusion x3'] needs 4 ranks" in r.stderr
    assert "this rank runs 3 of 3 segment(s)" in r.stderr


def test_each_replica_states_its_own_segments_and_too_few_ranks_is_an_error(clip12, tmp_path):
    r = _launch(["generate", f"video={clip12}", f"output={tmp_path / 'o.wav'}", "layout=replicated", *FAST], 4)
    assert r.returncode == 0, r.stderr[-2000:]
    # Each rank writes its line in one write (foley_dist.console.say), so on the shared stderr every
    # start-up line is whole: it starts with its own tag and holds no other rank's text.
    lines = [line for line in r.stderr.splitlines() if "this rank runs" in line]
    assert all(line.count("[rank ") == 1 for line in lines), lines
    runs = {int(m.group(1)): int(m.group(2)) for line in lines
            if (m := re.fullmatch(r"\[rank (\d+)\] .*; this rank runs (\d+) of 3 segment\(s\)", line))}
    assert len(lines) == 4 and runs == {0: 3, 1: 1, 2: 1, 3: 1}, r.stderr[-2000:]
    short = _launch(["generate", f"video={clip12}", f"output={tmp_path / 'p.wav'}", "layout=replicated", *FAST], 2)
    assert short.returncode == 2 and "needs 4 rank(s) but WORLD_SIZE is 2" in short.stderr.splitlines()[-1]


def test_cached_segments_are_counted_and_the_cache_follows_xdg(clip12, tmp_path):
    """A one-process run fills the cache under XDG_CACHE_HOME; a 3-rank run (the identity computed on
    the sink and broadcast) is served all 3 segments from it and says so."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    args = ["generate", f"video={clip12}", "model.steps=2", "progress=false", "seam_metric=false"]
    first = run_cli([*args, f"output={tmp_path / 'a.wav'}"], env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "0 from the feature cache" in first.stdout
    assert len(list((tmp_path / "xdg" / "foley_dist" / "features").glob("*/*.safetensors"))) == 3
    second = _launch([*args, f"output={tmp_path / 'b.wav'}"], 3, env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "3 from the feature cache" in second.stdout
    assert json.loads((tmp_path / "b.json").read_text())["segments_cached"] == 3
