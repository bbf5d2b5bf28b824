"""dc3d-jax: a JAX reimplementation of DreamCraft3D (arXiv 2310.16818)."""

__version__ = "0.1.0"
