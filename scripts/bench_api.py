"""Model load time vs per-call time through the Python API (FoleyPipeline keeps parts between calls).

Times, in one process: `from_pretrained` (config only), the first call (builds every model part, then
runs), and the median of the later calls (inference only). Models: the built-in tiny model and a
mid-size random DiT given as a release-format config (`model.config`, hidden 512, 4 + 8 blocks,
the tiny encoders around it).

    python scripts/bench_api.py [--calls 3 --steps 10 --json out/bench_api.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import benchio
import yaml

from foley_dist import FoleyPipeline
from foley_dist.media.testclip import make_clip
from foley_dist.models.hunyuan_config import HunyuanDiTConfig


def mid_config(folder: Path) -> Path:
    dit = dataclasses.replace(HunyuanDiTConfig.tiny(), depth_triple_blocks=4, depth_single_blocks=8, hidden_size=512,
                              num_heads=8)
    path = folder / "mid.yaml"
    path.write_text(yaml.safe_dump({"model_config": {"model_kwargs": dataclasses.asdict(dit)}}))
    return path


def measure(name: str, settings: dict, clip: Path, calls: int, steps: int) -> dict:
    start = time.perf_counter()
    pipe = FoleyPipeline.from_pretrained("tiny", progress=False, seam_metric=False, **{"vision.cache": "off"}, **settings)
    configured = time.perf_counter() - start
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        pipe(clip, "rain on a tin roof", num_inference_steps=steps)
        times.append(time.perf_counter() - t)
    params = sum(p.numel() for m in pipe._parts.values() for p in m.parameters())
    later = statistics.median(times[1:])
    return {"model": name, "params_m": round(params / 1e6, 1), "from_pretrained_s": round(configured, 3),
            "first_call_s": round(times[0], 3), "later_call_median_s": round(later, 3),
            "load_s": round(times[0] - later, 3), "calls": calls, "steps": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = make_clip(tmp / "clip.mp4", seconds=5, width=320, height=240, fps=25)
        rows = [measure("tiny", {}, clip, args.calls, args.steps),
                measure("mid (random DiT, hidden 512)", {"model.config": str(mid_config(tmp))}, clip, args.calls, args.steps)]
    columns = [("model", "model"), ("params M", lambda r: f"{r['params_m']:.1f}"), ("from_pretrained s", "from_pretrained_s"),
               ("first call s", "first_call_s"), ("later calls s (median)", "later_call_median_s"), ("load s", "load_s")]
    benchio.emit(rows, columns, args.json, title=f"{args.calls} calls of {args.steps} steps, 5 s clip", digits=3)


if __name__ == "__main__":
    main()
