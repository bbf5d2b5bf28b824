"""UV unwrap and texture bake of a mesh whose colour is a field of 3D points.

Symbols: a mesh V [N, 3] (training frame), F [M, 3]; xatlas gives each face corner a chart
vertex with uv ∈ [0, 1]². A texel (row i, col j) of an S×S texture has its centre at
u = (j + ½)/S, v = 1 − (i + ½)/S (image row 0 is the top, v grows upward as OBJ's `vt`).

Bake (reference §5/§10: xatlas with default options, UV raster at 1024², albedo queried at the
interpolated 3D points, holes filled): every texel whose centre lies in a UV triangle gets
albedo(the 3D point at that texel's barycentrics). Texels outside every chart are filled with
the colour of the nearest covered texel. DEVIATION: the reference inpaints holes with OpenCV's
Telea method (radius 2); nearest-texel fill needs no OpenCV and, like Telea, only matters for
bilinear lookups that straddle a chart border (seams).
"""

import dataclasses

import numpy as np
import xatlas
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class UVMesh:
  """vertices [N', 3] (duplicated along seams), faces [M, 3], uv [N', 2] in [0, 1]²,
  source [N'] the index of each vertex in the mesh that was unwrapped."""
  vertices: np.ndarray
  faces: np.ndarray
  uv: np.ndarray
  source: np.ndarray


def unwrap(vertices: np.ndarray, faces: np.ndarray) -> UVMesh:
  """xatlas parametrization with default options (as the reference's exporter)."""
  v = np.ascontiguousarray(vertices, np.float32)
  f = np.ascontiguousarray(faces, np.uint32)
  source, new_faces, uv = xatlas.parametrize(v, f)
  return UVMesh(vertices=v[source], faces=new_faces.astype(np.int64),
                uv=uv.astype(np.float32), source=source.astype(np.int64))


def _texel_pixels(uv_tri: np.ndarray, size: int) -> np.ndarray:
  """[3, 2] uv corners -> texel-space corners [3, 2] as (column, row) with centres at +½."""
  col = uv_tri[:, 0] * size - 0.5
  row = (1.0 - uv_tri[:, 1]) * size - 0.5
  return np.stack([col, row], axis=-1)


def _barycentrics(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
  """p [K, 2], tri [T, 3, 2] broadcastable -> [.., K, 3] barycentric weights (nan if flat)."""
  a, b, c = tri[..., 0, None, :], tri[..., 1, None, :], tri[..., 2, None, :]
  v0, v1, v2 = b - a, c - a, p - a
  den = v0[..., 0] * v1[..., 1] - v1[..., 0] * v0[..., 1]
  with np.errstate(divide="ignore", invalid="ignore"):
    w1 = (v2[..., 0] * v1[..., 1] - v1[..., 0] * v2[..., 1]) / den
    w2 = (v0[..., 0] * v2[..., 1] - v2[..., 0] * v0[..., 1]) / den
  return np.stack([1.0 - w1 - w2, w1, w2], axis=-1)


def _chunks(extent: np.ndarray, budget: int):
  """Triangle index groups, sorted by box size, each with (#triangles × largest box) ≤ budget."""
  area = extent.prod(axis=-1)
  order = np.argsort(area, kind="stable")
  start = 0
  while start < len(order):
    stop = start + 1
    while stop < len(order) and (stop + 1 - start) * max(area[order[stop]], 1) <= budget:
      stop += 1
    yield order[start:stop]
    start = stop


def rasterize_uv(mesh: UVMesh, size: int, budget: int = 1 << 22):
  """-> (face [S, S] int64, -1 where empty; bary [S, S, 3]) for texel centres in UV triangles.

  Triangles are processed in groups of similar size; each tests the texels of a window as
  large as its group's largest bounding box (≤ `budget` tests per group), so the cost follows
  the charts' total area. A texel centre on an edge shared by two faces goes to the later one.
  """
  face_of = np.full((size, size), -1, np.int64)
  bary_of = np.zeros((size, size, 3), np.float32)
  corners = _texel_pixels(mesh.uv[mesh.faces].reshape(-1, 2), size).reshape(-1, 3, 2)
  lo = np.clip(np.ceil(corners.min(axis=1)), 0, size - 1).astype(np.int64)
  hi = np.clip(np.floor(corners.max(axis=1)), 0, size - 1).astype(np.int64)
  extent = np.maximum(hi - lo + 1, 0)
  for group in _chunks(extent, budget):
    ext = extent[group].max(axis=0)
    dc, dr = np.meshgrid(np.arange(ext[0]), np.arange(ext[1]), indexing="xy")
    offsets = np.stack([dc.ravel(), dr.ravel()], axis=-1)                   # [K, 2]
    pix = lo[group][:, None, :] + offsets[None]                              # [T, K, 2]
    w = _barycentrics(pix.astype(np.float64), corners[group].astype(np.float64))
    inside = np.all(w >= -1e-9, axis=-1) & np.all(pix <= hi[group][:, None, :], axis=-1)
    t, k = np.nonzero(inside)
    col, row = pix[t, k, 0], pix[t, k, 1]
    face_of[row, col] = group[t]
    bary_of[row, col] = w[t, k]
  return face_of, bary_of


def fill_holes(texture: np.ndarray, covered: np.ndarray) -> np.ndarray:
  """Each uncovered texel takes the colour of the nearest covered one."""
  if covered.all() or not covered.any():
    return texture
  _, (rows, cols) = ndimage.distance_transform_edt(~covered, return_indices=True)
  return texture[rows, cols]


def bake(mesh: UVMesh, albedo_fn, size: int = 1024):
  """albedo_fn([K, 3] training-frame points) -> [K, 3] in [0, 1].

  Returns (texture [S, S, 3] float32 with holes filled, covered [S, S] bool).
  """
  face, bary = rasterize_uv(mesh, size)
  covered = face >= 0
  corners = mesh.vertices[mesh.faces[face[covered]]]                      # [K, 3, 3]
  points = np.einsum("kc,kcd->kd", bary[covered], corners)
  texture = np.ones((size, size, 3), np.float32)
  if points.shape[0]:
    texture[covered] = np.clip(np.asarray(albedo_fn(points.astype(np.float32))), 0.0, 1.0)
  return fill_holes(texture, covered), covered
