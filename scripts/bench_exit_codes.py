"""Exit codes observed through `foley-dist launch` (torch's elastic agent), 3 ranks, tiny model:
bad input, a rank killed with SIGKILL, a batch with a missing item, SIGTERM to the job's process
group (as Slurm sends it). Prints the code, the launcher's last line and seconds from the event to
exit (README, "Retry contract").

    python scripts/bench_exit_codes.py --json out/bench_exit_codes.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchio
import psutil

from foley_dist.media.testclip import make_audio_only, make_clip

FAST = ["progress=false", "vision.cache=off", "seam_metric=false", "hardware.timeout_s=20"]


def launch(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "foley_dist", "launch", "--standalone", "--nproc-per-node=3", "--",
                             *args, *FAST], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def when_parts(p: subprocess.Popen, folder: Path) -> None:
    while not list(folder.glob(".*.parts-*/seg*.npy")) and p.poll() is None:
        time.sleep(0.1)


def rank(p: subprocess.Popen, r: int) -> psutil.Process:
    while True:
        for child in psutil.Process(p.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(r):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.1)


def finish(p: subprocess.Popen, since: float) -> dict:
    _, err = p.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    return {"exit": p.returncode, "seconds_to_exit": round(time.monotonic() - since, 1), "line": lines[-1] if lines else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        clip = make_clip(d / "clip.mp4", 24, 96, 64, 24, seed=5)
        start = time.monotonic()
        rows["bad input (audio-only file)"] = finish(launch(["generate", f"video={make_audio_only(d / 'a.m4a', 2)}"]), start)
        (d / "kill").mkdir()
        p = launch(["generate", f"video={clip}", f"output={d / 'kill' / 'o.wav'}", "model.steps=30"])
        when_parts(p, d / "kill")
        rank(p, 1).send_signal(signal.SIGKILL)
        rows["rank 1 killed (SIGKILL)"] = finish(p, time.monotonic())
        (d / "jobs.jsonl").write_text(json.dumps({"video": str(clip), "output": "ok.wav"}) + "\n"
                                      + json.dumps({"video": "missing.mp4", "output": "no.wav"}) + "\n")
        start = time.monotonic()
        rows["batch with a missing video"] = finish(launch(["batch", f"manifest={d / 'jobs.jsonl'}",
                                                            f"output_root={d / 'out'}", "model.steps=2"]), start)
        (d / "term").mkdir()
        p = launch(["generate", f"video={clip}", f"output={d / 'term' / 'o.wav'}", "model.steps=30"])
        when_parts(p, d / "term")
        os.killpg(p.pid, signal.SIGTERM)
        rows["SIGTERM to the process group"] = finish(p, time.monotonic())
    columns = [("event", "event"), ("exit code", "exit"), ("seconds to exit", "seconds_to_exit"),
               ("launcher's last line", lambda r: f"`{r['line'][:110]}`")]
    benchio.emit([{"event": name, **r} for name, r in rows.items()], columns, args.json, digits=1, payload=rows)


if __name__ == "__main__":
    main()
