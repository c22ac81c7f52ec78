"""The DiT's blocks split over ranks (layout 'diffusion/N') on real ranks under strict point-to-point
mode: bit-identical to one process, each rank loads only its blocks, a dead member is an error
within the timeout. (test_joint.py runs split layouts of the joint seam against one process too.)"""

from __future__ import annotations

import time

import numpy as np
import soundfile as sf

from foley_dist import synthetic
from foley_dist.models.hunyuan_cost import block_ranges
from foley_dist.models.hunyuan_config import HunyuanDiTConfig
from tests.conftest import run_cli
from tests.distributed.ranks import exit_on_call, run_ranks

COSTS = {"vision": 0.002, "fusion": 0.001, "diffusion": 0.004}
PLAIN = ["seam=crossfade", "model.guidance_scale=1", "model.steps=3", "progress=false", "vision.cache=off",
         "seam_metric=false"]


def test_crossfade_without_guidance_on_a_three_way_split_is_bit_identical(clip12, tmp_path):
    """Batch 1 (no CFG), independent segments, three block ranges: the DiT's four blocks as [0, 2), [2, 3), [3, 4)."""
    single, split = tmp_path / "single.wav", tmp_path / "split.wav"
    assert run_cli(["generate", f"video={clip12}", f"output={single}", *PLAIN]).returncode == 0
    r = run_cli(["generate", f"video={clip12}", f"output={split}", "layout.ranks=[vision,fusion,diffusion/3]", *PLAIN],
                nproc=5)
    assert r.returncode == 0, r.stderr[-2000:]
    assert np.array_equal(sf.read(split, dtype="float32")[0], sf.read(single, dtype="float32")[0])
    ranges = block_ranges(HunyuanDiTConfig.tiny(), 3)
    for position, (start, stop) in enumerate(ranges):  # every member says which blocks it loaded
        assert f"[rank {2 + position}] diffusion" in r.stderr and f"DiT blocks [{start}, {stop}) of 4" in r.stderr


def _dies_mid_window(rank: int, world: int, *args):
    if rank == 2:  # the second member of the split pipeline: exits after a few steps; the others must notice
        exit_on_call(synthetic.SyntheticSplitWork, "tail", 5)
    return synthetic.run_rank(*args)


def test_dead_member_is_an_error_within_the_timeout():
    timeout_s = 8.0
    start = time.monotonic()
    out = run_ranks(_dies_mid_window, 3, ["vision+fusion", "diffusion/2"], COSTS, 4, None, 2, timeout_s, 20, "joint",
                    timeout=90)
    assert out[2] == ("exit", 9)
    status, text = out[1]
    assert status == "error" and "rank 2" in text and "PeerTimeout" in text, out[1]
    assert time.monotonic() - start < 60
