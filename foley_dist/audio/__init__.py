"""Audio out: the sink, stitching, the seam metric, atomic writers and muxing."""
