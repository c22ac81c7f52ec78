"""Write a deterministic synthetic clip (moving shapes, frame index stamped) for demos and benchmarks."""

from __future__ import annotations

import argparse
import time

from foley_dist.media.testclip import make_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--codec", choices=["h264", "mpeg4"], default="h264")
    parser.add_argument("--audio", action="store_true", help="add a 440 Hz AAC tone")
    parser.add_argument("--rotation", type=int, default=0, choices=[0, 90, 180, 270])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    start = time.perf_counter()
    make_clip(
        args.out, args.seconds, args.width, args.height, args.fps, args.seed, args.codec, args.audio, args.rotation
    )
    elapsed = time.perf_counter() - start
    print(f"wrote {args.out}: {args.seconds:g} s {args.width}x{args.height} @ {args.fps:g} fps in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
