"""What every rasterizer backend shares: the output record and the pixel conventions.

Conventions (both backends):
  clip:   [V, 4] or [B, V, 4] OpenGL clip coordinates (x, y, z, w); NDC = xyz / w, and w is
          the camera-space depth along the view axis for a perspective projection.
  pixels: pixel (i = row, j = column) has its centre at NDC
            x = 2 (j + 0.5) / W - 1,   y = 1 - 2 (i + 0.5) / H,
          so row 0 is the top (NDC y = +1) and column 0 the left (NDC x = -1). In pixel units
          X = (x + 1) W / 2 and Y = (1 - y) H / 2, so pixel (i, j) spans [j, j+1] × [i, i+1].
  winding: either; nothing is culled.
"""

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class RasterOut:
  """One rasterization; leading [...] is () for clip [V, 4] and (B,) for clip [B, V, 4].

  tri_id:   [..., H, W] int32 face index of the nearest triangle covering the pixel centre,
            -1 where none does (nvdiffrast's triangle_id - 1).
  bary:     [..., H, W, 3] float32 perspective-correct weights of faces[tri_id, 0..2]
            (sum 1), 0 where empty. Differentiable w.r.t. clip.
  depth:    [..., H, W] float32 clip w at the pixel (camera depth along the view axis, not
            the distance along the ray), 0 where empty. Differentiable w.r.t. clip.
  overflow: [...] int32 (tile, triangle) candidate pairs the tiled search had no room for;
            0 means the image is exact (always 0 for nvdiffrast). See visibility.py.
  native:   [..., H, W, 4] nvdiffrast's own output (u, v, z/w, id + 1) for its interpolate
            and antialias; None for the JAX backend.
  backend:  'jax' or 'nvdiffrast' (static): interpolate and antialias follow it.
  """
  tri_id: jax.Array
  bary: jax.Array
  depth: jax.Array
  overflow: jax.Array
  native: jax.Array | None = None
  backend: str = struct.field(pytree_node=False, default="jax")


def pixel_centres_ndc(height: int, width: int) -> tuple:
  """([H, W], [H, W]) NDC x and y of the pixel centres (row 0 at the top)."""
  j, i = jnp.meshgrid(jnp.arange(width) + 0.5, jnp.arange(height) + 0.5, indexing="xy")
  return 2.0 * j / width - 1.0, 1.0 - 2.0 * i / height


def ndc_to_pixels(x: jax.Array, y: jax.Array, height: int, width: int) -> tuple:
  """NDC -> pixel units (X right, Y down; pixel (i, j) centre at (j + 0.5, i + 0.5))."""
  return (x + 1.0) * (0.5 * width), (1.0 - y) * (0.5 * height)
