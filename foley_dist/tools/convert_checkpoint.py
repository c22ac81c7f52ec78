"""Convert a torch checkpoint (.pth/.pt) into safetensors, e.g. the official hunyuanvideo_foley.pth.

usage: foley-dist convert [--fp8] IN.pth OUT.safetensors
The input is read with weights_only=True (a pickle holding anything but tensors is refused); a state
dict nested under "state_dict"/"model"/... is unwrapped. An audiotools checkpoint's stored
hyper-parameters (vae_128d_48k.pth: metadata.kwargs) are kept as JSON in the header metadata
"kwargs", where the VAE loader reads them. The output appears atomically (temp + rename).
--fp8 (a DiT checkpoint): the blocks' matmul weights as e4m3 + per-channel scales, everything else
bf16 (models/fp8.py); hardware.weights=fp8 loads such a file without converting again.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from foley_dist.errors import FoleyError
from foley_dist.models.checkpoint import PICKLE_SUFFIXES, load_state_dict, stored_kwargs
from foley_dist.models.fp8 import fp8_state_dict, is_fp8_state


def savable(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous tensors, none sharing storage (safetensors stores each tensor separately)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out


def convert(src: Path, dst: Path, fp8: bool = False) -> int:
    state = load_state_dict(src)
    if fp8:
        if is_fp8_state(state):
            raise FoleyError(f"{src} already holds fp8 weights; nothing to convert")
        state = fp8_state_dict(state)
    state = savable(state)
    metadata = {"format": "pt", "source": src.name, **({"weights": "fp8"} if fp8 else {})}
    kwargs = stored_kwargs(src) if src.suffix.lower() in PICKLE_SUFFIXES else None
    if kwargs is not None:
        metadata["kwargs"] = json.dumps(kwargs)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return len(state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="foley-dist convert", description=__doc__.splitlines()[0])
    parser.add_argument("--fp8", action="store_true", help="DiT blocks as fp8 e4m3 weights + scales (hardware.weights=fp8)")
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args(argv)
    if args.dst.suffix != ".safetensors":
        raise FoleyError(f"output {args.dst} should end in .safetensors")
    count = convert(args.src, args.dst, args.fp8)
    print(f"wrote {count} tensors to {args.dst}")
    return 0
