"""Coloured triangle-mesh primitives and the project's procedural ground-truth object.

Symbols: `Mesh` (vertices [V, 3], faces [F, 3], per-vertex colours [V, 3]); builders
`uv_sphere`, `cube_sphere`, `box`, `cylinder`, `cone`, `torus`; transforms `translate`,
`scale`, `rotate`; `concatenate`; measures `mesh_bounds`, `mesh_area`, `mesh_volume`; and
`test_object`.

Conventions: world Z-up (docs/ARCHITECTURE.md). Every face is wound counter-clockwise seen from outside,
so cross(v1 - v0, v2 - v0) is the outward normal and `mesh_volume` (divergence theorem,
Σ v0·(v1 × v2) / 6) is positive for a closed primitive. Primitives never share vertices with
each other, so per-vertex colours give each primitive (or each box face) a flat colour.

Builders work in NumPy (they run once, on the host) and return NumPy-backed meshes; a Mesh is
a pytree, so it crosses jit unchanged.
"""

import numpy as np
from flax import struct


@struct.dataclass
class Mesh:
  """vertices: [V, 3] float32 world; faces: [F, 3] int32; colors: [V, 3] float32 in [0, 1]."""
  vertices: np.ndarray
  faces: np.ndarray
  colors: np.ndarray

  @property
  def num_faces(self) -> int:
    return int(self.faces.shape[0])


def _make(vertices, faces, color) -> Mesh:
  """Wraps arrays; `color` is one [3] colour or [V, 3] per-vertex colours."""
  vertices = np.asarray(vertices, np.float32)
  colors = np.broadcast_to(np.asarray(color, np.float32), vertices.shape)
  return Mesh(vertices=vertices, faces=np.asarray(faces, np.int32),
              colors=np.ascontiguousarray(colors))


def _grid_faces(n_rows: int, n_cols: int, wrap_rows: bool, wrap_cols: bool) -> np.ndarray:
  """Two triangles per cell of a vertex grid indexed row * n_cols + col.

  If (d/d row) × (d/d col) points outward, (a, b, c) and (a, c, d) with a = (i, j),
  b = (i+1, j), c = (i+1, j+1), d = (i, j+1) are counter-clockwise seen from outside.
  """
  rows = np.arange(n_rows if wrap_rows else n_rows - 1)
  cols = np.arange(n_cols if wrap_cols else n_cols - 1)
  i, j = [x.ravel() for x in np.meshgrid(rows, cols, indexing="ij")]
  i1, j1 = (i + 1) % n_rows, (j + 1) % n_cols
  a, b, c, d = i * n_cols + j, i1 * n_cols + j, i1 * n_cols + j1, i * n_cols + j1
  return np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)])


def _fan_faces(center: int, ring: np.ndarray, flip: bool) -> np.ndarray:
  """Triangles (center, ring[k], ring[k+1]); counter-clockwise about the ring's axis of turning
  (flip=False), or reversed for a cap facing the other way."""
  nxt = np.roll(ring, -1)
  tri = np.stack([np.full_like(ring, center), ring, nxt], -1)
  return tri[:, [0, 2, 1]] if flip else tri


def _circle(n: int, radius: float) -> np.ndarray:
  """[n, 2] points counter-clockwise around the origin (seen from +z)."""
  phi = 2.0 * np.pi * np.arange(n) / n
  return radius * np.stack([np.cos(phi), np.sin(phi)], -1)


def _frame_for_axis(axis) -> np.ndarray:
  """[3, 3] proper rotation (det +1) whose third column is the unit `axis`: local z -> axis."""
  a = np.asarray(axis, np.float64)
  a = a / np.linalg.norm(a)
  helper = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
  u = np.cross(helper, a)
  u /= np.linalg.norm(u)
  return np.stack([u, np.cross(a, u), a], -1)


def _place(local_vertices, center, axis) -> np.ndarray:
  """Rotates local z onto `axis` (orientation-preserving, so winding stays outward), then shifts."""
  return local_vertices @ _frame_for_axis(axis).T + np.asarray(center, np.float64)


def uv_sphere(center=(0.0, 0.0, 0.0), radius: float = 1.0, color=(0.7, 0.7, 0.7),
              n_lat: int = 16, n_lon: int = 32) -> Mesh:
  """Latitude-longitude sphere: n_lat - 1 rings of n_lon vertices plus two poles."""
  theta = np.pi * np.arange(1, n_lat) / n_lat
  phi = 2.0 * np.pi * np.arange(n_lon) / n_lon
  t, p = np.meshgrid(theta, phi, indexing="ij")
  ring_pts = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1)
  verts = np.concatenate([ring_pts.reshape(-1, 3), [[0, 0, 1], [0, 0, -1]]])
  north, south = len(verts) - 2, len(verts) - 1
  # Rows run along θ (south-going) and columns along φ: e_θ × e_φ is the outward normal.
  faces = [_grid_faces(n_lat - 1, n_lon, False, True),
           _fan_faces(north, np.arange(n_lon), flip=False),
           _fan_faces(south, (n_lat - 2) * n_lon + np.arange(n_lon), flip=True)]
  return _make(radius * verts + np.asarray(center), np.concatenate(faces), color)


def box(center=(0.0, 0.0, 0.0), half_sizes=(0.5, 0.5, 0.5), color=(0.7, 0.7, 0.7)) -> Mesh:
  """Axis-aligned box, 4 own vertices per face. `color`: one [3] colour or [6, 3] per face in
  the order +X, -X, +Y, -Y, +Z, -Z."""
  h = np.asarray(half_sizes, np.float64)
  face_colors = np.broadcast_to(np.asarray(color, np.float32), (6, 3))
  eye = np.eye(3)
  verts, colors = [], []
  for f, (k, s) in enumerate([(k, s) for k in range(3) for s in (1.0, -1.0)]):
    # u × v = s·e_k: corners (-u-v, u-v, u+v, -u+v) are counter-clockwise seen from outside.
    u, v = eye[(k + 1) % 3], eye[(k + 2) % 3]
    if s < 0:
      u, v = v, u
    corners = [s * eye[k] + su * u + sv * v for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    verts.append(np.asarray(corners) * h + np.asarray(center))
    colors.append(np.repeat(face_colors[f][None], 4, 0))
  quad = np.array([[0, 1, 2], [0, 2, 3]])
  faces = np.concatenate([quad + 4 * f for f in range(6)])
  return _make(np.concatenate(verts), faces, np.concatenate(colors))


def cube_sphere(center=(0.0, 0.0, 0.0), radius: float = 1.0, color=(0.7, 0.7, 0.7),
                n: int = 8) -> Mesh:
  """Sphere from a cube whose faces carry n × n quads, pushed onto the sphere: 12 n² nearly
  uniform triangles on shared vertices (closed and manifold, unlike `box`), without the
  uv-sphere's slivers at the poles."""
  t = np.linspace(-1.0, 1.0, n + 1)
  a, b = np.meshgrid(t, t, indexing="ij")                       # a along u, b along v
  eye = np.eye(3)
  points, faces = [], []
  cell = np.arange(n)[:, None] * (n + 1) + np.arange(n)[None, :]      # (i, j) -> i(n+1) + j
  quads = np.stack([cell, cell + n + 1, cell + n + 2, cell + 1], -1).reshape(-1, 4)
  for f, (k, s) in enumerate([(k, s) for k in range(3) for s in (1.0, -1.0)]):
    u, v = eye[(k + 1) % 3], eye[(k + 2) % 3]
    if s < 0:
      u, v = v, u                                # u × v = s·e_k: outward, as in `box`
    points.append((s * eye[k] + a[..., None] * u + b[..., None] * v).reshape(-1, 3))
    offset = f * (n + 1) ** 2
    faces.append(np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]]) + offset)
  # Cube edges and corners appear on several faces: merge them into shared vertices.
  unique, inverse = np.unique(np.round(np.concatenate(points), 9), axis=0, return_inverse=True)
  verts = unique / np.linalg.norm(unique, axis=-1, keepdims=True)
  return _make(radius * verts + np.asarray(center), inverse.reshape(-1)[np.concatenate(faces)],
               color)


def _ring_3d(n: int, radius: float, z: float) -> np.ndarray:
  """[n, 3] ring at height z, counter-clockwise seen from +z."""
  return np.concatenate([_circle(n, radius), np.full((n, 1), z)], -1)


def cylinder(center=(0.0, 0.0, 0.0), radius: float = 0.5, half_height: float = 0.5,
             color=(0.7, 0.7, 0.7), n: int = 32, axis=(0.0, 0.0, 1.0)) -> Mesh:
  """Closed cylinder about `axis` (default Z) through `center`; caps have their own vertices."""
  lo, hi = _ring_3d(n, radius, -half_height), _ring_3d(n, radius, half_height)
  side = np.stack([lo, hi], 1).reshape(-1, 3)
  verts = np.concatenate([side, lo, hi, [[0, 0, -half_height], [0, 0, half_height]]])
  # Side rows run along φ, columns bottom -> top: e_φ × e_z is the outward radial direction.
  faces = np.concatenate([_grid_faces(n, 2, True, False),
                          _fan_faces(4 * n, 2 * n + np.arange(n), flip=True),
                          _fan_faces(4 * n + 1, 3 * n + np.arange(n), flip=False)])
  return _make(_place(verts, center, axis), faces, color)


def cone(base_center=(0.0, 0.0, 0.0), radius: float = 0.5, height: float = 1.0,
         color=(0.7, 0.7, 0.7), n: int = 32, axis=(0.0, 0.0, 1.0)) -> Mesh:
  """Closed cone: base disc at `base_center`, apex at base_center + height·axis."""
  ring = _ring_3d(n, radius, 0.0)
  verts = np.concatenate([ring, [[0, 0, height]], ring, [[0, 0, 0]]])
  # (apex, b_j, b_j+1) turns counter-clockwise about +z, so its normal points up and out.
  faces = np.concatenate([_fan_faces(n, np.arange(n), flip=False),
                          _fan_faces(2 * n + 1, n + 1 + np.arange(n), flip=True)])
  return _make(_place(verts, base_center, axis), faces, color)


def torus(center=(0.0, 0.0, 0.0), major_radius: float = 0.5, minor_radius: float = 0.15,
          color=(0.7, 0.7, 0.7), n_major: int = 32, n_minor: int = 16,
          axis=(0.0, 0.0, 1.0)) -> Mesh:
  """Torus about `axis`: tube of radius minor_radius around a circle of radius major_radius."""
  u = 2.0 * np.pi * np.arange(n_major) / n_major
  v = 2.0 * np.pi * np.arange(n_minor) / n_minor
  uu, vv = np.meshgrid(u, v, indexing="ij")
  rho = major_radius + minor_radius * np.cos(vv)
  verts = np.stack([rho * np.cos(uu), rho * np.sin(uu), minor_radius * np.sin(vv)], -1)
  # Rows along u, columns along v: ∂u × ∂v = (cos v ρ̂ + sin v ẑ), the outward tube normal.
  faces = _grid_faces(n_major, n_minor, True, True)
  return _make(_place(verts.reshape(-1, 3), center, axis), faces, color)


def translate(mesh: Mesh, offset) -> Mesh:
  return mesh.replace(vertices=(mesh.vertices + np.asarray(offset, np.float32)))


def scale(mesh: Mesh, factor) -> Mesh:
  """Scales about the origin; `factor` is a scalar or [3], positive (a reflection would flip
  the winding)."""
  factor = np.asarray(factor, np.float32)
  if np.any(factor <= 0):
    raise ValueError(f"scale factors must be positive, got {factor}")
  return mesh.replace(vertices=mesh.vertices * factor)


def rotate(mesh: Mesh, rotation) -> Mesh:
  """Applies a [3, 3] rotation about the origin (x -> R x)."""
  return mesh.replace(vertices=mesh.vertices @ np.asarray(rotation, np.float32).T)


def concatenate(meshes) -> Mesh:
  """One mesh holding all of `meshes`; face indices are offset, no vertices are merged."""
  offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
  return _make(np.concatenate([np.asarray(m.vertices) for m in meshes]),
               np.concatenate([np.asarray(m.faces) + o for m, o in zip(meshes, offsets)]),
               np.concatenate([np.asarray(m.colors) for m in meshes]))


def _corners(mesh: Mesh):
  """Three [F, 3] float64 arrays: each face's vertices."""
  v = np.asarray(mesh.vertices, np.float64)[np.asarray(mesh.faces)]
  return v[:, 0], v[:, 1], v[:, 2]


def mesh_bounds(mesh: Mesh) -> tuple:
  """(min [3], max [3]) over the vertices."""
  v = np.asarray(mesh.vertices)
  return v.min(0), v.max(0)


def mesh_area(mesh: Mesh) -> float:
  """Σ |(v1 - v0) × (v2 - v0)| / 2."""
  v0, v1, v2 = _corners(mesh)
  return float(0.5 * np.linalg.norm(np.cross(v1 - v0, v2 - v0), axis=-1).sum())


def mesh_volume(mesh: Mesh) -> float:
  """Signed volume Σ v0·(v1 × v2) / 6 (divergence theorem): > 0 for a closed mesh whose faces
  are counter-clockwise seen from outside."""
  v0, v1, v2 = _corners(mesh)
  return float(np.einsum("fi,fi->f", v0, np.cross(v1, v2)).sum() / 6.0)


# Saturated, mutually distinct colours; names say which part wears them (see test_object).
TEST_OBJECT_COLORS = {
    "base": (0.15, 0.30, 0.95),   # blue
    "body": (0.90, 0.12, 0.12),   # red
    "head": (0.98, 0.85, 0.10),   # yellow
    "hat": (0.10, 0.75, 0.25),    # green
    "arm": (1.00, 0.50, 0.00),    # orange, +Y side only
    "ring": (0.85, 0.15, 0.85),   # magenta, on the back (-X) only
}


def test_object(detail: int = 1) -> Mesh:
  """The ground-truth toy: a little figure on a round base, Z up, inside radius 0.6.

  Parts (TEST_OBJECT_COLORS): blue disc base, red box body, yellow sphere head, green cone hat,
  an orange cone arm pointing to +Y (image right in the reference view, azimuth 0), and a
  magenta ring on the body's back (-X), hidden behind the body from the reference camera on +X.
  So the views at azimuth 0, 90, 180 and 270 all differ. detail=1 gives 1,428 faces; the
  tessellation counts scale linearly with `detail` (faces ~ detail²).
  """
  d = int(detail)
  if d < 1:
    raise ValueError(f"detail must be >= 1, got {detail}")
  c = TEST_OBJECT_COLORS
  parts = [
      cylinder((0.0, 0.0, -0.40), 0.35, 0.06, c["base"], n=32 * d),
      box((0.0, 0.0, -0.14), (0.16, 0.22, 0.20), c["body"]),
      uv_sphere((0.0, 0.0, 0.22), 0.17, c["head"], n_lat=14 * d, n_lon=28 * d),
      cone((0.0, 0.0, 0.33), 0.12, 0.22, c["hat"], n=24 * d),
      cone((0.0, 0.20, -0.10), 0.07, 0.27, c["arm"], n=16 * d, axis=(0.0, 1.0, 0.0)),
      torus((-0.22, 0.0, -0.12), 0.12, 0.04, c["ring"], n_major=24 * d, n_minor=10 * d,
            axis=(1.0, 0.0, 0.0)),
  ]
  return concatenate(parts)
