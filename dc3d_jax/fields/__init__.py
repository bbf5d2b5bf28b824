"""Flax modules where field parameters live: NeRF density field, NeuS SDF field, DMTet."""
