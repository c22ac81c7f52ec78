"""Check foley_dist.planning.plan's memory estimates against the measured peak RSS of each stage on CPU.

Each (model, stage) runs in a fresh process: import foley_dist.stages, read RSS (the framework
baseline) and reset the peak mark (/proc/self/clear_refs: ru_maxrss cannot be reset, so an import
transient could hide a smaller working set), build the stage's parts (random weights), read RSS and
reset again, run the stage on one 5 s segment of a 640x360 clip, read the peak (VmHWM). Measured
figures are deltas over the import baseline, and so are the estimates (StageEstimate.cpu_rss minus
FRAMEWORK_RSS): the framework constant is reported apart and cannot flatter the comparison.

Every run is made twice: with a fixed glibc mmap threshold (RSS follows the tensors; the estimates
are fitted to these) and with glibc's default (what a CPU rank sees; reported for reference).
Models: `tiny`, and `mid`, the HunyuanVideo-Foley layout at real frame sizes and token counts with
fewer layers, a hidden-512 DiT and a half-width audio decoder, small enough for a 2-core CPU.

    python scripts/calibrate_plan.py [--json out/calibration.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import benchio

from foley_dist.engine.metrics import peak_rss_since_reset, reset_peak_rss
from foley_dist.models.clap import TextEncoderConfig
from foley_dist.models.dac_vae import DacDecoderConfig
from foley_dist.models.foley import ModelSpec
from foley_dist.models.hunyuan_config import HunyuanDiTConfig
from foley_dist.models.siglip import VisualEncoderConfig
from foley_dist.models.synchformer import SyncEncoderConfig
from foley_dist.models.tokenizer import TINY_VOCAB_SIZE

SECONDS = 5.0
CLIP_SIZE = (640, 360)
STEPS = 2  # memory does not depend on the step count; time does
MB = 1e6
# glibc raises its mmap threshold after each large free (up to 32 MiB), so later tensors of that size
# come from the heap and their pages stay resident after free: RSS then depends on allocation
# history. A fixed threshold returns every large tensor to the OS on free, so RSS follows the tensors.
ALLOCATORS = {"tensors": {"MALLOC_MMAP_THRESHOLD_": "131072"}, "glibc": {}}


def mid_spec() -> ModelSpec:
    """Real encoder resolutions and widths (512 px SigLIP, 224 px Synchformer, 768-wide CLAP), 2-4
    layers each; DiT hidden 512 with 4 triple + 8 single blocks; audio decoder at half the release width."""
    return ModelSpec(
        "mid",
        VisualEncoderConfig(layers=2),
        SyncEncoderConfig(depth=2),
        TextEncoderConfig(vocab_size=TINY_VOCAB_SIZE, layers=4),
        HunyuanDiTConfig(depth_triple_blocks=4, depth_single_blocks=8, hidden_size=512, num_heads=8,
                         depth_single_ssl_encoder=1),
        DacDecoderConfig(decoder_dim=1024),
    )


SPECS = {"tiny": lambda: ModelSpec.named("tiny"), "mid": mid_spec}


def child(model: str, stage: str, clip: str) -> None:
    """Measure one stage in this (fresh) process; prints one JSON line."""
    import torch

    from foley_dist.config import VisionConfig
    from foley_dist.engine.message import Message
    from foley_dist.models.clap import TextEncoder
    from foley_dist.models.dac_vae import AudioDecoder
    from foley_dist.models.hunyuan_dit import HunyuanDiT
    from foley_dist.models.siglip import VisualEncoder
    from foley_dist.models.synchformer import SyncEncoder
    from foley_dist.stages import DiffusionStage, FusionStage, VisionStage

    torch.set_num_threads(1)  # the runtime's default (hardware.threads=1)
    spec, cpu = SPECS[model](), torch.device("cpu")
    meta = {"job": 0, "video": clip, "segment": 0, "start": 0.0, "end": SECONDS, "seed": 0, "prompt": "rain on a tin roof"}
    baseline = reset_peak_rss()
    torch.manual_seed(0)
    with torch.inference_mode():
        if stage == "vision":
            run = VisionStage(spec, VisualEncoder.from_config(spec.visual), SyncEncoder(spec.sync), "pyav", cpu,
                              VisionConfig(cache="off"), model)
            msg = Message(0, {}, meta)
        elif stage == "fusion":
            text = TextEncoder.from_config(spec.text, fixed_length=False)
            run = FusionStage(spec, text, HunyuanDiT(spec.dit), "noisy, harsh")
            tokens = {"clip_feat": round(SECONDS * spec.visual_fps), "sync_feat": round(SECONDS * 24)}
            msg = Message(0, {k: torch.randn(1, n, 768) for k, n in tokens.items()}, meta)
        else:
            dit = HunyuanDiT(spec.dit)
            run = DiffusionStage(spec, dit, AudioDecoder(spec.vae), STEPS, 4.5, cpu, None)
            d = spec.dit
            cond = dit.condition(torch.randn(2, d.text_length, d.condition_dim), torch.randn(2, round(SECONDS * 8), d.clip_dim),
                                 torch.randn(2, round(SECONDS * 24), d.sync_feat_dim))
            msg = Message(0, cond, meta)
        run.eval().requires_grad_(False)
        built = reset_peak_rss()
        run(msg)
    print(json.dumps({"baseline": baseline, "built": built, "peak": peak_rss_since_reset()}))


def measure(model: str, stage: str, clip: str, allocator: str) -> dict:
    env = {**os.environ, **ALLOCATORS[allocator]}
    out = subprocess.run([sys.executable, __file__, "--child", model, stage, clip], capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"{model} {stage} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(rows: list[dict]) -> tuple[float, float, float]:
    """(overhead MB, factor, worst relative error) minimising the worst error of
    weights + overhead + factor * structural work against the measured totals (grid search)."""
    best = (0.0, 1.0, float("inf"))
    for overhead in (o / 2 for o in range(81)):
        for factor in (f / 100 for f in range(90, 151)):
            worst = max(abs((r["weights_est_mb"] + overhead + factor * r["cpu_work_structural_mb"]) / r["measured_mb"] - 1)
                        for r in rows)
            if worst < best[2]:
                best = (overhead, factor, worst)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from foley_dist.engine.schedule import STAGES
    from foley_dist.media.testclip import make_clip
    from foley_dist.planning import estimates

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = str(make_clip(Path(tmp) / "clip.mp4", seconds=SECONDS, width=CLIP_SIZE[0], height=CLIP_SIZE[1], fps=25))
        for model in args.models:
            est = estimates.estimate_stages(SPECS[model](), "fp32", SECONDS, *CLIP_SIZE, STEPS, 4.5)
            for stage in STAGES:
                e, m = est[stage], {a: measure(model, stage, clip, a) for a in ALLOCATORS}
                t, g = m["tensors"], m["glibc"]
                work = e.cpu_rss() - estimates.FRAMEWORK_RSS - e.weights
                rows.append({
                    "model": model, "stage": stage, "framework_rss_mb": g["baseline"] / MB,
                    "cpu_work_structural_mb": e.cpu_work / MB, "weights_est_mb": e.weights / MB, "weights_meas_mb": (t["built"] - t["baseline"]) / MB,
                    "work_est_mb": work / MB, "work_meas_mb": (t["peak"] - t["built"]) / MB,
                    "estimate_mb": (e.weights + work) / MB, "measured_mb": (t["peak"] - t["baseline"]) / MB,
                    "glibc_measured_mb": (g["peak"] - g["baseline"]) / MB,
                })
                rows[-1]["error"] = rows[-1]["estimate_mb"] / rows[-1]["measured_mb"] - 1
                print(f"{model} {stage}: measured {rows[-1]['measured_mb']:.1f} MB", file=sys.stderr, flush=True)  # progress

    def pair(est: str, meas: str):
        return lambda r: f"{r[est]:.1f} / {r[meas]:.1f}"

    columns = [("model", "model"), ("stage", "stage"), ("weights MB est / meas", pair("weights_est_mb", "weights_meas_mb")),
               ("work MB est / meas", pair("work_est_mb", "work_meas_mb")), ("total MB est / meas", pair("estimate_mb", "measured_mb")),
               ("error", lambda r: f"{r['error']:+.1%}"), ("glibc default MB", lambda r: f"{r['glibc_measured_mb']:.1f}"),
               ("import baseline MB", lambda r: f"{r['framework_rss_mb']:.0f}")]
    benchio.emit(rows, columns, args.json,
                 payload={"rows": rows, "framework_rss": estimates.FRAMEWORK_RSS, "runtime_overhead": estimates.RUNTIME_OVERHEAD,
                          "activation_factor": estimates.ACTIVATION_FACTOR})
    overhead, factor, worst = fit(rows)
    print(f"best fit over these rows: RUNTIME_OVERHEAD {overhead:.1f} MB, ACTIVATION_FACTOR {factor:.2f} "
          f"(worst error {worst:.1%})")
    print(f"estimate / measured peak RSS over the import baseline, MB (fixed mmap threshold: RSS follows the tensors); "
          f"worst error {max(abs(r['error']) for r in rows):.1%}\nconstants: FRAMEWORK_RSS {estimates.FRAMEWORK_RSS / MB:.0f} MB, "
          f"RUNTIME_OVERHEAD {estimates.RUNTIME_OVERHEAD / MB:.0f} MB, ACTIVATION_FACTOR {estimates.ACTIVATION_FACTOR}")


if __name__ == "__main__":
    main()
