"""On-disk cache of a segment's vision features, shared by ranks, jobs and re-runs.

Re-scoring a video with another prompt or seed repeats the vision stage bit for bit; the cache
skips its decode and both encoders. An entry is one safetensors file named by a hash of everything
the features depend on: the video's identity (not its path or name), the segment bounds, the model
and encoder configs and the vision settings (`feature_key`). Bump `CACHE_VERSION` when the feature
code changes what it computes.

The identity (`file_identity`) is cheap on purpose: size, mtime and hashes of a few fixed 1 MiB
slices, i.e. at most 4 MiB read however large the master is, computed once per run on one rank and
broadcast (runtime.py). Slices tell apart same-size files (re-exports, copies made with their
mtime); mtime catches an edit in place that the slices miss. Entries live under
`$XDG_CACHE_HOME/foley_dist/features` (`~/.cache/...` when unset) unless `vision.cache` names a folder.

Safe without locks: entries are written to a temp file and renamed into place (readers see a whole
file or none; two writers of one key write identical bytes), and each carries a checksum, so a
truncated or damaged entry is a miss and gets replaced. Size is bounded: after each write the least
recently used entries (file mtime, refreshed on every hit) are deleted until the total fits.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

CACHE_VERSION = 2  # 2: cheap file identity instead of a hash of the whole file
_CHUNK = 1 << 20
_SLICES = 4  # first, last and two evenly spaced MiB of the file
_STALE_TEMP_S = 3600.0  # temp files older than this were left by a killed writer


def cache_root(setting: str) -> Path:
    """The cache folder for `vision.cache`: `auto` follows XDG_CACHE_HOME (default ~/.cache)."""
    if setting != "auto":
        return Path(setting).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path("~/.cache").expanduser()  # the spec ignores relative values
    return base / "foley_dist" / "features"


def file_identity(path: str | os.PathLike) -> str:
    """blake2b of (size, mtime, fixed 1 MiB slices of the file); memoised per (path, size, mtime)."""
    st = os.stat(path)
    return _identity(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _identity(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.blake2b(f"{size}:{mtime_ns}".encode(), digest_size=20)
    last = max(0, size - _CHUNK)
    offsets = sorted({k * last // (_SLICES - 1) for k in range(_SLICES)})
    with open(path, "rb") as f:
        for offset in offsets:
            f.seek(offset)
            h.update(f.read(_CHUNK))
    return h.hexdigest()


def feature_key(identity: str, start: float, end: float, settings: dict[str, Any]) -> str:
    """Cache key of one segment's features: `file_identity` + segment bounds + JSON-able settings."""
    fields = {"version": CACHE_VERSION, "video": identity, "start": round(start, 6), "end": round(end, 6),
              "settings": settings}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _checksum(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    h = hashlib.blake2b(json.dumps(meta, sort_keys=True).encode(), digest_size=20)
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """Entries under root/<key[:2]>/<key>.safetensors, at most `max_bytes` in total."""

    def __init__(self, root: str | os.PathLike, max_bytes: int):
        self.root, self.max_bytes = Path(root).expanduser(), max_bytes

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """(tensors on the CPU, string metadata) or None; a damaged entry is deleted and is a miss."""
        path = self.path(key)
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except FileNotFoundError:
            return None
        except (SafetensorError, OSError, ValueError):
            path.unlink(missing_ok=True)
            return None
        checksum = meta.pop("checksum", None)
        if meta.get("key") != key or checksum != _checksum(tensors, meta):
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # most recently used
        except OSError:
            pass  # a read-only cache still serves hits
        del meta["key"]
        return tensors, meta

    def put(self, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        """Write atomically (temp file + rename), then evict down to `max_bytes`."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{key}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            meta = {**meta, "key": key}
            save_file(tensors, tmp, metadata={**meta, "checksum": _checksum(tensors, meta)})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.evict()

    def evict(self) -> None:
        """Delete least recently used entries until the total size is <= max_bytes."""
        entries, now = [], time.time()
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # evicted by another process meanwhile
                if entry.name.endswith(".safetensors"):
                    entries.append((st.st_mtime, st.st_size, entry.path))
                elif entry.name.endswith(".tmp") and now - st.st_mtime > _STALE_TEMP_S:
                    Path(entry.path).unlink(missing_ok=True)
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            Path(path).unlink(missing_ok=True)
            total -= size
