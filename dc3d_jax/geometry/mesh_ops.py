"""Triangle-mesh operations: normals, edges, regularizers, measures, connected components.

Symbols: vertices [V, 3], faces [F, 3] int32 wound so that cross(v1 - v0, v2 - v0) points
outward, face_mask [F] (padded meshes from marching_tets; None = all faces valid), vertex
normals n_i. The jnp functions are jit-able with static shapes and differentiable in the
vertex positions; the component functions run on the host (NumPy/SciPy).

Reference semantics (threestudio `Mesh`, used by DC's geometry stage):
- vertex normals: the sum of the unnormalised face normals cross(v1 - v0, v2 - v0) (twice
  the face area times its unit normal) over the faces at a vertex, normalised: area-weighted;
- normal consistency: mean over the mesh's unique edges (i, j) of 1 - cos(n_i, n_j), the
  two end-points' vertex normals (not the two faces' normals, as PyTorch3D's loss uses);
- Laplacian: mean over vertices of |Σ_{j ∈ N(i)} (v_i - v_j)| (uniform weights);
- outlier removal: drop components with fewer than int(fraction × faces of the largest)
  faces (fraction 0.01 by default, `isosurface_outlier_n_faces_threshold`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
from flax import struct

from dc3d_jax.core import numerics


def _mask(faces, face_mask):
  return jnp.ones(faces.shape[0], bool) if face_mask is None else face_mask


def face_normals(vertices: jax.Array, faces: jax.Array) -> jax.Array:
  """[F, 3] cross(v1 - v0, v2 - v0): outward, with length twice the face's area."""
  v0, v1, v2 = (vertices[faces[:, k]] for k in range(3))
  return jnp.cross(v1 - v0, v2 - v0)


def vertex_normals(vertices: jax.Array, faces: jax.Array, face_mask=None) -> jax.Array:
  """[V, 3] area-weighted unit vertex normals; 0 for a vertex in no valid face."""
  fn = face_normals(vertices, faces) * _mask(faces, face_mask)[:, None]
  acc = jnp.zeros_like(vertices)
  for k in range(3):
    acc = acc.at[faces[:, k]].add(fn)
  return numerics.safe_normalize(acc)


def surface_area(vertices: jax.Array, faces: jax.Array, face_mask=None) -> jax.Array:
  """Σ |cross(v1 - v0, v2 - v0)| / 2 over valid faces."""
  fn = face_normals(vertices, faces)
  return 0.5 * jnp.sum(numerics.safe_norm(fn) * _mask(faces, face_mask))


def enclosed_volume(vertices: jax.Array, faces: jax.Array, face_mask=None) -> jax.Array:
  """Signed volume Σ v0·(v1 × v2) / 6 (divergence theorem): > 0 for a closed, outward mesh."""
  v0, v1, v2 = (vertices[faces[:, k]] for k in range(3))
  det = jnp.sum(v0 * jnp.cross(v1, v2), -1)
  return jnp.sum(det * _mask(faces, face_mask)) / 6.0


@struct.dataclass
class MeshEdges:
  """Unique undirected edges of a padded mesh, padded to 3F rows.
  edges: [3F, 2] int32 (i < j; padded rows (0, 0)); mask: [3F] bool; num_edges: int32 scalar;
  face_count: [3F] int32, valid faces using the edge (2 everywhere on a closed manifold mesh);
  adjacent_faces: [3F, 2] int32, the first two faces using it (-1 where there is none)."""
  edges: jax.Array
  mask: jax.Array
  num_edges: jax.Array
  face_count: jax.Array
  adjacent_faces: jax.Array


def unique_edges(faces: jax.Array, face_mask=None) -> MeshEdges:
  """Sorts the 3F half-edges by (min, max) end-point and keeps the first of each run."""
  n_half = 3 * faces.shape[0]
  valid = jnp.repeat(_mask(faces, face_mask), 3)
  half = faces[:, jnp.array([[0, 1], [1, 2], [2, 0]])].reshape(n_half, 2)
  big = jnp.iinfo(jnp.int32).max  # invalid half-edges sort last
  lo = jnp.where(valid, jnp.min(half, -1), big)
  hi = jnp.where(valid, jnp.max(half, -1), big)
  order = jnp.lexsort((hi, lo))
  lo, hi, valid = lo[order], hi[order], valid[order]
  face_of = (order // 3).astype(jnp.int32)
  new = jnp.concatenate([jnp.ones(1, bool), (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])])
  start = new & valid
  run = jnp.cumsum(start) - 1
  count = jax.ops.segment_sum(valid.astype(jnp.int32), jnp.where(valid, run, n_half),
                              num_segments=n_half + 1)[:n_half]
  num = jnp.sum(start, dtype=jnp.int32)
  (first,) = jnp.nonzero(start, size=n_half, fill_value=0)
  mask = jnp.arange(n_half) < num
  second = jnp.minimum(first + 1, n_half - 1)
  has_two = mask & (count >= 2)
  adjacent = jnp.stack([jnp.where(mask, face_of[first], -1),
                        jnp.where(has_two, face_of[second], -1)], -1)
  edges = jnp.where(mask[:, None], jnp.stack([lo[first], hi[first]], -1), 0)
  return MeshEdges(edges=edges.astype(jnp.int32), mask=mask, num_edges=num,
                   face_count=jnp.where(mask, count, 0), adjacent_faces=adjacent)


def normal_consistency(normals: jax.Array, edges: jax.Array, edge_mask: jax.Array) -> jax.Array:
  """Mean over valid edges [E, 2] (each undirected edge once) of 1 - cos(n_i, n_j) of the
  end-points' vertex normals [V, 3]."""
  n = numerics.safe_normalize(normals)
  cos = jnp.sum(n[edges[:, 0]] * n[edges[:, 1]], -1)
  return jnp.sum((1.0 - cos) * edge_mask) / jnp.maximum(jnp.sum(edge_mask), 1)


def mesh_normal_consistency(vertices: jax.Array, faces: jax.Array, face_mask=None) -> jax.Array:
  """The reference's normal-consistency loss of a (padded) mesh, in one call."""
  e = unique_edges(faces, face_mask)
  return normal_consistency(vertex_normals(vertices, faces, face_mask), e.edges, e.mask)


def laplacian_loss(vertices: jax.Array, edges: jax.Array, edge_mask: jax.Array,
                   vertex_mask=None) -> jax.Array:
  """Mean over valid vertices of |Σ_{j ∈ N(i)} (v_i - v_j)| (uniform Laplacian); edges [E, 2]
  each undirected edge once, edge_mask [E]."""
  i, j = edges[:, 0], edges[:, 1]
  diff = (vertices[i] - vertices[j]) * edge_mask[:, None]
  delta = jnp.zeros_like(vertices).at[i].add(diff).at[j].add(-diff)
  if vertex_mask is None:
    vertex_mask = jnp.ones(vertices.shape[0], bool)
  per_vertex = numerics.safe_norm(delta) * vertex_mask
  return jnp.sum(per_vertex) / jnp.maximum(jnp.sum(vertex_mask), 1)


def connected_components(faces: np.ndarray, num_vertices: int):
  """Host: (face_labels [F] int, faces_per_component [C] int). Faces are connected through
  shared vertices (the same as shared edges on marching tets' manifold output)."""
  faces = np.asarray(faces)
  rows = np.concatenate([faces[:, 0], faces[:, 1]])
  cols = np.concatenate([faces[:, 1], faces[:, 2]])
  graph = scipy.sparse.coo_matrix((np.ones(rows.shape[0], np.int8), (rows, cols)),
                                  shape=(num_vertices, num_vertices))
  _, vertex_labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
  _, face_labels = np.unique(vertex_labels[faces[:, 0]], return_inverse=True)
  return face_labels, np.bincount(face_labels)


def remove_small_components(vertices: np.ndarray, faces: np.ndarray,
                            min_fraction: float = 0.01):
  """Host: drops components with fewer than int(min_fraction × faces of the largest) faces
  (the reference's rule) and the vertices no kept face uses; returns (vertices, faces)."""
  vertices, faces = np.asarray(vertices), np.asarray(faces)
  if faces.shape[0] == 0:
    return vertices, faces
  labels, counts = connected_components(faces, vertices.shape[0])
  keep = counts[labels] >= int(min_fraction * counts.max())
  used, inverse = np.unique(faces[keep].reshape(-1), return_inverse=True)
  return vertices[used], inverse.reshape(-1, 3).astype(faces.dtype)
