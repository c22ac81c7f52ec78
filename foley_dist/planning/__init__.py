"""Resource planning: memory, FLOPs and layout advice before a job runs."""
