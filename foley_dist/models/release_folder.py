"""Write a tiny, randomly weighted HunyuanVideo-Foley release folder from a manifest (tests, checks).

The manifest (`tests/data/reference/official_pipeline/release_manifest.json`) lists every file of
the release: text files verbatim, weight files as (name, shape, fill role). Values follow the rule
the reference data was made with, so the same seed gives the same bytes as the reference release:
one `torch.Generator` per weight file, seeded from SHA-256 of "SEED:PATH", tensors drawn in sorted
name order by role. Only the container writers (torch.save, safetensors) are ours.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from collections import OrderedDict
from pathlib import Path

import torch

MANIFEST_FORMAT = "hvf-tiny-release-manifest/1"
_SCALE = {"bias": (0.0, 0.1), "norm_weight": (1.0, 0.1), "positive": (1.0, 0.1), "free": (0.0, 0.5)}


def file_seed(seed: int, path: str) -> int:
    digest = hashlib.sha256(f"{seed}:{path}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def _draw(role: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    if role == "weight":
        return x / math.sqrt(math.prod(shape[1:]))
    if role == "wn_gain":
        return 0.6 * (1.0 + 0.1 * x)
    if role not in _SCALE:
        raise ValueError(f"unknown fill role {role!r}")
    offset, scale = _SCALE[role]
    return offset + scale * x if offset else scale * x


def fill(entries: list[list], seed: int, path: str) -> "OrderedDict[str, torch.Tensor]":
    """Tensors of one weight file, in the manifest's key order (values drawn in sorted-name order)."""
    gen = torch.Generator().manual_seed(file_seed(seed, path))
    values = {}
    for name, shape, role, *const in sorted(entries, key=lambda e: e[0]):
        shape = tuple(int(s) for s in shape)
        if role == "const":
            dtype, flat = const
            values[name] = torch.tensor(flat, dtype=getattr(torch, dtype)).reshape(shape).contiguous()
        else:
            values[name] = _draw(role, shape, gen).contiguous()
    return OrderedDict((e[0], values[e[0]]) for e in entries)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors with sorted keys, compact JSON header padded to 8 bytes, metadata {"format": "pt"}."""
    codes = {torch.float32: "F32", torch.int64: "I64"}
    header: dict = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        blob = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            f.write(blob)


def write_release(manifest_path: str | Path, out: str | Path, seed: int = 2718,
                  skip: tuple[str, ...] = ()) -> list[Path]:
    """Write every manifest file not in `skip` under `out`; returns the paths written."""
    manifest = json.loads(Path(manifest_path).read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{manifest_path}: not a {MANIFEST_FORMAT} manifest")
    written = []
    for entry in manifest["files"]:
        rel, kind = entry["path"], entry["kind"]
        if rel in skip:
            continue
        dst = Path(out) / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if kind == "text":
            with open(dst, "w", encoding="utf-8", newline="") as f:
                f.write(entry["text"])
        elif kind == "torch_state_dict":
            torch.save(fill(entry["tensors"], seed, rel), dst)
        elif kind == "audiotools_model":  # the layout audiotools' BaseModel.save writes
            torch.save({"state_dict": fill(entry["tensors"], seed, rel), "metadata": {"kwargs": entry["kwargs"]}}, dst)
        elif kind == "safetensors":
            write_safetensors(dst, fill(entry["tensors"], seed, rel))
        else:
            raise ValueError(f"{manifest_path}: unknown file kind {kind!r} for {rel}")
        written.append(dst)
    return written


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m foley_dist.models.release_folder MANIFEST OUTDIR [SEED]")
    for p in write_release(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 2718):
        print(p)
