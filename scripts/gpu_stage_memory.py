#!/usr/bin/env python
"""GPU memory of each stage next to `foley-dist plan`'s figures, and the DiT step time.

usage: python scripts/gpu_stage_memory.py --video CLIP [--model hunyuan_xl] [--precision auto] [--json OUT]

Builds each stage in turn on cuda:0 exactly as a rank does (runtime.build_stages), with random
weights of the release sizes (SigLIP2, Synchformer and CLAP at their release sizes, the DiT from the
built-in release config in the run's precision; no checkpoint needed), runs one segment of CLIP
through it, and compares like with like (issue 17 item 9):

- weights: PyTorch's allocations after the build, against the plan's weights;
- peak: the largest allocation while the stage runs, the peak counter reset after the build (build
  transients are not the stage's working set), against the plan's weights + activations. Neither
  side counts the CUDA context;
- NVML: what the driver shows for this process while the stage is built and runs (sampled on a
  thread, the GPU found by UUID): CUDA context, allocator cache and all, against the plan's figure
  with its CUDA context.

Then times one DiT forward (CFG batch 2, 5 s of latents) with CUDA events. Run by scripts/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import benchio
import torch

from foley_dist.config import GenerateConfig, ModelConfig
from foley_dist.engine.message import Message
from foley_dist.engine.metrics import NvmlSampler
from foley_dist.models.foley import ModelSpec
from foley_dist.planning.estimates import CUDA_CONTEXT
from foley_dist.planning.plan import PlanConfig, make_plan
from foley_dist.runtime import build_stages
from foley_dist.stages import DiffusionStage

STEPS = 10
GB = 1e9


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


def measure(name: str, cfg: GenerateConfig, spec: ModelSpec, device: torch.device, msg: Message,
            planned: dict) -> tuple[dict, Message, DiffusionStage | None]:
    """One stage: built alone on an emptied allocator, then run on `msg`."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)  # the previous stage's output message
    nvml = NvmlSampler(device, period=0.05)
    wall = time.perf_counter()
    [stage] = build_stages((name,), cfg, spec, device, {})
    torch.cuda.synchronize(device)
    built = time.perf_counter() - wall
    weights = torch.cuda.memory_allocated(device) - before
    torch.cuda.reset_peak_memory_stats(device)
    wall = time.perf_counter()
    out = stage(msg)
    torch.cuda.synchronize(device)
    ran = time.perf_counter() - wall
    peak = torch.cuda.max_memory_allocated(device) - before
    figures = nvml.stop()
    row = {"stage": name, "weights_gb": weights / GB, "plan_weights_gb": planned["weights"] / GB,
           "peak_gb": peak / GB, "plan_peak_gb": (planned["gpu_bytes"] - CUDA_CONTEXT) / GB,
           "nvml_gb": figures.used_peak_bytes / GB if figures else None, "plan_gb": planned["gpu_bytes"] / GB,
           "build_s": built, "run_s": ran}
    return row, out, stage if name == "diffusion" else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--model", default="hunyuan_xl", choices=("hunyuan_xl", "hunyuan_xxl"))
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json", default="out/gpu_stage_memory.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda:0")
    # Named "tiny", build_parts initialises the parts at random instead of reading a release folder;
    # the configs (and so the sizes) stay the release's.
    spec = dataclasses.replace(ModelSpec.named(args.model), name="tiny")
    cfg = GenerateConfig(video=args.video, model=ModelConfig(steps=STEPS))
    cfg.vision.cache, cfg.hardware.precision = "off", args.precision
    plan = make_plan(PlanConfig(video=args.video, gpus=1, gpu_memory="1000GB", precision=args.precision,
                                model=ModelConfig(name=args.model, steps=STEPS)))
    msg = Message(0, {}, {"job": 0, "video": args.video, "prompt": "footsteps on gravel", "seed": 0,
                          "segment": 0, "start": 0.0, "end": 5.0})
    rows, diffusion = [], None
    for name in ("vision", "fusion", "diffusion"):
        cond = {k: msg.tensors[k] for k in ("text", "visual", "sync")} if name == "diffusion" else None
        row, msg, diffusion = measure(name, cfg, spec, device, msg, plan["stages"][name])
        if diffusion is not None:
            row["dit_step_ms"] = 1000 * step_time(diffusion, cond, msg.tensors["latents"].shape[-1])
            row["dit_dtype"] = str(next(diffusion.dit.parameters()).dtype)
        rows.append(row)
    columns = [("stage", "stage"), ("weights GB", "weights_gb"), ("plan weights GB", "plan_weights_gb"),
               ("peak GB (allocated)", "peak_gb"), ("plan GB (no context)", "plan_peak_gb"),
               ("NVML GB (process)", "nvml_gb"), ("plan GB", "plan_gb"), ("build s", "build_s"), ("run s", "run_s"),
               ("DiT step ms (CFG batch 2)", "dit_step_ms"), ("DiT dtype", "dit_dtype")]
    title = (f"model {args.model} (random weights, release sizes), precision {plan['precision']}, "
             f"1 segment of {args.video}, {torch.cuda.get_device_name(device)}")
    benchio.emit(rows, columns, args.json, title=title,
                 payload={"model": args.model, "precision": plan["precision"], "stages": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
