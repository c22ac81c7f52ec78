"""VisionStage with the tiny encoders on small generated clips: the release-exact default (the
release's frame picks, window count and latent length), the same feature shapes for fixed, adaptive
and tiled encoding of the fast path, the sampling saving in the message meta, and the feature cache (a
hit does no decoding or encoding and returns exactly the uncached features)."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from foley_dist import stages
from foley_dist.config import ModelConfig, VisionConfig
from foley_dist.engine.message import Message
from foley_dist.errors import FoleyError
from foley_dist.media import frameprep, testclip
from foley_dist.models.foley import ModelSpec, build_parts
from foley_dist.stages import VisionStage

SPEC = ModelSpec.named("tiny")
CPU = torch.device("cpu")
SHAPES = {"clip_feat": (1, 40, 768), "sync_feat": (1, 120, 768)}  # fast, 5 s: 8 fps visual, 24 sync tokens/s
FAST = {"preprocess": "fast"}


@pytest.fixture(scope="module")
def parts() -> dict[str, torch.nn.Module]:
    return build_parts(SPEC, ("visual", "sync"), ModelConfig(), CPU)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vision")
    image = np.random.default_rng(0).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    with av.open(str(root / "static.mp4"), "w") as container:  # identical frames
        stream = container.add_stream("h264", rate=25, options={"preset": "ultrafast", "crf": "20"})
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for i in range(125):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return {"static": root / "static.mp4", "moving": testclip.make_clip(root / "moving.mp4", 6.0, 160, 96, fps=25)}


def _stage(parts, **vision) -> VisionStage:
    vision = VisionConfig(**{"cache": "off", **vision})
    return VisionStage(SPEC, parts["visual"], parts["sync"], "pyav", CPU, vision, "tiny:0")


def _msg(video: Path, start: float = 0.0) -> Message:
    return Message(0, {}, {"video": str(video), "start": start, "end": start + 5.0, "segment": 0, "prompt": ""})


@pytest.fixture(scope="module")
def run(parts, clips):
    """Uncached output of a stage with the given settings on a clip, computed once per module."""
    done: dict[tuple, Message] = {}

    def get(clip: str, **vision) -> Message:
        key = (clip, *sorted(vision.items()))
        if key not in done:
            stage = _stage(parts, **vision)
            done[key] = stage(_msg(clips[clip]))
            assert stage.cache is None and (stage.cache_hits, stage.cache_misses) == (0, 0)
        return done[key]

    return get


def _shapes(msg: Message) -> dict[str, tuple[int, ...]]:
    return {k: tuple(msg.tensors[k].shape) for k in SHAPES}


def test_release_default_picks_frames_and_lengths_as_the_release(run):
    """6 s clip at 25 fps, segment [0, 5): accumulated 1/25 targets skip one frame (124 picked), so
    (124 - 16) // 8 + 1 = 14 windows (112 tokens, no tail padding) and int(124 / 25 * 50) = 248 latents."""
    out = run("moving")
    assert {k: tuple(v.shape) for k, v in out.tensors.items()} == {
        "clip_feat": (1, 40, 768), "sync_feat": (1, 112, 768), "siglip_times": (40,), "sync_times": (124,)}
    assert out.meta["latent_frames"] == 248
    # the first frame at or after each k / 8 s (1/8 accumulates exactly): 0, 0.16, 0.28, 0.40, ...
    first_after = torch.tensor([math.ceil(k * 25 / 8) / 25 for k in range(40)], dtype=torch.float64)
    torch.testing.assert_close(out.tensors["siglip_times"], first_after, atol=1e-9, rtol=0)
    sync = out.tensors["sync_times"]
    assert sync.dtype == torch.float64 and bool((sync[1:] >= sync[:-1]).all()) and float(sync[-1]) < 5.0


def test_later_segments_start_their_targets_at_the_segment_start(parts, clips):
    out = _stage(parts)(_msg(clips["moving"], start=1.0))
    times = out.tensors["siglip_times"]
    assert len(times) == 40 and float(times[0]) == pytest.approx(1.0) and float(times[-1]) == pytest.approx(5.88)


@pytest.mark.parametrize("vision", [FAST, {**FAST, "frame_sampling": "adaptive"}, {**FAST, "tiling": True, "tile_size": 96}],
                         ids=["fixed", "adaptive", "tiled"])
def test_every_variant_gives_the_fixed_shapes(run, clips, vision):
    out = run("moving", **vision)
    assert _shapes(out) == SHAPES
    assert out.meta["cached"] is False and out.meta["sync_frames_saved"] == 0.0  # moving: full sync rate
    assert out.meta["video"] == str(clips["moving"])


def test_adaptive_sampling_on_a_static_clip(run):
    fixed, adaptive = run("static", **FAST), run("static", **FAST, frame_sampling="adaptive")
    assert _shapes(adaptive) == SHAPES
    assert adaptive.meta["sync_frames_saved"] == pytest.approx(0.4)  # 15 of 25 fps decoded
    assert torch.equal(adaptive.tensors["clip_feat"], fixed.tensors["clip_feat"])
    torch.testing.assert_close(adaptive.tensors["sync_feat"], fixed.tensors["sync_feat"], atol=0.05, rtol=0)


def test_tiled_is_deterministic_and_differs_from_untiled(parts, clips, run):
    a = run("moving", **FAST, tiling=True, tile_size=96)
    b = _stage(parts, **FAST, tiling=True, tile_size=96)(_msg(clips["moving"]))
    assert torch.equal(a.tensors["clip_feat"], b.tensors["clip_feat"])
    untiled = run("moving", **FAST)
    assert not torch.allclose(a.tensors["clip_feat"], untiled.tensors["clip_feat"])
    assert torch.equal(a.tensors["sync_feat"], untiled.tensors["sync_feat"])  # tiling is visual-only


class _Counting(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        self.calls += 1
        return self.inner(x, **kwargs)


@pytest.mark.parametrize("vision", [{}, {**FAST, "tiling": True, "tile_size": 96, "frame_sampling": "adaptive"}],
                         ids=["release", "tiled-adaptive"])
def test_cache_hit_skips_decode_and_encoders_and_is_exact(parts, clips, run, tmp_path, monkeypatch, vision):
    uncached = run("moving", **vision)
    counted = {"visual": _Counting(parts["visual"]), "sync": _Counting(parts["sync"])}
    stage = _stage(counted, cache=str(tmp_path), **vision)
    first = stage(_msg(clips["moving"]))
    assert (stage.cache_hits, stage.cache_misses, first.meta["cached"]) == (0, 1, False)
    calls = (counted["visual"].calls, counted["sync"].calls)

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(stages, "decode_segment", no_decode)
    monkeypatch.setattr(stages, "iter_frames", no_decode)
    monkeypatch.setattr(frameprep, "release_frames", no_decode)
    again = _stage(counted, cache=str(tmp_path), **vision)  # a fresh stage (another run) reads it back
    hit = again(_msg(clips["moving"]))
    assert (again.cache_hits, again.cache_misses, hit.meta["cached"]) == (1, 0, True)
    assert (counted["visual"].calls, counted["sync"].calls) == calls
    assert hit.meta["sync_frames_saved"] == first.meta["sync_frames_saved"]
    assert hit.meta["latent_frames"] == first.meta["latent_frames"]
    for name in uncached.tensors:
        assert torch.equal(hit.tensors[name], uncached.tensors[name])
        assert torch.equal(first.tensors[name], uncached.tensors[name])


def test_cache_misses_on_another_segment_or_setting(parts, clips, tmp_path):
    stage = _stage(parts, cache=str(tmp_path))
    stage(_msg(clips["moving"]))
    stage(_msg(clips["moving"], start=1.0))
    _stage(parts, cache=str(tmp_path), **FAST)(_msg(clips["moving"]))
    assert (stage.cache_hits, stage.cache_misses) == (0, 2)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3


@pytest.mark.parametrize("bad", [{"frame_sampling": "smart"}, {"min_sync_fps": 0}, {"overlap_ratio": 1.0},
                                 {"tile_batch": 0}, {"cache_max_gb": 0}, {"preprocess": "exact"},
                                 {"tiling": True}, {"frame_sampling": "adaptive"}])
def test_bad_vision_settings_are_one_line_errors(parts, bad):
    with pytest.raises(FoleyError, match="vision."):
        _stage(parts, **bad)
