"""Metrics and the ground-truth testbed."""
