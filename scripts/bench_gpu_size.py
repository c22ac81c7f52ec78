"""Any GPU size (issue 19): what fits where, the DiT's weight bytes per option, fp8 error, bit-identity
of block ranges and offload, and the offload overhead on this machine.

1. `foley-dist plan` for XL and XXL (1080p, 60 s) over 1x8, 2x8, 4x8, 1x12, 1x16, 1x24 and 8x80 GB:
   each memory option's fit, largest rank and time per segment relative to plain (the planner's
   time model: an estimate until measured on hardware), and the option it chooses.
2. Per-rank DiT weight bytes (bf16) under each option, exact counts from the configs. A layer split
   over k ranks (contiguous block ranges balanced by bytes) is listed for reference; it does not
   run yet (the engine's per-step messages between split ranks are missing).
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
from foley_dist.models.hunyuan_dit import HunyuanDiTConfig
from foley_dist.planning.plan import PlanConfig, make_plan

GPUS = [(1, 8), (2, 8), (4, 8), (1, 12), (1, 16), (1, 24), (8, 80)]
OPTIONS = ("plain", "fp8", "offload", "fp8+offload")
GB = 1e9


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
            row.update(chosen=plan["memory_option"]["name"], layout=" ".join(plan["layout"]),
                       largest_rank_gb=max(r["gpu_bytes"] for r in plan["ranks"]) / GB,
                       time_vs_plain=options[plan["memory_option"]["name"]]["relative_time"])
            for name in OPTIONS:
                o = options[name]
                row[name] = f"{o['largest_rank_bytes'] / GB:.1f} GB, {o['relative_time']:.2f}x" if o["fits"] else "no"
            rows.append(row)
    return rows


def split_ranks(blocks: tuple[int, ...], k: int) -> list[range]:
    """Contiguous ranges of `blocks` over k ranks, each closing once it reaches 1/k of the bytes."""
    target, ranges, start, acc = sum(blocks) / k, [], 0, 0
    for i, b in enumerate(blocks):
        acc += b
        if acc >= target * (len(ranges) + 1) and len(ranges) < k - 1:
            ranges.append(range(start, i + 1))
            start = i + 1
    return ranges + [range(start, len(blocks))]


def weight_rows() -> list[dict]:
    rows = []
    for size in ("xxl", "xl"):
        cfg = HunyuanDiTConfig.builtin(size)
        for fp8 in (False, True):
            b = dit_bytes(cfg, torch.bfloat16, fp8)
            name = "fp8" if fp8 else "plain"
            diffusion = b.total  # a diffusion rank builds the whole DiT (its condition projections serve fusion too)
            rows.append({"model": size, "option": name, "ranks": 1, "device_bytes": diffusion, "host_bytes": 0})
            offload = b.total - sum(b.blocks) + b.streamed
            rows.append({"model": size, "option": f"{name}+offload".replace("plain+", ""), "ranks": 1,
                         "device_bytes": offload, "host_bytes": sum(b.blocks)})
            for k in (2, 4, 8):
                parts = split_ranks(b.blocks, k)
                per_rank = [sum(b.blocks[i] for i in r) + (b.embed if r.start == 0 else 0)
                            + (b.finish if r.stop == len(b.blocks) else 0) for r in parts]
                rows.append({"model": size, "option": f"{name} split (not yet runnable)", "ranks": k,
                             "device_bytes": max(per_rank), "host_bytes": 0,
                             "ranges": " ".join(f"[{r.start},{r.stop})" for r in parts)})
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
    benchio.emit(fits, [("model", "model"), ("GPUs", "gpus"), ("chosen", "chosen"), ("largest rank GB", "largest_rank_gb"),
                        ("time vs plain (est.)", "time_vs_plain"), *[(o, o) for o in OPTIONS], ("layout", "layout")],
                 title="1. What fits (1080p, 60 s, bf16; cells: largest rank, predicted time per segment vs plain)")
    benchio.emit(weights, [("model", "model"), ("option", "option"), ("ranks", "ranks"),
                           ("DiT GPU bytes / rank", "device_bytes"), ("DiT GB / rank", lambda r: r["device_bytes"] / GB),
                           ("pinned host bytes", "host_bytes"), ("block ranges", "ranges")],
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
