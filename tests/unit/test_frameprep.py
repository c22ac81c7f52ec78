"""Host-side frame preparation (foley_dist.media.frameprep, vision.workers): the parallel path equals the
serial one bit for bit, holds at most `workers` full-size frames at once, keeps per-segment damage
counts apart, and the preprocessing shortcuts (no RGB re-conversion, buffer slots) change no pixel."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from foley_dist.config import ModelConfig, VisionConfig
from foley_dist.engine.message import Message
from foley_dist.media import frameprep, testclip
from foley_dist.media.frameprep import FramePrep, Recipe
from foley_dist.media.preprocess import siglip_frame, sync_frame
from foley_dist.media.video import release_picks
from foley_dist.models.foley import ModelSpec, build_parts
from foley_dist.stages import VisionStage

RECIPE = Recipe(visual_fps=8, sync_fps=25, visual_size=64, sync_size=32)
SEGMENTS = [(0.0, 5.0), (4.0, 9.0), (7.0, 12.0)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return str(testclip.make_clip(tmp_path_factory.mktemp("prep") / "c.mp4", seconds=12, width=320, height=180,
                                  fps=25, seed=3))


def _prepare(clip: str, workers: int) -> list[frameprep.Frames]:
    prep = FramePrep(RECIPE, workers)
    out = []
    for k, (start, end) in enumerate(SEGMENTS):
        if k + 1 < len(SEGMENTS):
            prep.prefetch(clip, *SEGMENTS[k + 1])
        out.append(prep.get(clip, start, end))
    prep.close()
    return out


def test_parallel_equals_serial_bit_for_bit(clip):
    serial, parallel = _prepare(clip, 1), _prepare(clip, 2)
    for a, b in zip(serial, parallel):
        assert torch.equal(a.visual, b.visual) and torch.equal(a.sync, b.sync)
        assert (a.visual_times, a.sync_times) == (b.visual_times, b.sync_times)
        assert len(a.sync) == len(a.sync_times) >= 120 and len(a.visual) == len(a.visual_times) >= 38


def test_serial_equals_the_release_formula(clip):
    """The release: Image.fromarray(rgb).convert("RGB").resize(...), and the sync transform, per pick."""
    got = _prepare(clip, 1)[1]
    visual, sync = [], []
    for _, rgb, (n_visual, n_sync) in release_picks(clip, 4.0, 9.0, (8, 25)):
        image = Image.fromarray(rgb).convert("RGB").resize((64, 64), Image.BILINEAR)
        visual += [torch.from_numpy(np.array(image)).permute(2, 0, 1)] * n_visual
        sync += [sync_frame(rgb, 32)] * n_sync
    assert torch.equal(got.visual, torch.stack(visual)) and torch.equal(got.sync, torch.stack(sync))


def test_at_most_workers_frames_in_flight(clip, monkeypatch):
    live, peak, lock = [0], [0], threading.Lock()
    convert = frameprep._convert

    def counting(*args):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.002)  # long enough for the decoder to try to run ahead
        try:
            convert(*args)
        finally:
            with lock:
                live[0] -= 1

    monkeypatch.setattr(frameprep, "_convert", counting)
    frames = _prepare(clip, 2)
    assert 1 <= peak[0] <= 2
    assert len(frames[0].sync) >= 120


def test_torch_siglip_resize_is_within_one_level():
    rgb = np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    pil, fast = siglip_frame(rgb, 96), siglip_frame(rgb, 96, "torch")
    assert pil.shape == fast.shape == (3, 96, 96)
    assert (pil.int() - fast.int()).abs().max() <= 1


def test_vision_stage_features_equal_for_any_worker_count(clip):
    spec = ModelSpec.named("tiny")
    parts = build_parts(spec, ("visual", "sync"), ModelConfig(), torch.device("cpu"))
    metas = [{"video": clip, "start": s, "end": e, "segment": k, "prompt": ""} for k, (s, e) in enumerate(SEGMENTS)]
    outs = {}
    for workers in (1, 2):
        stage = VisionStage(spec, parts["visual"], parts["sync"], "pyav", torch.device("cpu"),
                            VisionConfig(cache="off", workers=workers), "tiny:0")
        stage.upcoming(metas)
        outs[workers] = [stage(Message(k, {}, dict(m))) for k, m in enumerate(metas)]
        stage.close()
    for a, b in zip(outs[1], outs[2]):
        for key in ("clip_feat", "sync_feat", "siglip_times", "sync_times"):
            assert torch.equal(a.tensors[key], b.tensors[key]), key
        assert a.meta["latent_frames"] == b.meta["latent_frames"] and b.meta["host_wait_s"] >= 0


def test_torch_siglip_resize_keeps_features_within_the_release_bound(tmp_path):
    """vision.siglip_resize=torch, with the release's reference SigLIP2 weights: on the reference clip
    (320x240, upscaled: both resizes agree exactly) clip_feat stays within the release fidelity bound
    (relative error < 1e-4), and on a downscaled 960x540 clip it stays within 1e-4 of the PIL features."""
    import json

    from safetensors.torch import load_file

    from foley_dist.models.release_folder import write_release
    from foley_dist.models.siglip import VisualEncoder
    from tests.reference import OFFICIAL

    manifest = OFFICIAL / "release_manifest.json"
    others = tuple(f["path"] for f in json.loads(manifest.read_text())["files"] if not f["path"].startswith("siglip2/"))
    write_release(manifest, tmp_path, seed=2718, skip=others)
    visual = VisualEncoder.from_pretrained_dir(tmp_path / "siglip2").eval()
    big = str(testclip.make_clip(tmp_path / "big.mp4", seconds=2, width=960, height=540, fps=25, seed=7))

    def features(clip: str, resize: str, end: float) -> torch.Tensor:
        frames = FramePrep(Recipe(8, 25, 512, 224, resize), 2).get(clip, 0.0, end)
        with torch.inference_mode():
            return visual(frames.visual).double()

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).norm() / b.norm()).item()

    want = load_file(OFFICIAL / "expected.safetensors")["clip_feat"].double()
    assert rel(features(str(OFFICIAL / "clip.mp4"), "torch", 15.0), want) < 1e-4
    pil, fast = features(big, "pil", 2.0), features(big, "torch", 2.0)
    assert 0 < rel(fast, pil) < 1e-4  # the resizes differ, the features hardly
