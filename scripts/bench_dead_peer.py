"""Seconds from a dead peer to the job's exit through `foley-dist launch`, 3 ranks, tiny model on CPU.

SIGKILL rank 1: torch's agent sees the death (and gloo closes its connections). SIGSTOP rank 1: it
keeps its sockets open and nothing tells its peers, as with a dead NCCL peer; only the store heartbeat
(engine/liveness.py) ends them. The stopped rank gets SIGCONT once both survivors have ended, so it
can take the agent's SIGTERM. Median of --repeats runs; hardware.timeout_s=120, so the process-group
timeout plays no part.

    python scripts/bench_dead_peer.py --repeats 3 --json out/bench_dead_peer.json
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

import benchio
from bench_exit_codes import rank, when_parts
from foley_dist.media.testclip import make_clip

ARGS = ["model.steps=30", "progress=false", "vision.cache=off", "seam_metric=false", "hardware.timeout_s=120"]


def ended(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def once(clip: Path, folder: Path, sig: signal.Signals) -> dict:
    p = subprocess.Popen([sys.executable, "-m", "foley_dist", "launch", "--standalone", "--nproc-per-node=3", "--",
                          "generate", f"video={clip}", f"output={folder / 'o.wav'}", *ARGS],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    when_parts(p, folder)
    procs = {r: rank(p, r) for r in range(3)}
    sent = time.monotonic()
    procs[1].send_signal(sig)
    survivors = {}
    while len(survivors) < 2 and time.monotonic() - sent < 60:
        survivors.update({r: time.monotonic() - sent for r in (0, 2) if r not in survivors and ended(procs[r])})
        time.sleep(0.02)
    if sig == signal.SIGSTOP:
        procs[1].send_signal(signal.SIGCONT)
    _, err = p.communicate(timeout=120)
    line = [x for x in err.splitlines() if x.strip()][-1]
    return {"survivors_s": max(survivors.values()), "job_s": time.monotonic() - sent, "exit": p.returncode,
            "blames_rank_1": line.startswith("foley-dist launch: exit 3 (rank 1): "), "line": line}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", 24, 96, 64, 24, seed=5)
        for sig in (signal.SIGKILL, signal.SIGSTOP):
            runs = []
            for i in range(args.repeats):
                folder = Path(tmp) / f"{sig.name}{i}"
                folder.mkdir()
                runs.append(once(clip, folder, sig))
            rows.append({"event": f"rank 1 {sig.name}", "runs": len(runs),
                         "survivors_s": statistics.median(r["survivors_s"] for r in runs),
                         "job_s": statistics.median(r["job_s"] for r in runs),
                         "max_job_s": max(r["job_s"] for r in runs),
                         "exit": "/".join(sorted({str(r["exit"]) for r in runs})),
                         "blames_rank_1": all(r["blames_rank_1"] for r in runs), "line": runs[-1]["line"], "all": runs})
    benchio.emit(rows, [("event", "event"), ("runs", "runs"), ("survivors ended, s (median)", "survivors_s"),
                        ("job exit, s (median)", "job_s"), ("job exit, s (max)", "max_job_s"), ("exit code", "exit"),
                        ("launcher blames rank 1", "blames_rank_1"), ("launcher's last line", lambda r: f"`{r['line'][:120]}`")],
                 args.json, title="Dead peer -> job exit through foley-dist launch (3 ranks, tiny model, CPU)", digits=1)


if __name__ == "__main__":
    main()
