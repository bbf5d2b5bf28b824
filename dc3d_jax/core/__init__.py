"""Numerics, keys, schedules and the shared array types."""
