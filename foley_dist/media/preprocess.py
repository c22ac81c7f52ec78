"""Release-exact frame preprocessing: the transforms HunyuanVideo-Foley applies, reproduced one frame
at a time on full-size RGB (so memory stays one frame, whatever the segment length).

- SigLIP2: PIL image -> torchvision `Resize((S, S))` on PIL, i.e. `Image.resize((S, S), BILINEAR)`
  (PIL's bilinear filter widens with the scale factor: antialiased) -> ToTensor -> Normalize(0.5, 0.5).
  The release builds the image with `Image.fromarray(rgb).convert("RGB")`; `fromarray` of an RGB
  uint8 array is already mode RGB, so the convert only copies the full-size frame and is left out
  (same pixels, one full-frame copy less).
- Synchformer: uint8 [3, H, W] -> torchvision v2 `Resize(S, BICUBIC, antialias=True)` of the shorter
  side (the long side is int(S * long / short)); on CPU torchvision runs torch's native uint8 bicubic
  antialiased kernel -> `CenterCrop(S)` (offsets int(round((h - S) / 2))) -> ToDtype(float, scale) ->
  Normalize(0.5, 0.5).

Both write the uint8 image the release normalises next (into `out` when given: a slot of the
segment's preallocated batch); the encoders normalise exactly as the release does
(`normalize_frames`, SyncEncoder), so features match to float rounding.

`siglip_resize="torch"` (vision.siglip_resize) swaps PIL's resize for torch's uint8 antialiased
bilinear kernel, ~5x cheaper on a 4K frame; it differs from PIL by at most 1 on a few values per
million (scripts/bench_host_prep.py measures it), so it is an option, not the release-exact default.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SIGLIP_RESIZES = ("pil", "torch")


def _chw(rgb: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 -> a [1, 3, H, W] channels-last view (no copy), as torchvision gets it."""
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)


def _store(image: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return image.contiguous() if out is None else out.copy_(image)


def siglip_frame(rgb: np.ndarray, size: int, resize: str = "pil", out: torch.Tensor | None = None) -> torch.Tensor:
    """Full-size RGB [H, W, 3] uint8 -> uint8 [3, size, size]: PIL bilinear as torchvision's Resize on PIL
    (`resize="pil"`, release-exact), or torch's antialiased bilinear (`resize="torch"`)."""
    if resize == "torch":
        small = F.interpolate(_chw(rgb), size=[size, size], mode="bilinear", align_corners=False, antialias=True)[0]
    else:
        small = torch.from_numpy(np.array(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))).permute(2, 0, 1)
    return _store(small, out)


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's output size for Resize(size): shorter side -> size, longer side int(size * long / short)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def sync_frame(rgb: np.ndarray, size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Full-size RGB [H, W, 3] uint8 -> uint8 [3, size, size]: antialiased bicubic of the shorter side, centre crop."""
    image = _chw(rgb)
    height, width = image.shape[-2:]
    new_h, new_w = short_side_size(height, width, size)
    if (new_h, new_w) != (height, width):
        image = F.interpolate(image, size=[new_h, new_w], mode="bicubic", align_corners=False, antialias=True)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return _store(image[0, :, top : top + size, left : left + size], out)
