"""foley_dist: pipeline-parallel video-to-Foley-audio inference over torch.distributed."""

__version__ = "0.1.0"
