"""foley_dist: pipeline-parallel video-to-Foley-audio inference over torch.distributed.

    from foley_dist import FoleyPipeline
    pipe = FoleyPipeline.from_pretrained("tiny")
    result = pipe("clip.mp4", "rain on a tin roof")
"""

from __future__ import annotations

__all__ = ["FoleyPipeline", "FoleyResult", "SegmentInfo", "FoleyError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """Import the API on first use, so `python -m foley_dist` can reject bad input before torch loads."""
    if name == "FoleyError":
        from foley_dist.errors import FoleyError

        return FoleyError
    if name in __all__:
        from foley_dist import api

        return getattr(api, name)
    raise AttributeError(f"module 'foley_dist' has no attribute {name!r}")
