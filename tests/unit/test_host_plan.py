"""The planner's host time (foley_dist.planning.host): the packaged calibration is complete, host seconds
follow resolution, codec and resize setting, the vision stage's cost is the larger of host / workers and
device, and `foley-dist plan` names the bounding stage and the workers that keep the diffusion GPUs busy."""

from __future__ import annotations

import json

import pytest

from foley_dist import config
from foley_dist.planning import host, plan
from foley_dist.planning.host import Source, load_calibration, vision_host_seconds

OPS = {"decode_h264", "rgb24", "siglip_pil", "siglip_torch", "sync"}


def _plan(*overrides: str) -> dict:
    return plan.make_plan(config.load("plan", ["model=hunyuan_xxl", "duration=60", *overrides]))


def test_packaged_calibration_names_its_machine_and_every_op():
    cal = load_calibration()
    assert OPS <= set(cal.per_frame_ms) and cal.machine and cal.measured
    assert all(cal.ms(op, 8.3) > 0 for op in OPS) and cal.cpu_gflops_per_thread > 0 and cal.cuda_tflops > 0


def test_host_seconds_follow_resolution_codec_and_resize():
    cal = load_calibration()

    def secs(w, h, codec="h264", resize="pil"):
        return vision_host_seconds(cal, Source(w, h, 25.0, codec), 5.0, 8, 25, "release", resize)

    assert secs(640, 360) < secs(1920, 1080) < secs(3840, 2160)
    assert secs(3840, 2160, resize="torch") < secs(3840, 2160)
    assert secs(3840, 2160, codec="vp9") == secs(3840, 2160)  # uncalibrated codecs are costed as H.264


def test_vision_cost_is_the_larger_of_host_per_worker_and_device():
    device = {"vision": 0.1, "fusion": 0.01, "diffusion": 1.0}
    assert host.stage_seconds(device, 4.0, 8)["vision"] == pytest.approx(0.5)
    assert host.stage_seconds(device, 0.4, 8)["vision"] == pytest.approx(0.1)
    assert host.workers_for(4.0, 1.0, 6) == 24 and host.workers_for(4.0, 1.0, 1) == 4


def test_plan_shows_host_and_device_seconds_and_the_bound(tmp_path):
    few = _plan("resolution=2160p", "gpus=8", "host_cores=1", f"json={tmp_path / 'p.json'}")
    h = few["host"]
    assert h["stages"]["vision"]["host_s"] > 0 and h["stages"]["diffusion"]["device_s"] > 0
    assert h["bound"]["by"] == "host" and "vision" in h["bound"]["stages"]  # 1 core per vision rank: it cannot keep up
    need = h["workers_needed"]
    assert need * h["stages"]["diffusion"]["device_s"] / h["diffusion_ranks"] >= h["stages"]["vision"]["host_s"]
    many = _plan("resolution=2160p", "gpus=8", f"host_cores={need}")["host"]
    assert many["bound"]["by"] == "device"
    text = plan.format_plan(few)
    assert "host s/seg" in text and "bound by:" in text and f"keep {h['diffusion_ranks']} diffusion" in text
    json.dumps(few)  # the --json plan stays serialisable


def test_layout_auto_costs_are_the_plans_figures():
    cal = load_calibration()
    flops = {"vision": 1e13, "fusion": 1e10, "diffusion": 2e14}
    vision = config.VisionConfig(workers=2)
    costs = host.layout_costs(cal, flops, Source(3840, 2160), 5.0, 8, 25, vision, "cuda")
    device = host.device_seconds(cal, flops, "cuda")
    hs = vision_host_seconds(cal, Source(3840, 2160), 5.0, 8, 25)
    assert costs == host.stage_seconds(device, hs, 2)
    auto = host.layout_costs(cal, flops, Source(3840, 2160), 5.0, 8, 25, config.VisionConfig(), "cuda")
    assert auto == host.stage_seconds(device, hs, host.HOST_CORES)  # not this machine's cores: ranks agree
