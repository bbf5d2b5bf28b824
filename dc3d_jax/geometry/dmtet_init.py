"""NeuS -> DMTet conversion geometry: the SDF sampled on a tet grid fitted to the surface.

The reference (`TetrahedraSDFGrid.create_from` on an implicit SDF, `isosurface()`):
1. marching tets of the NeuS SDF on the 128 grid mapped to the whole box [-r, r]^3;
2. components with fewer than 1% of the largest's faces removed (the NeuS geometry's default
   `isosurface_remove_outliers`), so floaters do not widen the box;
3. the tight box of what is left, enlarged by 10% of its extent per side and clipped to the
   scene box, becomes the DMTet stage's `isosurface_bbox`;
4. the grid mapped to that box, the per-vertex SDF = the NeuS SDF there, unclamped (one sign
   convention: < 0 inside, see marching_tets), and the deformation 0.
The hash grid and colour MLP are carried over by the stage, not here.

`sdf_fn` maps [n, 3] world points to [n] SDF values; it is called on fixed-size chunks (the
last one padded), so a jitted field compiles once.
"""

import dataclasses

import numpy as np

from dc3d_jax import errors
from dc3d_jax.geometry import marching_tets as mt
from dc3d_jax.geometry import mesh_ops
from dc3d_jax.geometry import tets as tets_lib


@dataclasses.dataclass(frozen=True)
class DmtetInit:
  """sdf: [V] float32 SDF at the grid vertices mapped to bbox; deformation: [V, 3] zeros;
  bbox: [2, 3] float32 (min, max) world box of the DMTet grid; coarse_faces / removed_faces:
  faces of the full-box extraction and how many of them the outlier removal dropped."""
  sdf: np.ndarray
  deformation: np.ndarray
  bbox: np.ndarray
  coarse_faces: int
  removed_faces: int


def evaluate_sdf(sdf_fn, points: np.ndarray, chunk: int = 2**17) -> np.ndarray:
  """[n] float32 sdf_fn over [n, 3] points in fixed-size chunks (tail padded with its last row)."""
  points = np.asarray(points, np.float32)
  n = points.shape[0]
  chunk = min(chunk, n)
  padded = np.concatenate([points, np.repeat(points[-1:], (-n) % chunk, 0)])
  out = [np.asarray(sdf_fn(padded[i:i + chunk]), np.float32).reshape(-1)
         for i in range(0, padded.shape[0], chunk)]
  return np.concatenate(out)[:n]


def enlarged_box(vertices: np.ndarray, radius: float, margin: float = 0.1) -> np.ndarray:
  """[2, 3] tight box of vertices [n, 3], enlarged by margin × extent per side, clipped to
  [-radius, radius]^3 (the reference's coarse-to-fine box)."""
  lo, hi = vertices.min(0), vertices.max(0)
  ext = hi - lo
  return np.stack([np.maximum(lo - margin * ext, -radius),
                   np.minimum(hi + margin * ext, radius)]).astype(np.float32)


def _coarse_surface(sdf_fn, grid, radius, max_vertices, max_faces, chunk, budget_keys):
  """Marching tets over the whole box; (vertices, faces) on the host."""
  box = np.array([[-radius] * 3, [radius] * 3], np.float32)
  points = np.asarray(tets_lib.to_box(grid.vertices, box))
  sdf = evaluate_sdf(sdf_fn, points, chunk)
  mesh = mt.extract(points, sdf, grid, max_vertices=max_vertices, max_faces=max_faces)
  vertices, faces = mt.compact(mesh, budget_keys)
  if faces.shape[0] == 0:
    raise errors.ResumeError(
        f"the NeuS SDF has no zero level set inside the box [-{radius}, {radius}]^3 (SDF from "
        f"{sdf.min():.3g} to {sdf.max():.3g} at the {grid.resolution}-grid vertices, < 0 "
        "inside): nothing to convert to DMTet; train NeuS further or resume it from an "
        "earlier checkpoint that holds a shape")
  return vertices, faces


def init_from_sdf(sdf_fn, grid: tets_lib.TetGrid, radius: float, *, max_vertices: int,
                  max_faces: int, margin: float = 0.1, min_component_fraction: float = 0.01,
                  chunk: int = 2**17,
                  budget_keys: str = "max_vertices / max_faces") -> DmtetInit:
  """The DMTet stage's initial SDF, deformation and box from a NeuS SDF (module docstring).
  grid: the DMTet grid (the reference's 128); radius: the scene box half-size (2 in the
  reference); max_vertices/max_faces: marching budgets for the full-box pass."""
  vertices, faces = _coarse_surface(sdf_fn, grid, radius, max_vertices, max_faces, chunk,
                                    budget_keys)
  kept_vertices, kept_faces = mesh_ops.remove_small_components(vertices, faces,
                                                               min_component_fraction)
  bbox = enlarged_box(kept_vertices, radius, margin)
  sdf = evaluate_sdf(sdf_fn, np.asarray(tets_lib.to_box(grid.vertices, bbox)), chunk)
  return DmtetInit(sdf=sdf, deformation=np.zeros_like(grid.vertices), bbox=bbox,
                   coarse_faces=int(faces.shape[0]),
                   removed_faces=int(faces.shape[0] - kept_faces.shape[0]))
