"""The unit of work that flows between pipeline stages.

Stages map one `Message` to the next; the transport serialises it as a header plus payloads. Keeping
it a plain dataclass (no torch.distributed import) lets stages and the single-process reference path
use it without a process group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Message:
    """Tensors of one segment plus small JSON-serialisable metadata."""

    segment: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
