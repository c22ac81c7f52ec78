"""Seam benchmark: crossfade vs joint on a generated clip — seam metric and wall time.

    python scripts/bench_seams.py --seconds 60 --nproc 1 --json out/bench_seams.json

(seam=continuation was retired in favour of joint; its last measurement is in README.md.)

Runs `foley-dist generate` once per mode on the same clip, seed and layout and reads each run report:
the loudness / spectral-centroid / flux jumps at segment boundaries next to the same statistics at
non-boundary points of the same output, and the same jumps at both edges of every overlap (where a
crossfade starts and ends; the report's metric probes only the overlap's middle). Pass model overrides (e.g. model=hunyuan_xl model.path=DIR)
after `--` to measure the real model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import benchio
import numpy as np
import soundfile as sf

from foley_dist.audio.seam import seam_report
from foley_dist.media.testclip import make_clip

ROOT = Path(__file__).resolve().parents[1]


def run_mode(clip: Path, out: Path, seam: str, nproc: int, steps: int, extra: list[str]) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable]
    cmd = [*launcher, "-m", "foley_dist", "generate", f"video={clip}", f"output={out}", "prompt=footsteps on gravel",
           f"seam={seam}", f"model.steps={steps}", "progress=false", "vision.cache=off", *extra]
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    return json.loads(out.with_suffix(".json").read_text())


def overlap_edges(wav: Path, report: dict) -> dict:
    """RMS jump and flux where each overlap starts and ends."""
    segs = report["jobs"][0]["segments"]
    edges = sorted({b[0] for b in segs[1:]} | {a[1] for a in segs[:-1]})
    audio, sr = sf.read(wav, dtype="float32")
    rows = seam_report(audio, sr, edges)["boundaries"]
    jumps = np.array([b["rms_jump_db"] for b in rows])
    return {"edge_rms_jump_db_median": float(np.median(jumps)), "edge_rms_jump_db_max": float(jumps.max()),
            "edge_flux_median": float(np.median([b["flux"] for b in rows]))}


def summarize(seam: str, report: dict, wav: Path) -> dict:
    seams = report["jobs"][0]["seams"]
    jumps = np.array([b["rms_jump_db"] for b in seams["boundaries"]])
    cents = np.array([b["centroid_jump_hz"] for b in seams["boundaries"]])
    flux = np.array([b["flux"] for b in seams["boundaries"]])
    bg = seams["background"]
    return {
        "seam": seam, "wall_s": report["wall_s"], "boundaries": len(jumps), "flagged": len(seams["flagged"]),
        "boundary_rms_jump_db_median": float(np.median(jumps)), "boundary_rms_jump_db_max": float(jumps.max()),
        "background_rms_jump_db_median": bg["rms_jump_db"]["median"], "background_rms_jump_db_p99": bg["rms_jump_db"]["p99"],
        "boundary_centroid_jump_hz_median": float(np.median(cents)), "background_centroid_jump_hz_median": bg["centroid_jump_hz"]["median"],
        "boundary_flux_median": float(np.median(flux)), "background_flux_median": bg["flux"]["median"],
        **overlap_edges(wav, report),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--nproc", type=int, default=3)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seams", default="crossfade,joint", type=lambda s: s.split(","))
    ap.add_argument("--workdir", default="out/bench_seams")
    ap.add_argument("--json", default="out/bench_seams.json")
    ap.add_argument("extra", nargs="*", help="extra key=value overrides for foley-dist generate (after --)")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    clip = make_clip(work / f"clip_{args.seconds:g}s.mp4", args.seconds, 160, 96, 24, seed=7)
    rows = [summarize(seam, run_mode(clip, work / f"{seam}.wav", seam, args.nproc, args.steps, args.extra), work / f"{seam}.wav")
            for seam in args.seams]
    cols = ["seam", "wall_s", "boundaries", "flagged", "boundary_rms_jump_db_median", "boundary_rms_jump_db_max",
            "background_rms_jump_db_median", "background_rms_jump_db_p99", "boundary_flux_median", "background_flux_median",
            "edge_rms_jump_db_median", "edge_rms_jump_db_max"]
    benchio.emit(rows, [(c, c) for c in cols], args.json, digits=3,
                 title=f"{args.seconds:g} s clip, {args.nproc} rank(s), {args.steps} steps",
                 payload={"seconds": args.seconds, "nproc": args.nproc, "steps": args.steps, "runs": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
