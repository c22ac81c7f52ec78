"""Release-exact frame preprocessing: the transforms HunyuanVideo-Foley applies, reproduced one frame
at a time on full-size RGB (so memory stays one frame, whatever the segment length).

- SigLIP2: PIL image -> torchvision `Resize((S, S))` on PIL, i.e. `Image.resize((S, S), BILINEAR)`
  (PIL's bilinear filter widens with the scale factor: antialiased) -> ToTensor -> Normalize(0.5, 0.5).
- Synchformer: uint8 [3, H, W] -> torchvision v2 `Resize(S, BICUBIC, antialias=True)` of the shorter
  side (the long side is int(S * long / short)); on CPU torchvision runs torch's native uint8 bicubic
  antialiased kernel -> `CenterCrop(S)` (offsets int(round((h - S) / 2))) -> ToDtype(float, scale) ->
  Normalize(0.5, 0.5).

Both return the uint8 image the release normalises next; the encoders normalise exactly as the
release does (`normalize_frames`, SyncEncoder), so features match to float rounding.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def siglip_frame(rgb: np.ndarray, size: int) -> torch.Tensor:
    """Full-size RGB [H, W, 3] uint8 -> uint8 [3, size, size], PIL bilinear as torchvision's Resize on PIL."""
    image = Image.fromarray(rgb).convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's output size for Resize(size): shorter side -> size, longer side int(size * long / short)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def sync_frame(rgb: np.ndarray, size: int) -> torch.Tensor:
    """Full-size RGB [H, W, 3] uint8 -> uint8 [3, size, size]: antialiased bicubic of the shorter side, centre crop."""
    image = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)  # channels-last view, as torchvision gets it
    height, width = image.shape[-2:]
    new_h, new_w = short_side_size(height, width, size)
    if (new_h, new_w) != (height, width):
        image = F.interpolate(image, size=[new_h, new_w], mode="bicubic", align_corners=False, antialias=True)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return image[0, :, top : top + size, left : left + size].contiguous()
