"""Analytic antialiasing of silhouettes, after Laine et al. 2020 ("Modular Primitives for
High-Performance Differentiable Rendering", §4), written here from the paper's description.

Rasterization is point-sampled, so coverage, and any image loss, is piecewise constant in
the vertex positions. This post-process makes it continuous at silhouettes, and so gives
them gradients. Symbols (pixel units, common.py): pixels P0, P1 are horizontal or vertical
neighbours whose triangle ids differ. Of their two triangles, the nearer (smaller depth; the
only one if the other pixel is empty) is T, and its pixel is the owner O; the other pixel is N.
Along the axis from O's centre (u = 0) to N's (u = 1), with v across it, an edge of T
crosses v = 0 at
    t = u_a - v_a (u_b - u_a) / (v_b - v_a)          (edge endpoints (u_a, v_a), (u_b, v_b)).
The exit edge is the straddling edge with the largest t. It is used only if it is a
silhouette and steeper than 45° to the axis (|Δv| ≥ |Δu|), so each edge is handled by one
pair direction only, and only if -1/16 < t < 1 + 1/16 (rounding slack); t is then clamped
to [0, 1]. Treating the edge as a straight line through the two pixels:
    t < 1/2:  O  +=  (1/2 - t)(c_N - c_O)    (T does not reach O's far half);
    t ≥ 1/2:  N  +=  (t - 1/2)(c_O - c_N)    (T covers part of N).
For an axis-aligned edge this is exactly the pixels' area coverage. A pixel takes the sum
of its pairs' changes. Gradients reach the colours, and reach the exit edge's two vertices
through t; every discrete choice (pairs, T, the edge) is made without gradients.

An edge is a silhouette when no other face shares it (topology.py, matching vertex
indices), or when the face across it lies on the same side of it on screen (the surface
folds away there).
"""

import jax
import jax.numpy as jnp

from dc3d_jax.geometry.raster import common, topology

EPS = 1.0 / 16.0     # tolerated crossing outside the segment, in pixels (rounding slack)


def antialias(color: jax.Array, raster: common.RasterOut, clip: jax.Array,
              faces: jax.Array) -> jax.Array:
  """color [..., H, W, C] shaded with `raster` (same leading [...]), clip [..., V, 4] as
  rasterized, faces [F, 3] -> antialiased color [..., H, W, C]."""
  if color.ndim == 4:
    return jax.vmap(antialias, in_axes=(0, 0, 0 if clip.ndim == 3 else None, None))(
        color, raster, clip, faces)
  faces = jnp.asarray(faces, jnp.int32)
  height, width = raster.tri_id.shape
  w = clip[:, 3]
  w = jnp.where(w > 0.0, w, 1.0)          # vertices behind the camera belong to undrawn faces
  x, y = common.ndc_to_pixels(clip[:, 0] / w, clip[:, 1] / w, height, width)
  mesh = dict(x=x, y=y, faces=faces, wings=topology.edge_neighbours(faces))
  rows, cols = jnp.meshgrid(jnp.arange(height) + 0.5, jnp.arange(width) + 0.5, indexing="ij")
  out = color
  for axis in (0, 1):                      # 0: vertical pairs (i, i+1); 1: horizontal (j, j+1)
    first = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
    second = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
    pair = dict(id0=raster.tri_id[first], id1=raster.tri_id[second],
                z0=raster.depth[first], z1=raster.depth[second],
                c0=color[first], c1=color[second], row0=rows[first], col0=cols[first])
    d0, d1 = _blend_pairs(pair, mesh, axis)
    out = out.at[first].add(d0).at[second].add(d1)
  return out


def _blend_pairs(pair: dict, mesh: dict, axis: int) -> tuple:
  """Changes (d0, d1) [..., C] to the first and second pixel of each pair along `axis`."""
  id0, id1 = pair["id0"], pair["id1"]
  use1 = (id0 < 0) | ((id1 >= 0) & (pair["z1"] < pair["z0"]))       # T is pixel 1's triangle
  tri = jnp.where(use1, id1, id0)
  active = (id0 != id1) & (tri >= 0)
  sign = jnp.where(use1, -1.0, 1.0)                 # from the owner towards the neighbour
  owner_row = pair["row0"] + jnp.where(use1 & (axis == 0), 1.0, 0.0)
  owner_col = pair["col0"] + jnp.where(use1 & (axis == 1), 1.0, 0.0)
  corners = mesh["faces"][jnp.maximum(tri, 0)]                       # [..., 3]
  dx = mesh["x"][corners] - owner_col[..., None]
  dy = mesh["y"][corners] - owner_row[..., None]
  u, v = (sign[..., None] * dy, dx) if axis == 0 else (sign[..., None] * dx, dy)
  t, usable = _exit_crossing(u, v, _silhouette_edges(mesh, tri))
  usable = active & usable & (t > -EPS) & (t < 1.0 + EPS)
  t = jnp.clip(t, 0.0, 1.0)
  c0, c1 = pair["c0"], pair["c1"]
  c_owner, c_other = jnp.where(use1[..., None], c1, c0), jnp.where(use1[..., None], c0, c1)
  to_owner = jnp.where(usable & (t < 0.5), 0.5 - t, 0.0)[..., None] * (c_other - c_owner)
  to_other = jnp.where(usable & (t >= 0.5), t - 0.5, 0.0)[..., None] * (c_owner - c_other)
  d0 = jnp.where(use1[..., None], to_other, to_owner)
  d1 = jnp.where(use1[..., None], to_owner, to_other)
  return d0, d1


def _exit_crossing(u: jax.Array, v: jax.Array, silhouette: jax.Array) -> tuple:
  """Vertices u, v [..., 3] of T in the pair frame -> (t [...], usable [...]) of its exit edge.

  Edge k joins vertices k+1 and k+2; usable means that edge straddles the axis, is a
  silhouette (silhouette [..., 3]) and is steep (|Δv| ≥ |Δu|).
  """
  ua, va = jnp.roll(u, -1, axis=-1), jnp.roll(v, -1, axis=-1)
  ub, vb = jnp.roll(u, -2, axis=-1), jnp.roll(v, -2, axis=-1)
  du, dv = ub - ua, vb - va
  straddle = (va < 0.0) != (vb < 0.0)
  # Double where: the unused branches must not put NaN into the gradient.
  crossing = ua - va * du / jnp.where(straddle, dv, 1.0)
  candidates = jnp.where(straddle, jax.lax.stop_gradient(crossing), -jnp.inf)
  k = jnp.argmax(candidates, axis=-1)[..., None]
  pick = lambda a: jnp.take_along_axis(a, k, axis=-1)[..., 0]
  usable = pick(straddle) & pick(silhouette) & (pick(jnp.abs(dv)) >= pick(jnp.abs(du)))
  return pick(crossing), usable


def _silhouette_edges(mesh: dict, tri: jax.Array) -> jax.Array:
  """[...] face ids -> [..., 3] whether each edge is a silhouette on screen."""
  f = jnp.maximum(tri, 0)
  corners, wings = mesh["faces"][f], mesh["wings"][f]                   # [..., 3]
  px, py = mesh["x"][corners], mesh["y"][corners]
  ox, oy = mesh["x"][jnp.maximum(wings, 0)], mesh["y"][jnp.maximum(wings, 0)]
  x1, y1 = jnp.roll(px, -1, axis=-1), jnp.roll(py, -1, axis=-1)
  x2, y2 = jnp.roll(px, -2, axis=-1), jnp.roll(py, -2, axis=-1)
  own = _orient(px[..., :1], py[..., :1], x1[..., :1], y1[..., :1], x2[..., :1], y2[..., :1])
  wing = _orient(ox, oy, x1, y1, x2, y2)              # the neighbour's vertex in vertex k's place
  same_side = (own < 0.0) == (wing < 0.0)
  return jax.lax.stop_gradient((wings < 0) | same_side)


def _orient(ax, ay, bx, by, cx, cy) -> jax.Array:
  """Twice the signed area of triangle (a, b, c)."""
  return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
