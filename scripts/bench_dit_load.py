#!/usr/bin/env python
"""Peak host memory of loading the DiT from a checkpoint, against the bytes of the loaded weights.

usage: python scripts/bench_dit_load.py [--hidden 768 --triple 4 --single 8] [--json out/bench_dit_load.json]

Writes a random mid-size DiT (the release architecture with fewer, narrower blocks) as safetensors
and as a .pth pickle, in bf16 and in fp32, then loads each in a fresh process through
`build_parts` on the CPU, the path every rank takes (model.path = a release folder), and records
the peak RSS growth of the load (VmHWM after resetting it through /proc/self/clear_refs, minus the
RSS before) next to the bytes of the weights it ends up with. Every weight is read once after the
load, so weights left memory-mapped from the file count as resident, as they will in a forward. `dit` is the whole DiT (a diffusion
rank), `dit_condition` the condition projections (a fusion rank). The ratio is what issue 17 item 7
is about: before the fix a bf16 checkpoint went through a full fp32 copy (about 3x).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import benchio
import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# (checkpoint dtype, precision of the loaded DiT): the release's bf16 file as GPUs load it, a fp32
# file loaded as fp32 (precision=fp32 on CPU), and a fp32 file cast down while loading.
CASES = (("bf16", "bf16"), ("fp32", "fp32"), ("fp32", "bf16"))


def mid_spec(hidden: int, triple: int, single: int):
    from foley_dist.models.foley import ModelSpec

    spec = ModelSpec.named("hunyuan_xl")
    dit = dataclasses.replace(spec.dit, hidden_size=hidden, num_heads=hidden // 128, depth_triple_blocks=triple,
                              depth_single_blocks=single)
    return dataclasses.replace(spec, dit=dit)


def write_checkpoints(spec, root: Path) -> dict[tuple[str, str], Path]:
    """{(format, dtype): release folder holding only that DiT checkpoint}."""
    from safetensors.torch import save_file

    from foley_dist.models.hunyuan_dit import HunyuanDiT

    torch.manual_seed(0)
    state = HunyuanDiT(spec.dit).state_dict()
    out = {}
    for name, dtype in DTYPES.items():
        tensors = {k: v.to(dtype).contiguous() for k, v in state.items()}
        for fmt in ("safetensors", "pth"):
            folder = root / f"{fmt}-{name}"
            folder.mkdir()
            path = folder / f"{spec.dit_file}.{fmt}"
            save_file(tensors, path) if fmt == "safetensors" else torch.save(tensors, path)
            out[(fmt, name)] = folder
    return out


def child(folder: str, precision: str, part: str, hidden: int, triple: int, single: int) -> None:
    """In a fresh process: the peak RSS growth of building `part` from `folder`, and its weight bytes."""
    from foley_dist.config import ModelConfig
    from foley_dist.engine.metrics import peak_rss_since_reset, reset_peak_rss
    from foley_dist.models.foley import build_parts

    spec = mid_spec(hidden, triple, single)
    cfg = ModelConfig(name=spec.name, path=folder)
    base = reset_peak_rss()
    state = build_parts(spec, (part,), cfg, torch.device("cpu"), DTYPES[precision])[part].state_dict()
    for t in state.values():  # weights still mapped from the file count once they are read
        t.sum()
    peak = peak_rss_since_reset() - base
    weights = sum(t.numel() * t.element_size() for t in state.values())
    print(json.dumps({"peak": peak, "weights": weights}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--triple", type=int, default=4)
    ap.add_argument("--single", type=int, default=8)
    ap.add_argument("--json", default="out/bench_dit_load.json")
    ap.add_argument("--child", nargs=3, metavar=("FOLDER", "PRECISION", "PART"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    size = (args.hidden, args.triple, args.single)
    if args.child:
        child(*args.child, *size)
        return 0
    spec = mid_spec(*size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_dit_load.") as tmp:
        folders = write_checkpoints(spec, Path(tmp))
        for fmt in ("safetensors", "pth"):
            for file_dtype, precision in CASES:
                for part in ("dit", "dit_condition"):
                    cmd = [sys.executable, __file__, "--hidden", str(args.hidden), "--triple", str(args.triple),
                           "--single", str(args.single), "--child", str(folders[(fmt, file_dtype)]), precision, part]
                    r = subprocess.run(cmd, capture_output=True, text=True)
                    if r.returncode:
                        print(r.stderr[-2000:], file=sys.stderr)
                        return 1
                    got = json.loads(r.stdout.strip().splitlines()[-1])
                    rows.append({"format": fmt, "file": file_dtype, "precision": precision, "part": part,
                                 "weights_mb": got["weights"] / 2**20, "peak_mb": got["peak"] / 2**20,
                                 "ratio": got["peak"] / got["weights"]})
    columns = [("checkpoint", "format"), ("file dtype", "file"), ("loaded as", "precision"), ("part", "part"),
               ("weights MB", "weights_mb"), ("peak RSS growth MB", "peak_mb"), ("peak / weights", "ratio")]
    from foley_dist.models.hunyuan_cost import param_count

    title = (f"DiT load, hidden {args.hidden}, {args.triple} + {args.single} blocks "
             f"({param_count(spec.dit) / 1e6:.0f} M parameters), CPU")
    benchio.emit(rows, columns, args.json, title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
