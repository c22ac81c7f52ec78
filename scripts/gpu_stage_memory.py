#!/usr/bin/env python
"""Peak GPU memory of each stage next to `foley-dist plan`'s figure, and the DiT step time.

usage: python scripts/gpu_stage_memory.py --video CLIP [--model hunyuan_xl] [--precision auto] [--json OUT]

Builds each stage in turn on cuda:0 with random weights of the real sizes (no checkpoint needed:
SigLIP2, Synchformer and CLAP at their release sizes, the DiT from the built-in release config,
cast to bf16 as the release does), runs one segment of CLIP through it, and records
torch.cuda.max_memory_allocated while that stage is built and runs. Then times one DiT forward
(CFG batch 2, 5 s of latents) with CUDA events. Run by scripts/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from foley_dist.config import ModelConfig, VisionConfig
from foley_dist.engine.message import Message
from foley_dist.models.foley import ModelSpec, random_part
from foley_dist.planning.plan import PlanConfig, make_plan
from foley_dist.runtime import autocast_dtype, sync_autocast_dtype
from foley_dist.stages import DiffusionStage, FusionStage, VisionStage

STEPS = 10


def build(spec: ModelSpec, parts: tuple[str, ...], device: torch.device, dit_dtype: torch.dtype) -> dict:
    out = {}
    for part in parts:
        module = random_part(spec, part, 0, device)
        dtype = dit_dtype if part in ("dit", "dit_condition") else torch.float32
        out[part] = module.to(device, dtype).eval().requires_grad_(False)
    return out


def make_stage(name: str, spec: ModelSpec, device: torch.device, precision: str) -> torch.nn.Module:
    dit_dtype = autocast_dtype(precision, device) or torch.float32
    if name == "vision":
        p = build(spec, ("visual", "sync"), device, dit_dtype)
        return VisionStage(spec, p["visual"], p["sync"], "pyav", device, VisionConfig(cache="off"), "random",
                           sync_autocast_dtype(precision, device))
    if name == "fusion":
        p = build(spec, ("text", "dit_condition"), device, dit_dtype)
        return FusionStage(spec, p["text"], p["dit_condition"], "noisy, harsh", autocast_dtype(precision, device))
    p = build(spec, ("dit", "vae"), device, dit_dtype)
    return DiffusionStage(spec, p["dit"], p["vae"], STEPS, 4.5, device, autocast_dtype(precision, device))


def step_time(stage: DiffusionStage, cond: dict[str, torch.Tensor], frames: int) -> float:
    """Seconds per DiT forward on the CFG batch of 2 (median of 5 after 2 warm-ups)."""
    x = torch.randn(2, stage.spec.dit.audio_vae_latent_dim, frames, device=stage.device)
    t = torch.full((2,), 500.0, device=stage.device)
    times = []
    with torch.inference_mode(), torch.autocast("cuda", stage.autocast_dtype or torch.float32,
                                                enabled=stage.autocast_dtype is not None):
        for i in range(7):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            stage.dit.velocity(x, t, cond)
            end.record()
            torch.cuda.synchronize()
            if i >= 2:
                times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--model", default="hunyuan_xl", choices=("hunyuan_xl", "hunyuan_xxl"))
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda:0")
    spec = ModelSpec.named(args.model)
    plan = make_plan(PlanConfig(video=args.video, gpus=1, gpu_memory="1000GB", precision=args.precision,
                                model=ModelConfig(name=args.model, steps=STEPS)))
    msg = Message(0, {}, {"job": 0, "video": args.video, "prompt": "footsteps on gravel", "seed": 0,
                          "segment": 0, "start": 0.0, "end": 5.0})
    rows = []
    for name in ("vision", "fusion", "diffusion"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)  # the previous stage's output message
        wall = time.perf_counter()
        stage = make_stage(name, spec, device, args.precision)
        built = time.perf_counter() - wall
        cond = None
        if name == "diffusion":
            cond = {k: msg.tensors[k] for k in ("text", "visual", "sync")}
        msg = stage(msg)
        torch.cuda.synchronize()
        row = {"stage": name, "peak_gb": (torch.cuda.max_memory_allocated(device) - base) / 1e9,
               "plan_gb": plan["stages"][name]["gpu_bytes"] / 1e9, "build_s": built,
               "run_s": time.perf_counter() - wall - built}
        if cond is not None:
            row["dit_step_s"] = step_time(stage, cond, msg.tensors["latents"].shape[-1])
            row["dit_dtype"] = str(next(stage.dit.parameters()).dtype)
        rows.append(row)
        del stage
    print(f"model {args.model} (random weights, release sizes), precision {plan['precision']}, 1 segment of {args.video}")
    print(f"{'stage':<10} {'peak GB':>8} {'plan GB':>8} {'build s':>8} {'run s':>7}")
    for r in rows:
        print(f"{r['stage']:<10} {r['peak_gb']:>8.2f} {r['plan_gb']:>8.2f} {r['build_s']:>8.1f} {r['run_s']:>7.2f}")
    diffusion = rows[-1]
    print(f"DiT forward (CFG batch 2, {diffusion['dit_dtype']} weights): {diffusion['dit_step_s'] * 1000:.1f} ms per step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "precision": plan["precision"], "stages": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
