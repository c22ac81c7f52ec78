"""Tiled high-resolution visual encoding: detail a single S x S resize of a 4K frame throws away.

Each frame is decoded once at a working resolution (the source size, scaled down only as far as
needed to keep the tile grid within `max_tiles`), cut into overlapping `tile` x `tile` squares and
every tile, plus the whole frame, is resized to the encoder's S x S input. Images are encoded
`tile_batch` at a time while frames stream in, so activation memory is bounded by the tile batch,
not by the frame size or the frame count.

Merge rule, per frame: 0.5 * global + 0.5 * mean(tiles). The DiT was trained on whole-frame
(global) SigLIP embeddings; averaging the tiles into it adds detail while keeping the result near
the distribution the DiT expects. All tiles have the same size, so their area-weighted mean is the
plain mean. A frame that fits in one tile has no tiles and keeps its global embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

MAX_TILES = 16  # tiles per frame: 4K gives a 5 x 3 grid of 224 px tiles over a 940 x 529 working frame

Box = tuple[int, int, int, int]  # top, left, height, width in working-resolution pixels


@dataclass(frozen=True)
class TileGrid:
    """Working resolution and the tiles cut from it."""

    height: int
    width: int
    boxes: tuple[Box, ...]  # empty when the whole frame is a single tile

    @property
    def images_per_frame(self) -> int:
        return 1 + len(self.boxes)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile offsets along one axis: the first at 0, the last ending at `length`, evenly spaced and
    never further apart than `stride`, so neighbours overlap by at least tile - stride."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def plan_grid(height: int, width: int, tile: int, overlap_ratio: float, max_tiles: int = MAX_TILES) -> TileGrid:
    """The largest working size (aspect kept, never above the source) whose grid has <= max_tiles tiles."""
    if tile < 1 or not 0 <= overlap_ratio < 1 or max_tiles < 1:
        raise ValueError(f"need tile >= 1, 0 <= overlap_ratio < 1, max_tiles >= 1; "
                         f"got {tile}, {overlap_ratio}, {max_tiles}")
    stride = max(1, round(tile * (1 - overlap_ratio)))
    long = max(height, width)
    cols = len(_starts(long, tile, stride))
    while True:  # shrink the long side one tile column at a time until the grid fits
        scale = min(1.0, (tile + (cols - 1) * stride) / long)
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        rows, xs = _starts(h, tile, stride), _starts(w, tile, stride)
        if len(rows) * len(xs) <= max_tiles:
            break
        cols -= 1
    th, tw = min(tile, h), min(tile, w)
    boxes = tuple((y, x, th, tw) for y in rows for x in xs)
    return TileGrid(h, w, () if len(boxes) == 1 else boxes)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, 3, h, w] -> uint8 [N, 3, size, size], antialiased bilinear (as the decoder scales).
    Runs torch's uint8 CPU kernel: 25x faster than the float one, and the same bytes on every host."""
    return F.interpolate(images.cpu(), (size, size), mode="bilinear", antialias=True, align_corners=False)


def crops(frame: torch.Tensor, grid: TileGrid, size: int) -> torch.Tensor:
    """One working-resolution frame [3, H, W] -> encoder inputs [1 + tiles, 3, size, size], global first."""
    frame = frame.contiguous()  # decoded frames are HWC views: slicing them for tiles is 10x slower
    images = [_resize(frame[None], size)]
    if grid.boxes:
        tiles = torch.stack([frame[:, y : y + h, x : x + w] for y, x, h, w in grid.boxes])
        images.append(_resize(tiles, size))
    return torch.cat(images)


def merge(embeddings: torch.Tensor) -> torch.Tensor:
    """[T, 1 + tiles, D] -> [T, D] by the module's merge rule."""
    if embeddings.shape[1] == 1:
        return embeddings[:, 0]
    return 0.5 * (embeddings[:, 0] + embeddings[:, 1:].mean(1))


def encode_tiled(
    encode: Callable[[torch.Tensor], torch.Tensor],
    frames: Iterable[torch.Tensor],
    grid: TileGrid,
    size: int,
    tile_batch: int,
) -> torch.Tensor:
    """Stream working-resolution frames [3, H, W] through `encode` (uint8 [n, 3, S, S] on the CPU ->
    [n, D] on its device), never more than `tile_batch` images at a time -> merged embeddings [1, T, D]."""
    if tile_batch < 1:
        raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
    pending: list[torch.Tensor] = []  # images waiting for a full batch, fewer than tile_batch + images_per_frame
    waiting = 0
    out: list[torch.Tensor] = []
    for frame in frames:
        images = crops(frame, grid, size)
        pending.append(images)
        waiting += len(images)
        while waiting >= tile_batch:
            queue = torch.cat(pending)
            out.append(encode(queue[:tile_batch]))
            pending, waiting = [queue[tile_batch:]], waiting - tile_batch
    if waiting:
        out.append(encode(torch.cat(pending)))
    embeddings = torch.cat(out)
    return merge(embeddings.view(-1, grid.images_per_frame, embeddings.shape[-1])).unsqueeze(0)
