"""Differentiable marching tetrahedra with static shapes (jit-able), and host-side compaction.

Sign convention of the whole project: SDF s < 0 inside, s > 0 outside (NeuS's convention).
A grid vertex is inside when s < 0 (s = 0 counts as outside). DC's DMTet kernel does the
opposite (it treats s > 0 as occupied); this one does not, so the NeuS SDF is used as is.

Symbols. A lattice edge (a, b) crosses the surface when exactly one end is inside. Its mesh
vertex is the zero of the linear interpolant,
  p = x_a + t (x_b - x_a),   t = s_a / (s_a - s_b) in [0, 1],
differentiable in both the positions x [V, 3] and the SDF values s [V]. One vertex per crossing
lattice edge, shared by every tet around the edge, so the surface is closed (watertight) away
from the grid's boundary. A tet with one vertex on one side gives 1 triangle, with two on each
side a quad split into 2 triangles. Faces are wound so that cross(v1 - v0, v2 - v0) points
outward (from s < 0 to s > 0), given positively oriented tets (tets.TetGrid's are; a deformed
tet that inverts flips its own faces, as in the reference).

Static budgets: `max_vertices` and `max_faces` fix the output shapes. Counts above them set
`overflow`; the padded mesh is then incomplete, and callers must report it (`compact` raises).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dc3d_jax import errors
from dc3d_jax.geometry import tets as tets_lib


@struct.dataclass
class PaddedMesh:
  """vertices: [Vmax, 3] (rows >= num_vertices are 0); faces: [Fmax, 3] int32 (rows >= num_faces
  are (0, 0, 0): degenerate, so they cover no pixel and add no area, volume or normal);
  vertex_mask [Vmax], face_mask [Fmax] bool; num_vertices, num_faces: int32 scalars, the true
  counts even on overflow; overflow: bool scalar, a count exceeded its budget."""
  vertices: jax.Array
  faces: jax.Array
  vertex_mask: jax.Array
  face_mask: jax.Array
  num_vertices: jax.Array
  num_faces: jax.Array
  overflow: jax.Array


def _cycle(edge_ids: list) -> list:
  """Orders a tet's crossing edges so that consecutive ones share a tet vertex (a polygon)."""
  pairs = tets_lib.TET_EDGE_VERTICES
  order, rest = [edge_ids[0]], list(edge_ids[1:])
  while rest:
    nxt = next(e for e in rest if set(pairs[e]) & set(pairs[order[-1]]))
    order.append(nxt)
    rest.remove(nxt)
  return order


def _triangle_table():
  """[16, 2, 3] local edge ids of each case's triangles, and [16] triangle counts.

  Case c has local vertex k inside when bit k is set. The winding is derived on the positively
  oriented tet (0, e_x, e_y, e_z) with crossings at edge midpoints: the polygon is reversed
  when its normal points toward the inside vertices; then fanned from its first corner."""
  corners = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64)
  pairs = tets_lib.TET_EDGE_VERTICES
  table, counts = np.zeros((16, 2, 3), np.int32), np.zeros(16, np.int32)
  for case in range(16):
    inside = np.array([(case >> k) & 1 for k in range(4)], bool)
    crossing = [e for e, (a, b) in enumerate(pairs) if inside[a] != inside[b]]
    if not crossing:
      continue
    poly = _cycle(crossing)
    mid = corners[pairs[poly]].mean(1)
    normal = np.cross(mid[1] - mid[0], mid[2] - mid[0])
    if normal @ (corners[~inside].mean(0) - corners[inside].mean(0)) < 0:
      poly = poly[::-1]
    tris = [[poly[0], poly[k], poly[k + 1]] for k in range(1, len(poly) - 1)]
    counts[case] = len(tris)
    table[case, :len(tris)] = tris
  return table, counts


TRIANGLE_TABLE, NUM_TRIANGLES = _triangle_table()


def _edge_vertices(vertices, sdf, edges, crossing, max_vertices):
  """Interpolated vertices on the first max_vertices crossing edges, in edge order."""
  num = jnp.sum(crossing, dtype=jnp.int32)
  (edge_of_vertex,) = jnp.nonzero(crossing, size=max_vertices, fill_value=0)
  mask = jnp.arange(max_vertices) < num
  a, b = edges[edge_of_vertex, 0], edges[edge_of_vertex, 1]
  s_a, s_b = sdf[a], sdf[b]
  # s_a and s_b have opposite signs on a crossing edge, so the denominator is nonzero there;
  # padded rows divide by 1 so that neither value nor gradient is NaN.
  t = jnp.where(mask, s_a, 0.0) / jnp.where(mask, s_a - s_b, 1.0)
  p = vertices[a] + t[:, None] * (vertices[b] - vertices[a])
  return jnp.where(mask[:, None], p, 0.0), mask, num


def _faces(inside_tet, tet_edges, vertex_of_edge, max_faces):
  """[Fmax, 3] faces in tet order (then triangle order within a tet), mask and true count."""
  case = jnp.sum(inside_tet.astype(jnp.int32) << jnp.arange(4, dtype=jnp.int32), -1)
  n_tri = jnp.asarray(NUM_TRIANGLES)[case]
  num = jnp.sum(n_tri, dtype=jnp.int32)
  # A tet with a crossing has >= 1 face, so max_faces bounds the crossing tets we need.
  (tet_ids,) = jnp.nonzero(n_tri > 0, size=max_faces, fill_value=0)
  n_tet = jnp.where(jnp.arange(max_faces) < jnp.sum(n_tri > 0), n_tri[tet_ids], 0)
  slot_ok = jnp.arange(2)[None, :] < n_tet[:, None]                   # [Fmax, 2]
  (cand,) = jnp.nonzero(slot_ok.reshape(-1), size=max_faces, fill_value=0)
  tet, slot = tet_ids[cand // 2], cand % 2
  local = jnp.asarray(TRIANGLE_TABLE)[case[tet], slot]                 # [Fmax, 3]
  faces = vertex_of_edge[jnp.take_along_axis(tet_edges[tet], local, axis=1)]
  mask = jnp.arange(max_faces) < num
  return jnp.where(mask[:, None], faces, 0), mask, num


def marching_tets(vertices: jax.Array, sdf: jax.Array, grid: tets_lib.TetGrid, *,
                  max_vertices: int, max_faces: int) -> PaddedMesh:
  """The zero level set of a per-vertex SDF on a tet grid, as a padded triangle mesh.

  vertices: [V, 3] grid vertex positions (any frame; e.g. `tets.deformed_vertices`);
  sdf: [V] values, < 0 inside; grid: its tets and edges (pass it as a jit argument);
  max_vertices, max_faces: static output sizes. Differentiable in vertices and sdf; the
  topology (which edges cross, which faces exist) is piecewise constant."""
  inside = sdf < 0
  edges = jnp.asarray(grid.edges)
  crossing = inside[edges[:, 0]] != inside[edges[:, 1]]
  verts, vmask, n_verts = _edge_vertices(vertices, sdf, edges, crossing, max_vertices)
  vertex_of_edge = jnp.minimum(jnp.cumsum(crossing, dtype=jnp.int32) - 1, max_vertices - 1)
  inside_tet = inside[jnp.asarray(grid.tets)]
  faces, fmask, n_faces = _faces(inside_tet, jnp.asarray(grid.tet_edges), vertex_of_edge,
                                 max_faces)
  return PaddedMesh(vertices=verts, faces=faces.astype(jnp.int32), vertex_mask=vmask,
                    face_mask=fmask, num_vertices=n_verts, num_faces=n_faces,
                    overflow=(n_verts > max_vertices) | (n_faces > max_faces))


# The jitted entry point: one compile per (grid size, budgets); pass the grid as an argument.
extract = jax.jit(marching_tets, static_argnames=("max_vertices", "max_faces"))


def compact(mesh: PaddedMesh, budget_keys: str = "max_vertices / max_faces"):
  """Host side: (vertices [n, 3] float32, faces [m, 3] int32) with only valid faces and the
  vertices they use, reindexed in order. Raises ConfigError on overflow, naming budget_keys."""
  if bool(mesh.overflow):
    raise errors.ConfigError(
        f"marching tets overflowed its budget: the surface has {int(mesh.num_vertices):,} "
        f"vertices and {int(mesh.num_faces):,} faces, the buffers hold "
        f"{mesh.vertex_mask.shape[0]:,} and {mesh.face_mask.shape[0]:,}; raise {budget_keys}")
  faces = np.asarray(mesh.faces)[np.asarray(mesh.face_mask)]
  used, inverse = np.unique(faces.reshape(-1), return_inverse=True)
  vertices = np.asarray(mesh.vertices, np.float32)[used]
  return vertices, inverse.reshape(-1, 3).astype(np.int32)
