"""The pipeline: per-session windows, the batch planner and the delivery, wired together."""
