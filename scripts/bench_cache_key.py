"""Feature-cache key time on a large file: the old key (blake2b of every byte) against the new
identity (size, mtime, four 1 MiB slices). README, "Feature cache".

    python scripts/bench_cache_key.py --gb 2 --dir /tmp --json out/bench_cache_key.json

Writes a sparse file and a file of real (random) bytes of that size into --dir, times both keys on
each, and deletes them. The page cache is not dropped: a real file just written is read from memory,
so its old-key time is a lower bound for a file on disk.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

import benchio

from foley_dist.media import cache

CHUNK = 1 << 20


def whole_file_digest(path: Path) -> str:
    """The key before this change: every byte through blake2b."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def timed(fn, path: Path) -> float:
    cache._identity.cache_clear()
    start = time.perf_counter()
    fn(path)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--dir", type=Path, default=Path("/tmp"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    size = int(args.gb * 2**30)
    rows = {}
    for kind in ("sparse", "real"):
        path = args.dir / f"foley_dist_cache_key_{kind}.bin"
        try:
            with open(path, "wb") as f:
                if kind == "sparse":
                    f.truncate(size)
                else:
                    for _ in range(size // (64 * CHUNK)):
                        f.write(os.urandom(64 * CHUNK))
            rows[kind] = {"old_s": round(timed(whole_file_digest, path), 3),
                          "new_s": round(timed(cache.file_identity, path), 5)}
        finally:
            path.unlink(missing_ok=True)
    columns = [(f"{args.gb:g} GiB file", "file"), ("old key (whole-file blake2b) s", lambda r: str(r["old_s"])),
               ("new key (size, mtime, 4 x 1 MiB) s", lambda r: str(r["new_s"])),
               ("speed-up", lambda r: f"{r['old_s'] / r['new_s']:.0f}x")]
    benchio.emit([{"file": kind, **r} for kind, r in rows.items()], columns, args.json, payload={"gib": args.gb, **rows})


if __name__ == "__main__":
    main()
