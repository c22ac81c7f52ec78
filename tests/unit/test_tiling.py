"""Tiled high-resolution encoding: grid geometry (bounded, covering, overlapping), the merge rule,
bounded tile batches, batch-size invariance and determinism with the tiny SigLIP, and the streaming
decoder agreeing with decode_segment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from foley_dist.media import testclip, tiling, video
from foley_dist.media.video import decode_segment
from foley_dist.models.siglip import VisualEncoder, VisualEncoderConfig


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return testclip.make_clip(tmp_path_factory.mktemp("tiling") / "clip.mp4", 2.0, 160, 96, fps=25)


@pytest.fixture(scope="module")
def encoder() -> VisualEncoder:
    torch.manual_seed(0)
    return VisualEncoder.from_config(VisualEncoderConfig.tiny())


def _covered(grid: tiling.TileGrid) -> torch.Tensor:
    hits = torch.zeros(grid.height, grid.width, dtype=torch.int32)
    for y, x, h, w in grid.boxes:
        hits[y : y + h, x : x + w] += 1
    return hits


@pytest.mark.parametrize("size", [(2160, 3840), (3840, 2160), (1080, 1920), (720, 1280), (1000, 1000), (300, 2000)])
@pytest.mark.parametrize("tile,overlap", [(224, 0.2), (512, 0.25), (128, 0.0)])
def test_grid_is_bounded_covers_the_frame_and_overlaps(size: tuple[int, int], tile: int, overlap: float):
    height, width = size
    grid = tiling.plan_grid(height, width, tile, overlap)
    assert grid.height <= height and grid.width <= width
    assert abs(grid.width / grid.height - width / height) < 0.02 * width / height  # aspect kept
    if not grid.boxes:  # the whole (scaled) frame is one tile
        assert min(grid.height, grid.width) <= tile and max(grid.height, grid.width) <= tile
        return
    assert 2 <= len(grid.boxes) <= tiling.MAX_TILES
    assert bool((_covered(grid) > 0).all())
    stride = round(tile * (1 - overlap))
    ys = sorted({y for y, *_ in grid.boxes})
    xs = sorted({x for _, x, *_ in grid.boxes})
    for starts, length, side in ((ys, grid.height, grid.boxes[0][2]), (xs, grid.width, grid.boxes[0][3])):
        assert starts[0] == 0 and starts[-1] + side == length
        assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))  # overlap >= tile - stride


def test_4k_grid():
    grid = tiling.plan_grid(2160, 3840, 224, 0.2)
    assert (grid.height, grid.width, len(grid.boxes)) == (529, 940, 15)
    assert {(h, w) for *_, h, w in grid.boxes} == {(224, 224)}


def test_small_frame_keeps_its_size_and_has_no_tiles():
    grid = tiling.plan_grid(96, 160, 224, 0.2)
    assert (grid.height, grid.width, grid.boxes, grid.images_per_frame) == (96, 160, (), 1)


def test_grid_of_source_sized_tiles_when_it_fits():
    grid = tiling.plan_grid(400, 600, 224, 0.2, max_tiles=100)
    assert (grid.height, grid.width) == (400, 600)  # never scaled when the grid fits
    assert len(grid.boxes) == 2 * 4  # stride 179: rows at 0, 176; columns at 0, 125, 251, 376


@pytest.mark.parametrize("args", [(0, 0.2, 16), (224, 1.0, 16), (224, -0.1, 16), (224, 0.2, 0)])
def test_bad_grid_arguments(args):
    with pytest.raises(ValueError):
        tiling.plan_grid(1080, 1920, *args)


def test_crops_global_first_then_tiles():
    frame = torch.arange(3 * 96 * 160, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 96, 160)
    grid = tiling.plan_grid(96, 160, 64, 0.2)
    images = tiling.crops(frame, grid, 32)
    assert images.shape == (grid.images_per_frame, 3, 32, 32) and images.dtype == torch.uint8
    y, x, h, w = grid.boxes[-1]
    assert torch.equal(images[-1], tiling._resize(frame[None, :, y : y + h, x : x + w], 32)[0])
    assert torch.equal(images[0], tiling._resize(frame[None], 32)[0])


def test_merge_rule():
    emb = torch.tensor([[[2.0], [4.0], [8.0]], [[1.0], [1.0], [3.0]]])  # 2 frames: global, tile, tile
    assert torch.equal(tiling.merge(emb), torch.tensor([[0.5 * (2 + 6)], [0.5 * (1 + 2)]]))
    assert torch.equal(tiling.merge(emb[:, :1]), emb[:, 0])  # no tiles: the global embedding


def _frames(count: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, 96, 160), dtype=torch.uint8, generator=g) for _ in range(count)]


def test_batches_never_exceed_tile_batch_and_every_image_is_encoded_once():
    grid = tiling.plan_grid(96, 160, 64, 0.2)
    sizes: list[int] = []

    def encode(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        return x.float().mean((1, 2, 3))[:, None].expand(-1, 4)

    out = tiling.encode_tiled(encode, iter(_frames(5)), grid, 16, 4)
    assert out.shape == (1, 5, 4)
    assert max(sizes) <= 4 and sum(sizes) == 5 * grid.images_per_frame


def test_tile_batch_does_not_change_features_and_runs_are_deterministic(encoder: VisualEncoder):
    grid = tiling.plan_grid(96, 160, 64, 0.2)
    assert grid.images_per_frame == 7
    frames = _frames(3)

    def run(batch: int) -> torch.Tensor:
        return tiling.encode_tiled(lambda x: encoder(x)[0], iter(frames), grid, 64, batch)

    ref = run(16)
    assert ref.shape == (1, 3, 768)
    assert torch.equal(ref, run(16))
    for batch in (1, 5, 64):
        torch.testing.assert_close(run(batch), ref, rtol=1e-4, atol=1e-5)


def test_iter_frames_match_decode_segment(clip: Path):
    times = [-0.1, 0.0, 0.03, 0.5, 0.52, 1.0, 1.96, 2.5, 3.0]  # before the start, repeats, past the end
    streamed = torch.stack(list(video.iter_frames(clip, times, (72, 120))))
    assert torch.equal(streamed, decode_segment(clip, times, (72, 120), "resize"))


def test_iter_frames_needs_increasing_times(clip: Path):
    with pytest.raises(ValueError):
        next(video.iter_frames(clip, [1.0, 0.5], (72, 120)))
