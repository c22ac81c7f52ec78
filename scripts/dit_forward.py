#!/usr/bin/env python
"""One fp32 CPU forward of the HunyuanVideo-Foley DiT: reference outputs for parity checks.

usage: dit_forward.py CONFIG.json WEIGHTS.safetensors INPUTS.safetensors OUTPUT.safetensors
CONFIG holds {"model_kwargs": {...}} (as tests/data/reference/hvf_tiny_config.json); INPUTS holds x, t,
cond, clip_feat, sync_feat; OUTPUT gets the predicted velocity as tensor `out`.
"""

from __future__ import annotations

import argparse
import sys

import torch
from safetensors.torch import save_file

from foley_dist.errors import FoleyError
from foley_dist.models.checkpoint import load_into, load_state_dict
from foley_dist.models.hunyuan_dit import HunyuanDiT, HunyuanDiTConfig

INPUTS = ("x", "t", "cond", "clip_feat", "sync_feat")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("weights")
    parser.add_argument("inputs")
    parser.add_argument("output")
    args = parser.parse_args(argv)

    with torch.device("meta"):
        model = HunyuanDiT(HunyuanDiTConfig.from_file(args.config))
    load_into(model, load_state_dict(args.weights), "DiT", source=args.weights)
    inputs = load_state_dict(args.inputs)
    missing = [name for name in INPUTS if name not in inputs]
    if missing:
        raise FoleyError(f"inputs {args.inputs} lack tensors {missing} (need {list(INPUTS)})")
    with torch.inference_mode():
        out = model.eval()(*(inputs[name].float() for name in INPUTS))
    save_file({"out": out.contiguous()}, args.output)


if __name__ == "__main__":
    try:
        main()
    except FoleyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
