"""Measure how audible the segment seams of a generated audio file are.

    python scripts/seam_metric.py AUDIO.wav --boundaries 4.5,8.5 [--window 0.05] [--json OUT]

Prints one row per boundary plus the background (non-boundary) distribution; flagged seams are marked.
"""

from __future__ import annotations

import argparse

import soundfile as sf

from foley_dist.audio.output import write_json_atomic
from foley_dist.audio.seam import KEYS, seam_report


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def format_report(report: dict) -> str:
    header = f"{'time_s':>9} {'rms_jump_db':>12} {'centroid_jump_hz':>17} {'flux':>7}  flagged"
    lines = [header]
    for row in report["boundaries"]:
        lines.append(
            f"{row['time_s']:9.3f} {row['rms_jump_db']:12.2f} {row['centroid_jump_hz']:17.1f} {row['flux']:7.3f}  "
            + ("YES" if row["flagged"] else "no")
        )
    background = report["background"]
    lines.append(f"background ({background['count']} points, median / p95 / p99):")
    for key in KEYS:
        stats = background[key]
        values = f"{stats['median']:.3f} / {stats['p95']:.3f} / {stats['p99']:.3f}" if stats else "n/a"
        lines.append(f"  {key:>16}: {values}")
    lines.append(f"rule: {report['rule']} -> threshold {report['threshold_db']:.2f} dB")
    if report["skipped"]:
        lines.append(f"skipped (too close to an end): {report['skipped']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio")
    parser.add_argument("--boundaries", type=_floats, required=True, help="comma-separated seam times in seconds")
    parser.add_argument("--window", type=float, default=0.05, help="analysis window in seconds (default 0.05)")
    parser.add_argument("--json", help="also write the full report as JSON here")
    args = parser.parse_args(argv)
    audio, sample_rate = sf.read(args.audio, dtype="float32")
    report = seam_report(audio, sample_rate, args.boundaries, args.window)
    print(format_report(report))
    if args.json:
        write_json_atomic(args.json, report)


if __name__ == "__main__":
    main()
