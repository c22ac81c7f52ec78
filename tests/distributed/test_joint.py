"""seam=joint and CFG-parallel on real ranks: bit-identical to one process on every layout; a dead
neighbour is an error, not a hang; a killed run resumes exactly. (joint is the default seam, so the
layout tests of test_pipeline.py and the two-node test of test_farm.py run it too.)"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from foley_dist import synthetic
from foley_dist.engine import protocol, transport
from foley_dist.media.testclip import make_clip
from tests.conftest import run_cli
from tests.distributed.ranks import exit_on_call, run_ranks

COSTS = {"vision": 0.002, "fusion": 0.001, "diffusion": 0.004}
JOINT = ["seam=joint", "model.steps=3", "progress=false", "vision.cache=off", "seam_metric=false"]


def _synthetic(rank: int, world: int, *args, **kwargs):
    return synthetic.run_rank(*args, **kwargs)


def _sampled(world: int, layout: list[str], cfg_parallel: bool = False) -> dict[int, np.ndarray]:
    out = run_ranks(_synthetic, world, layout, COSTS, 7, None, 2, 30.0, 6, "joint", cfg_parallel, timeout=120)
    assert all(status == "ok" for status, _ in out.values()), out
    sink = out[world - 1][1]
    assert sink.received == [(n, synthetic.expected_audio_value(n), True) for n in range(7)]
    return sink.latents


def test_synthetic_joint_sampling_is_layout_independent():
    single = _sampled(1, ["vision+fusion+diffusion"])
    assert np.array_equal(single[0][:, -50:], single[1][:, :50])  # the overlap is one signal
    for world, layout, cfg in [(4, ["vision+fusion", "diffusion x3"], False), (5, ["vision+fusion", "diffusion x4"], True),
                               (5, ["vision+fusion", "diffusion/2 x2"], False), (4, ["vision+fusion", "diffusion/3"], False)]:
        got = _sampled(world, layout, cfg)
        assert all(np.array_equal(got[n], single[n]) for n in range(7)), (layout, cfg)


def _long_chain(rank: int, world: int, items: int, steps: int) -> int:
    """Joint-style chain over two ranks (item n on rank n % 2); the most send buffers ever held."""
    env = transport.detect_env("cpu")
    transport.init(env, 30)
    order = [("send", ("tail", n, step), (n - 1) % 2, n % 2) for n in range(1, items) for step in range(steps + 1)]
    link = transport.Link(rank, protocol.programs_from(order)[rank], env.device, 30)
    link.connect()
    links = transport.StepLinks(link, lambda n: n % 2, None, None)
    most = 0
    for item in range(rank, items, 2):
        links.open(item, steps, (1, 4, 3) if item else None, None)
        for step in range(steps + 1):
            x = torch.full((1, 4, 3), float(item))
            if item:
                assert torch.equal(links.take(item, step), torch.full((1, 4, 3), item - 1.0))
            if item < items - 1:
                links.give(item, step, x)
            most = max(most, links.held)
    link.finish()
    transport.shutdown()
    return most


def test_per_step_send_buffers_stay_bounded_over_a_long_chain():
    steps = 10
    out = run_ranks(_long_chain, 2, 12, steps)
    assert all(status == "ok" for status, _ in out.values()), out
    assert max(most for _, most in out.values()) <= steps + 1, out  # one item's tails, not the whole job's


def _dies_mid_sampling(rank: int, world: int, *args):
    if rank == 1:  # owner of item 0: exits after a few steps, its neighbour (rank 2, item 1) must notice
        exit_on_call(synthetic.SyntheticSampler, "_branch", 6)
    return synthetic.run_rank(*args)


def test_dead_neighbour_is_an_error_within_the_timeout():
    timeout_s = 8.0
    start = time.monotonic()
    out = run_ranks(_dies_mid_sampling, 3, ["vision+fusion", "diffusion x2"], COSTS, 4, None, 2, timeout_s, 20,
                    "joint", timeout=90)
    assert out[1] == ("exit", 9)
    status, text = out[2]
    assert status == "error" and "rank 1" in text and "PeerTimeout" in text, out[2]
    assert time.monotonic() - start < 60


@pytest.fixture(scope="module")
def clip17(tmp_path_factory) -> Path:
    """17 s: four 5 s segments (1 s overlaps, the last one shifted back to 2 s)."""
    return make_clip(tmp_path_factory.mktemp("joint") / "clip17.mp4", seconds=17, width=160, height=96, fps=24, seed=1)


@pytest.fixture(scope="module")
def single(clip17, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    audio = {}
    for cfg in (False, True):
        path = out / f"cfg{int(cfg)}.wav"
        r = run_cli(["generate", f"video={clip17}", f"output={path}", f"diffusion.cfg_parallel={str(cfg).lower()}", *JOINT])
        assert r.returncode == 0, r.stderr[-2000:]
        audio[cfg] = sf.read(path, dtype="float32")[0]
    return audio


def test_cfg_split_is_the_batched_run_within_1e5(single):
    a, b = single[True], single[False]
    assert not np.array_equal(a, b)  # batch 1 vs batch 2 matmuls round differently...
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-5  # ...by float rounding only


@pytest.mark.parametrize("nproc,layout,cfg", [
    (3, "[vision,fusion,diffusion]", False),
    (3, "[vision+fusion,diffusion x2]", False),
    (4, "[vision+fusion,diffusion x3]", False),
    (5, "[vision+fusion,diffusion x4]", False),
    (5, "[vision+fusion,diffusion x4]", True),  # two CFG pairs
    (3, "[vision+fusion,diffusion/2]", False),  # the DiT's blocks split over two ranks
    (5, "[vision+fusion,diffusion/2 x2]", False),  # two split pipelines: windows dealt round-robin
])
def test_joint_layouts_bit_identical_to_single_process(single, clip17, tmp_path, nproc, layout, cfg):
    out = tmp_path / "out.wav"
    r = run_cli(["generate", f"video={clip17}", f"output={out}", f"layout.ranks={layout}",
                 f"diffusion.cfg_parallel={str(cfg).lower()}", *JOINT], nproc=nproc)
    assert r.returncode == 0, r.stderr[-2000:]
    assert np.array_equal(sf.read(out, dtype="float32")[0], single[cfg])


def test_joint_resume_after_sigkill_equals_uninterrupted(tmp_path):
    """A diffusion rank is killed mid-job; the re-run keeps the finished segments and continues the
    next one from the per-step tails its predecessor saved: bit-identical to one uninterrupted process."""
    from tests.distributed.test_farm import _rank_process, _torchrun, _wait_for

    clip = make_clip(tmp_path / "clip41.mp4", seconds=41, width=96, height=64, fps=24, seed=2)  # 10 segments
    reference = tmp_path / "ref.wav"
    assert run_cli(["generate", f"video={clip}", f"output={reference}", *JOINT]).returncode == 0
    out = tmp_path / "resumed.wav"
    args = ["generate", f"video={clip}", f"output={out}", "layout.ranks=[vision+fusion,diffusion x2]",
            "hardware.timeout_s=20", *JOINT]
    launcher = _torchrun(args, nproc=3)
    parts = lambda: list(tmp_path.glob(".resumed.wav.parts-*/seg*.npy"))  # noqa: E731
    _wait_for(lambda: len(parts()) >= 2 or launcher.poll() is not None)
    assert launcher.poll() is None, "run finished before the kill; make it longer"
    _rank_process(launcher, 1).send_signal(signal.SIGKILL)
    launcher.communicate(timeout=90)
    assert launcher.returncode != 0 and not out.exists()
    assert len(list(tmp_path.glob(".resumed.wav.parts-*/tails*.npy"))) <= 2  # only the newest tails are kept

    r = run_cli(args, nproc=3, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["segments_resumed"] >= 2
    assert np.array_equal(sf.read(out, dtype="float32")[0], sf.read(reference, dtype="float32")[0])
    assert not parts()
