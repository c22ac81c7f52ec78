"""Any GPU size (issue 19): what fits where, the DiT's weight bytes per option, fp8 error, bit-identity
of block ranges and offload, and the offload overhead on this machine.

1. `foley-dist plan` for XL and XXL (1080p, 60 s) over 1x8, 2x8, 4x8, 1x12, 1x16, 1x24 and 8x80 GB:
   each memory option's fit, largest rank and the job's time per segment relative to the plain
   layout (the planner's time model: an estimate until measured on hardware), the fastest layer
   split that fits, and the option it chooses with its per-rank memory.
2. Per-rank DiT weight bytes (bf16) under each option, exact counts from the configs: unsplit, and
   split over N = 2, 4, 8 ranks (block_ranges, balanced by FLOPs; the first rank adds the embedders,
   the last the final layer, the condition projections stay on the fusion rank), with fp8 and offload.
3. fp8 error against bf16 weights (relative L2: weights, first velocity, latents, audio) on the
   tiny model and the mid-size random DiT of scripts/bench_api.py.
4. Block ranges [0, a) + [a, n) and block offload against the plain forward: bit-equal or not.
5. Offload overhead on CPU (mid-size DiT, 5 s, CFG batch): median wall and CPU seconds of a
   velocity call with and without offload. On CPU the "device" copy is a memcpy; the GPU figure
   (PCIe copies overlapped with compute) needs a GPU.

    python scripts/bench_gpu_size.py [--json out/bench_gpu_size.json] [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import benchio
import torch

from foley_dist.config import ModelConfig
from foley_dist.errors import DoesNotFit
from foley_dist.models.dit_memory import dit_bytes, fp8_error
from foley_dist.models.foley import ModelSpec, build_parts, random_part
from foley_dist.models.hunyuan_cost import block_ranges
from foley_dist.models.hunyuan_dit import HunyuanDiTConfig
from foley_dist.planning.memory_options import MemoryOption, dit_memory
from foley_dist.planning.plan import PlanConfig, make_plan

GPUS = [(1, 8), (2, 8), (4, 8), (1, 12), (1, 16), (1, 24), (8, 80)]
OPTIONS = ("plain", "fp8", "offload", "fp8+offload")
GB = 1e9


def _cell(o: dict) -> str:
    return f"{o['largest_rank_bytes'] / GB:.1f} GB, {o['relative_time']:.2f}x" if o["fits"] else "no"


def mid_spec() -> ModelSpec:
    """The mid-size DiT of scripts/bench_api.py (4 + 8 blocks, hidden 512) with the tiny encoders."""
    mid = dataclasses.replace(HunyuanDiTConfig.tiny(), depth_triple_blocks=4, depth_single_blocks=8, hidden_size=512,
                              num_heads=8)
    return dataclasses.replace(ModelSpec.named("tiny"), dit=mid)


def fit_rows() -> list[dict]:
    rows = []
    for model in ("hunyuan_xl", "hunyuan_xxl"):
        for gpus, memory in GPUS:
            cfg = PlanConfig(resolution="1080p", duration=60.0, gpus=gpus, gpu_memory=f"{memory}GB", model=ModelConfig(name=model))
            row = {"model": model, "gpus": f"{gpus}x{memory} GB"}
            try:
                plan = make_plan(cfg)
            except DoesNotFit as e:
                rows.append({**row, "chosen": f"none: {e}"})
                continue
            options = {o["option"]: o for o in plan["options"]}
            chosen = options[plan["memory_option"]["name"]]
            splits = [o for o in options.values() if o["option"].startswith("split") and o["fits"]]
            fastest = min(splits, key=lambda o: o["relative_time"], default=None)
            row.update(chosen=chosen["option"], layout=" ".join(plan["layout"]),
                       rank_gb=" / ".join(f"{r['gpu_bytes'] / GB:.1f}" for r in plan["ranks"]),
                       time_vs_plain=chosen["relative_time"],
                       split=f"{fastest['option']}: {_cell(fastest)}" if fastest else "-" if gpus < 3 else "no")
            row.update({name: _cell(options[name]) for name in OPTIONS})
            rows.append(row)
    return rows


def weight_rows() -> list[dict]:
    """Per-rank DiT bytes as the planner counts them (memory_options.dit_memory)."""
    rows = []
    for size in ("xxl", "xl"):
        spec = dataclasses.replace(ModelSpec.named("tiny"), dit=HunyuanDiTConfig.builtin(size))
        whole = dit_bytes(spec.dit, torch.bfloat16).total
        for n in (1, 2, 4, 8):
            for option in (MemoryOption(False, False, n), MemoryOption(True, False, n), MemoryOption(False, True, n),
                           MemoryOption(True, True, n)):
                device, host = zip(*(dit_memory(spec, "bf16", option, 5.0, j) for j in range(n)))
                rows.append({"model": size, "option": option.name, "ranks": n, "device_bytes": list(device),
                             "host_bytes": list(host), "largest_gb": max(device) / GB, "of_plain": max(device) / whole,
                             "ranges": " ".join(f"[{a},{b})" for a, b in block_ranges(spec.dit, n)) if n > 1 else ""})
    return rows


def error_rows() -> list[dict]:
    rows = []
    for name, spec in (("tiny", ModelSpec.named("tiny")), ("mid", mid_spec())):
        dit, vae = random_part(spec, "dit", 0).eval(), random_part(spec, "vae", 0).eval()
        rows.append({"model": name, "params_m": sum(p.numel() for p in dit.parameters()) / 1e6,
                     **fp8_error(dit, vae, seconds=2.0, steps=6)})
    return rows


def inputs(spec: ModelSpec, seconds: float) -> tuple:
    cfg, gen = spec.dit, torch.Generator().manual_seed(0)
    frames, visual, sync = round(seconds * 50), round(seconds * 8), round(seconds * 3) * 8
    return (torch.randn(2, cfg.audio_vae_latent_dim, frames, generator=gen), torch.full((2,), 500.0),
            torch.randn(2, cfg.text_length, cfg.condition_dim, generator=gen),
            torch.randn(2, visual, cfg.clip_dim, generator=gen), torch.randn(2, sync, cfg.sync_feat_dim, generator=gen))


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of `fn()`."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


@torch.inference_mode()
def identity_and_overhead(repeats: int) -> tuple[list[dict], list[dict]]:
    identity, overhead = [], []
    device = torch.device("cpu")
    for name, spec in (("tiny", ModelSpec.named("tiny")), ("mid", mid_spec())):
        x, t, *feats = inputs(spec, 5.0)
        plain = build_parts(spec, ("dit",), ModelConfig(), device)["dit"]
        streamed = build_parts(spec, ("dit",), ModelConfig(), device, offload=True)["dit"]
        cond = plain.condition(*feats)
        whole = plain.velocity(x, t, cond)
        ctx = plain.context(cond, x.shape[2])
        half = plain.num_blocks // 2
        state = plain.run_blocks(plain.embed(x, t, ctx), ctx, 0, half)
        ranges = plain.finish(plain.run_blocks(state, ctx, half, plain.num_blocks))
        identity.append({"model": name, "ranges": f"[0,{half})+[{half},{plain.num_blocks})",
                         "ranges_bit_equal": torch.equal(ranges, whole),
                         "offload_bit_equal": torch.equal(streamed.velocity(x, t, cond), whole)})
        if name == "mid":
            base = timed(lambda: plain.velocity(x, t, cond), repeats)
            off = timed(lambda: streamed.velocity(x, t, cond), repeats)
            overhead.append({"model": name, "seconds": 5.0, "threads": torch.get_num_threads(),
                             "plain_wall_s": base[0], "offload_wall_s": off[0], "plain_cpu_s": base[1],
                             "offload_cpu_s": off[1], "overhead_wall": off[0] / base[0] - 1,
                             "overhead_cpu": off[1] / base[1] - 1,
                             "block_bytes_copied_per_call": streamed.block_source.host_bytes})
    return identity, overhead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    fits, weights = fit_rows(), weight_rows()
    benchio.emit(fits, [("model", "model"), ("GPUs", "gpus"), ("chosen", "chosen"), ("rank GB", "rank_gb"),
                        ("time vs plain (est.)", "time_vs_plain"), *[(o, o) for o in OPTIONS],
                        ("fastest split", "split"), ("layout", "layout")],
                 title="1. What fits (1080p, 60 s, bf16; cells: largest rank, the job's predicted time per segment "
                       "vs the plain layout on GPUs large enough)")
    benchio.emit(weights, [("model", "model"), ("option", "option"), ("ranks", "ranks"),
                           ("DiT GPU bytes per rank", lambda r: " ".join(f"{b:,}" for b in r["device_bytes"])),
                           ("largest GB", "largest_gb"), ("of plain", "of_plain"),
                           ("pinned host bytes per rank", lambda r: " ".join(f"{b:,}" for b in r["host_bytes"])),
                           ("block ranges", "ranges")],
                 title="2. Per-rank DiT weight bytes, bf16 (exact, from the configs)", digits=3)
    errors = error_rows()
    benchio.emit(errors, [("model", "model"), ("DiT M params", "params_m"), ("weights", "weights"),
                          ("first velocity", "velocity"), ("latents (6 steps)", "latents"), ("audio", "audio")],
                 title="3. fp8 vs bf16 weights, relative L2 (random weights, 2 s, guidance 4.5)", digits=6)
    identity, overhead = identity_and_overhead(args.repeats)
    benchio.emit(identity, [("model", "model"), ("ranges", "ranges"), ("ranges bit-equal", "ranges_bit_equal"),
                            ("offload bit-equal", "offload_bit_equal")], title="4. Bit-identity against the plain forward (CPU)")
    benchio.emit(overhead, [("model", "model"), ("threads", "threads"), ("plain s", "plain_wall_s"),
                            ("offload s", "offload_wall_s"), ("plain CPU s", "plain_cpu_s"), ("offload CPU s", "offload_cpu_s"),
                            ("overhead (wall)", lambda r: f"{r['overhead_wall']:+.1%}"),
                            ("overhead (CPU)", lambda r: f"{r['overhead_cpu']:+.1%}"),
                            ("bytes copied / call", "block_bytes_copied_per_call")],
                 args.json, title=f"5. Offload overhead on CPU, one velocity call (median of {args.repeats})", digits=3,
                 payload={"fits": fits, "weights": weights, "fp8_error": errors, "identity": identity, "offload_cpu": overhead})


if __name__ == "__main__":
    main()
