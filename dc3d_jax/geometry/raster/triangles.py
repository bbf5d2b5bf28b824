"""Per-triangle screen-space setup shared by the visibility search and the barycentrics.

Symbols. A vertex k of a triangle has NDC position v_k = clip_k.xy / w_k. Edge function
  e_k(p) = (v_{k+2} - v_{k+1}) × (p - v_{k+1}),   A = (v_1 - v_0) × (v_2 - v_0),
so b_k = e_k / A is the screen-space barycentric weight of vertex k. Edges are sign-folded
(multiplied by sign A) so that 'inside' is e_k ≥ 0 for either winding, and
weight_k = 1 / (w_k |A|) turns a folded e_k into b_k / w_k.

Watertight shared edges: e_k is evaluated from the edge's lexicographically smaller endpoint
(by x, then y), whichever of v_{k+1}, v_{k+2} that is, and negated when it is v_{k+2}. Two
triangles sharing an edge then compute the same float value for it (with opposite signs;
negation is exact in IEEE arithmetic), so a pixel centre on the edge is inside at least one
of them. Evaluated from each triangle's own start vertex, rounding could put such a centre
outside both (a crack; tests/test_rasterize.py has a fan where it did).

1/w is affine in screen space: 1/w(p) = Σ b_k / w_k; the nearest covering triangle has the
largest 1/w.

No clipping: a triangle with any vertex in front of the near plane (clip z < -w) or at
w ≤ 0 is invalid (never drawn); the far plane is not tested.
"""

import jax
import jax.numpy as jnp

from dc3d_jax.geometry.raster import common


def setup(clip: jax.Array, faces: jax.Array) -> dict:
  """clip [V, 4], faces [F, 3] -> dict of [3, F] arrays (vertex/edge k first) and valid [F].

  Edge-major layout because the pixel × triangle inner loops then run over a contiguous
  triangle axis (a trailing axis of 3 was ~30x slower on CPU). Keys: x1, y1 (edge k's base:
  the smaller of v_{k+1}, v_{k+2}), dx, dy (folded other endpoint - base, negated when the
  base is v_{k+2}: e_k as defined above), weight, x, y (NDC vertices), valid.
  """
  v = jnp.moveaxis(clip[faces], 1, 0)                 # [3, F, 4]
  w = v[..., 3]
  in_front = jnp.all((w > 0.0) & (v[..., 2] >= -w), axis=0)
  w_safe = jnp.where(in_front[None], w, 1.0)
  x, y = v[..., 0] / w_safe, v[..., 1] / w_safe
  x1, y1 = jnp.roll(x, -1, axis=0), jnp.roll(y, -1, axis=0)   # v_{k+1}
  x2, y2 = jnp.roll(x, -2, axis=0), jnp.roll(y, -2, axis=0)   # v_{k+2}
  area = (x[1] - x[0]) * (y[2] - y[0]) - (y[1] - y[0]) * (x[2] - x[0])
  valid = in_front & (jnp.abs(area) > 1e-20)
  sign = jnp.where(area < 0.0, -1.0, 1.0)
  abs_area = jnp.where(valid, jnp.abs(area), 1.0)
  swap = (x2 < x1) | ((x2 == x1) & (y2 < y1))                # base = v_{k+2}
  bx, by = jnp.where(swap, x2, x1), jnp.where(swap, y2, y1)
  ox, oy = jnp.where(swap, x1, x2), jnp.where(swap, y1, y2)
  fold = jnp.where(swap, -sign, sign)
  return dict(x1=bx, y1=by, dx=fold * (ox - bx), dy=fold * (oy - by),
              weight=1.0 / (w_safe * abs_area), x=x, y=y, valid=valid)


def edges(tri: dict, px: jax.Array, py: jax.Array) -> jax.Array:
  """Folded edge functions e_k(p) -> [3, ...]; tri entries [3, ...], px/py broadcast to [...]."""
  return tri["dx"] * (py - tri["y1"]) - tri["dy"] * (px - tri["x1"])


def pixel_ranges(tri: dict, height: int, width: int) -> tuple:
  """[F] int32 (row0, row1, col0, col1): the inclusive range of pixel centres that the
  triangle's bounding box may cover, clamped to the image; empty (row0 > row1 or col0 > col1)
  for invalid triangles and for those between pixel centres.

  A centre j + 0.5 lies in [X_min, X_max] for j in [ceil(X_min - 0.5), floor(X_max - 0.5)];
  the box is widened by 1e-3 px so rounding never loses a centre on its border.
  """
  cx, cy = common.ndc_to_pixels(tri["x"], tri["y"], height, width)     # [3, F] each
  margin = 1e-3
  # Clip in float first: far off-screen vertices must not overflow the int cast.
  lo_x = jnp.clip(jnp.min(cx, 0) - 0.5 - margin, -1.0, width + 1.0)
  hi_x = jnp.clip(jnp.max(cx, 0) - 0.5 + margin, -1.0, width + 1.0)
  lo_y = jnp.clip(jnp.min(cy, 0) - 0.5 - margin, -1.0, height + 1.0)
  hi_y = jnp.clip(jnp.max(cy, 0) - 0.5 + margin, -1.0, height + 1.0)
  col0 = jnp.maximum(jnp.ceil(lo_x), 0).astype(jnp.int32)
  col1 = jnp.minimum(jnp.floor(hi_x), width - 1).astype(jnp.int32)
  row0 = jnp.maximum(jnp.ceil(lo_y), 0).astype(jnp.int32)
  row1 = jnp.minimum(jnp.floor(hi_y), height - 1).astype(jnp.int32)
  empty = ~tri["valid"] | (col0 > col1) | (row0 > row1)
  return (jnp.where(empty, 1, row0), jnp.where(empty, 0, row1),
          jnp.where(empty, 1, col0), jnp.where(empty, 0, col1))
