"""The DiT memory options end to end: diffusion.offload=blocks gives the plain run's bits,
hardware.weights=fp8 stays within the fp8 bound, layout=auto takes the planner's choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foley_dist import FoleyPipeline
from foley_dist.config import LayoutConfig, RunConfig
from foley_dist.errors import FoleyError
from foley_dist.planning.memory_options import MemoryOption
from foley_dist.planning.plan import PlanConfig, make_plan, run_choice

SETTINGS = {"vision.cache": "off", "seam_metric": False, "progress": False, "hardware.threads": 1}


def audio(clip, **settings) -> np.ndarray:
    pipe = FoleyPipeline.from_pretrained("tiny", **SETTINGS, **settings)
    return pipe(clip, "rain on a tin roof", num_inference_steps=2, seed=3).audio


def test_offload_is_bit_identical_and_fp8_close(clip12):
    plain = audio(clip12)
    assert np.array_equal(audio(clip12, **{"diffusion.offload": "blocks"}), plain)
    fp8 = audio(clip12, **{"hardware.weights": "fp8"})
    err = np.linalg.norm(fp8 - plain) / np.linalg.norm(plain)
    assert 0 < err < 1e-2  # the bound of tests/unit/test_dit_memory.py (there against bf16 weights)
    assert np.array_equal(audio(clip12, **{"hardware.weights": "fp8", "diffusion.offload": "blocks"}), fp8)


def test_bad_option_is_one_line(clip12):
    with pytest.raises(FoleyError, match="hardware.weights"):
        audio(clip12, **{"hardware.weights": "int4"})


def run_cfg(**layout) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name = "hunyuan_xxl"
    cfg.layout = LayoutConfig(ranks=["auto"], **layout)
    return cfg


def test_layout_auto_takes_the_planners_choice():
    sizes = [(1920, 1080, 60.0), (640, 360, 10.0)]
    option, layout = run_choice(run_cfg(capacity_gb=8.0), 4, torch.device("cpu"), "bf16", sizes)
    plan = make_plan(PlanConfig(resolution="1920x1080", duration=60.0, gpus=4, gpu_memory="8.0GB", precision="bf16",
                                model=run_cfg().model))
    assert option.name == plan["memory_option"]["name"] == "split3" and layout == plan["layout"]
    assert option == MemoryOption(split=3) and layout[-1] == "diffusion/3"
    # no GPU size known (CPU without layout.capacity_gb), or a layout given: auto means off
    assert run_choice(run_cfg(), 4, torch.device("cpu"), "bf16", sizes) == (MemoryOption(), None)
    fixed = run_cfg(capacity_gb=8.0)
    fixed.layout.ranks = ["vision+fusion", "diffusion"]
    assert run_choice(fixed, 2, torch.device("cpu"), "bf16", sizes) == (MemoryOption(), None)
    with pytest.raises(FoleyError, match="smallest that fits"):
        run_choice(run_cfg(capacity_gb=1.0), 1, torch.device("cpu"), "bf16", sizes)


def test_layout_auto_splits_the_dit_when_only_a_split_fits():
    """Full weights, no offload: XXL's diffusion stage fits no 8 GB GPU whole; split over two it does."""
    cfg = run_cfg(capacity_gb=8.0)
    cfg.hardware.weights, cfg.diffusion.offload = "full", "none"
    option, layout = run_choice(cfg, 3, torch.device("cpu"), "bf16", [(1920, 1080, 60.0)])
    assert option == MemoryOption(split=2) and layout == ["vision+fusion", "diffusion/2"]
