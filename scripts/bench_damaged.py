"""Damaged and odd media: outcome, seconds to exit and frames skipped per case (README, "Damaged media").

    python scripts/bench_damaged.py --json out/bench_damaged.json

Each case (foley_dist.media.testclip.damaged_cases) runs `foley-dist generate` in one process on the tiny
model (2 steps): the time is the whole command, start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchio

from foley_dist.media.testclip import damaged_cases


def run_case(video: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "foley_dist", "generate", f"video={video}", f"output={out}", "model.steps=2",
           "progress=false", "vision.cache=off", "seam_metric=false"]
    start = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.monotonic() - start
    row = {"exit": p.returncode, "seconds": round(seconds, 1), "traceback": "Traceback" in p.stderr}
    if p.returncode == 0:
        report = json.loads(out.with_suffix(".json").read_text())
        row.update(outcome="audio", audio_s=report["jobs"][0]["duration_s"], frames_skipped=report["frames_skipped"])
    else:
        errors = [line for line in p.stderr.splitlines() if line.startswith("foley-dist: error:")]
        row.update(outcome="refused", reason=errors[0].split("error: ", 1)[1] if errors else p.stderr[-300:])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = damaged_cases(Path(tmp) / "media")
        rows = {name: run_case(path, Path(tmp) / f"o{i}.wav") for i, (name, path) in enumerate(cases.items())}
    columns = [("case", "case"), ("outcome", "outcome"), ("exit", "exit"), ("seconds", "seconds"),
               ("frames skipped", "frames_skipped"),
               ("reason", lambda r: f"{r['audio_s']:.2f} s audio" if r["outcome"] == "audio" else r["reason"])]
    benchio.emit([{"case": name, **r} for name, r in rows.items()], columns, args.json, digits=1, payload=rows)


if __name__ == "__main__":
    main()
