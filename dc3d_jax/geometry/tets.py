"""Tetrahedral grids of the unit cube, generated here (no Quartet file), and their placement.

Symbols. Resolution N (the reference's `isosurface_resolution`, 128 by default) means a cube
lattice of n = N/2 cells per axis, lattice edge h = 1/n = 2/N, vertices (n+1)^3 on the points
(i, j, k)/n of [0, 1]^3, and every cell split into 6 tetrahedra (the Kuhn / Freudenthal split:
one tet per monotone path 000 -> 111 through the cell's corners, i.e. per permutation of the
axes). The split is translation-invariant, so two cells sharing a square face cut it along the
same diagonal and the tets form one conforming mesh (every interior triangle is shared by
exactly two tets). This matches the density of DC's Quartet grids: its `64_tets.npz` has
36,562 vertices and 192,492 tets; N = 64 here gives 35,937 vertices and 196,608 tets, and the
reference's per-vertex deformation (1/N)·tanh(δ) is half a lattice edge.

  N = 64:   35,937 vertices,   196,608 tets,   238,688 edges
  N = 128: 274,625 vertices, 1,572,864 tets, 1,872,064 edges

Every tet is positively oriented: det[v1 - v0, v2 - v0, v3 - v0] > 0 (marching_tets' triangle
table relies on it). Local edge k of a tet joins its vertices TET_EDGE_VERTICES[k].

`TetGrid` holds NumPy arrays (built once on the host). Hand it to jitted code as an argument
(`jax.device_put(grid)` once): closing over it would bake ~60 MB of constants into the program.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dc3d_jax import errors

# Local edges of a tet as pairs of local vertex indices (the reference's order).
TET_EDGE_VERTICES = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]], np.int32)
# The 7 lattice edge directions of the Kuhn split: a cell's 0/1 steps that a monotone path takes.
_DIRECTIONS = [d for d in itertools.product((0, 1), repeat=3) if any(d)]


@struct.dataclass
class TetGrid:
  """vertices: [V, 3] float32 in [0, 1]^3; tets: [T, 4] int32 (positively oriented);
  edges: [E, 2] int32 unique lattice edges (each once, lower-lattice end first);
  tet_edges: [T, 6] int32, edge id of each tet's local edge k (TET_EDGE_VERTICES[k]).
  resolution: N (n = N/2 cells per axis)."""
  vertices: np.ndarray
  tets: np.ndarray
  edges: np.ndarray
  tet_edges: np.ndarray
  resolution: int = struct.field(pytree_node=False)

  @property
  def cells_per_axis(self) -> int:
    return self.resolution // 2


def _kuhn_templates() -> np.ndarray:
  """[6, 4, 3] corner offsets (0/1) of the 6 tets of a unit cell, each positively oriented."""
  templates = []
  for perm in itertools.permutations(range(3)):
    eye = np.eye(3, dtype=np.int64)
    path = np.cumsum(np.concatenate([np.zeros((1, 3), np.int64), eye[list(perm)]]), 0)
    if np.linalg.det((path[1:] - path[0]).astype(np.float64)) < 0:
      path = path[[0, 2, 1, 3]]  # odd permutation: swap two corners to flip the orientation
    templates.append(path)
  return np.stack(templates)


def _vertex_index(ijk: np.ndarray, n: int) -> np.ndarray:
  """Lattice point (i, j, k) in [0, n]^3 -> vertex index (i (n+1) + j)(n+1) + k."""
  m = n + 1
  return (ijk[..., 0] * m + ijk[..., 1]) * m + ijk[..., 2]


def _edge_index(start: np.ndarray, direction, n: int, offsets: dict) -> np.ndarray:
  """Id of the lattice edge start -> start + direction (direction one of _DIRECTIONS)."""
  extent = [n + 1 - d for d in direction]
  return offsets[direction] + (start[..., 0] * extent[1] + start[..., 1]) * extent[2] + start[..., 2]


def _lattice_edges(n: int):
  """[E, 2] edges grouped by direction, and each direction's first edge id."""
  edges, offsets, total = [], {}, 0
  for d in _DIRECTIONS:
    axes = [np.arange(n + 1 - di) for di in d]
    start = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    offsets[d] = total
    total += start.shape[0]
    edges.append(np.stack([_vertex_index(start, n), _vertex_index(start + np.array(d), n)], -1))
  return np.concatenate(edges).astype(np.int32), offsets


def _tet_edge_table(cells: np.ndarray, templates: np.ndarray, n: int, offsets: dict):
  """[C, 6, 6] edge id of each (cell, template, local edge). Corners on a monotone path are
  ordered componentwise, so each local edge runs from its lower corner along a 0/1 direction."""
  out = np.empty((cells.shape[0], len(templates), 6), np.int64)
  for t, corners in enumerate(templates):
    for k, (a, b) in enumerate(TET_EDGE_VERTICES):
      lo, hi = sorted((corners[a], corners[b]), key=lambda c: c.sum())
      out[:, t, k] = _edge_index(cells + lo, tuple(int(x) for x in hi - lo), n, offsets)
  return out


def tet_grid(resolution: int = 128) -> TetGrid:
  """The Kuhn-split cube lattice of the unit cube at resolution N (N/2 cells per axis)."""
  if resolution < 2 or resolution % 2:
    raise errors.ConfigError(
        f"tet grid resolution {resolution}: expected an even integer >= 2 (N/2 cells per axis, "
        "as the reference's 32/64/128 grids); set an even resolution")
  n = resolution // 2
  lattice = np.stack(np.meshgrid(*[np.arange(n + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
  cells = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
  templates = _kuhn_templates()
  tets = _vertex_index(cells[:, None, None, :] + templates[None], n).reshape(-1, 4)
  edges, offsets = _lattice_edges(n)
  tet_edges = _tet_edge_table(cells, templates, n, offsets).reshape(-1, 6)
  return TetGrid(vertices=(lattice / n).astype(np.float32), tets=tets.astype(np.int32),
                 edges=edges, tet_edges=tet_edges.astype(np.int32), resolution=resolution)


def to_box(unit_points: jax.Array, bbox: jax.Array) -> jax.Array:
  """Maps [..., 3] points of the unit cube to the box bbox = [[x0, y0, z0], [x1, y1, z1]]."""
  bbox = jnp.asarray(bbox)
  return bbox[0] + unit_points * (bbox[1] - bbox[0])


def deformed_vertices(grid: TetGrid, deformation: jax.Array, bbox: jax.Array) -> jax.Array:
  """[V, 3] world positions of the DMTet vertices: grid + (1/N)·tanh(δ) in the unit cube (the
  reference's bound: half a lattice edge here), then mapped to `bbox` [2, 3].
  deformation: [V, 3] unbounded per-vertex parameters δ (0 = the undeformed lattice)."""
  unit = grid.vertices + jnp.tanh(deformation) / grid.resolution
  return to_box(unit, bbox)
