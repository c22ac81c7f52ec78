"""Media in: probing, decoding, frame picking and preprocessing, segment plans, tiling, the feature cache."""
