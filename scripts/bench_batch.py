"""Batch benchmark: one pipeline streaming a manifest of clips vs one torchrun job per clip.

    python scripts/bench_batch.py --clips 20 --nproc 3 --json out/bench_batch.json

Streaming keeps the pipeline full across videos (segments of the next clip enter while the previous
one drains) and pays start-up (process launch, model build) once; separate jobs pay both per clip.
Occupancy = total stage busy time / (ranks x wall time), from the run reports.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import benchio

from foley_dist.media.testclip import make_clip

ROOT = Path(__file__).resolve().parents[1]


def torchrun(nproc: int, args: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "foley_dist", *args]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def occupancy(reports: list[dict], nproc: int, wall: float) -> float:
    return sum(sum(r["stage_busy_s"].values()) for r in reports) / (nproc * wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--nproc", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workdir", default="out/bench_batch")
    ap.add_argument("--json", default="out/bench_batch.json")
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    common = [f"model.steps={args.steps}", "progress=false", "vision.cache=off", "seam_metric=false"]
    clips = [make_clip(work / f"clip{i:02d}.mp4", args.seconds, 160, 96, 24, seed=i) for i in range(args.clips)]
    manifest = work / "jobs.jsonl"
    manifest.write_text("".join(json.dumps({"video": c.name, "prompt": "footsteps", "output": f"{c.stem}.wav"}) + "\n" for c in clips))

    rows = []
    out_root = work / "streamed"
    start = time.perf_counter()
    torchrun(args.nproc, ["batch", f"manifest={manifest}", f"output_root={out_root}", *common])
    wall = time.perf_counter() - start
    rep = json.loads((out_root / "report.json").read_text())
    rows.append({"mode": "streamed batch (1 job)", "wall_s": wall, "pipeline_s": rep["wall_s"],
                 "occupancy": occupancy([rep], args.nproc, rep["wall_s"])})

    start, reports = time.perf_counter(), []
    for c in clips:
        out = work / "separate" / f"{c.stem}.wav"
        torchrun(args.nproc, ["generate", f"video={c}", f"output={out}", "prompt=footsteps", *common])
        reports.append(json.loads(out.with_suffix(".json").read_text()))
    wall = time.perf_counter() - start
    rows.append({"mode": "one job per clip", "wall_s": wall, "pipeline_s": sum(r["wall_s"] for r in reports),
                 "occupancy": occupancy(reports, args.nproc, wall)})

    for r in rows:
        r["items_per_hour"] = args.clips * 3600 / r["wall_s"]
    columns = [("mode", "mode"), ("wall s", lambda r: f"{r['wall_s']:.1f}"), ("pipeline s", lambda r: f"{r['pipeline_s']:.1f}"),
               ("items/hour", lambda r: f"{r['items_per_hour']:.0f}"), ("occupancy", "occupancy")]
    speedup = rows[1]["wall_s"] / rows[0]["wall_s"]
    benchio.emit(rows, columns, args.json, title=f"{args.clips} clips of {args.seconds:g} s, {args.nproc} ranks, {args.steps} steps",
                 payload={"clips": args.clips, "seconds": args.seconds, "nproc": args.nproc, "steps": args.steps,
                          "streaming_speedup": speedup, "runs": rows})
    print(f"speed-up of streaming: {speedup:.2f}x")


if __name__ == "__main__":
    main()
