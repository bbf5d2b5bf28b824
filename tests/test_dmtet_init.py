"""NeuS -> DMTet conversion: the tight box, the re-gridded SDF, and the re-extracted surface
against the analytic zero level set and PyMCubes' marching cubes of the same SDF."""

import jax
import mcubes
import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from dc3d_jax import errors
from dc3d_jax.geometry import dmtet_init
from dc3d_jax.geometry import marching_tets as mt
from dc3d_jax.geometry import sdf_shapes, tets

RADIUS = 2.0                               # the reference's scene box [-2, 2]^3
BUDGET = dict(max_vertices=2**16, max_faces=2**17)
SPHERE = ((0.1, -0.05, 0.2), 0.35)
TORUS = ((-0.1, 0.05, -0.2), 0.7, 0.15)    # around the sphere, not touching it
# Tight box of sphere ∪ torus, by hand.
TIGHT = np.array([[-0.95, -0.8, -0.35], [0.75, 0.9, 0.55]])


@jax.jit
def _shape(x):
  """Smooth parts (exact SDF near the surface) plus a far floater of radius 0.05."""
  return sdf_shapes.union(sdf_shapes.sphere(x, *SPHERE), sdf_shapes.torus(x, *TORUS),
                          sdf_shapes.sphere(x, (1.5, 1.5, 1.5), 0.05))


def _point_mesh_distance(points, vertices, faces):
  """Exact distance from each point to a triangle mesh. A face can be closest only if its
  centroid lies within (distance to some face) + (largest centroid-to-corner radius)."""
  tri = vertices[faces].astype(np.float64)
  centroid = tri.mean(1)
  reach = np.linalg.norm(tri - centroid[:, None], axis=-1).max()
  tree = cKDTree(centroid)
  _, nearest = tree.query(points)
  upper = np.linalg.norm(trimesh.triangles.closest_point(tri[nearest], points) - points, axis=-1)
  out = np.empty(len(points))
  for k, cand in enumerate(tree.query_ball_point(points, upper + reach)):
    closest = trimesh.triangles.closest_point(tri[cand], np.repeat(points[k:k + 1], len(cand), 0))
    out[k] = np.linalg.norm(closest - points[k], axis=-1).min()
  return out


def _surface_points(v, f, n, rng):
  """n of the mesh's vertices and face centroids (centroids are where a surface sags most)."""
  points = np.concatenate([v, v[f].mean(1)]).astype(np.float64)
  return points[rng.choice(len(points), n, replace=False)]


def _marching_cubes(bbox, samples):
  lin = [np.linspace(bbox[0, k], bbox[1, k], samples) for k in range(3)]
  grid = np.stack(np.meshgrid(*lin, indexing="ij"), -1).reshape(-1, 3)
  volume = np.asarray(_shape(grid)).reshape(samples, samples, samples)
  v, f = mcubes.marching_cubes(-volume, 0.0)     # PyMCubes: positive inside
  return bbox[0] + v * (bbox[1] - bbox[0]) / (samples - 1), f.astype(np.int64)


@pytest.fixture(scope="module")
def converted(tet_grid_128):
  return dmtet_init.init_from_sdf(_shape, tet_grid_128, RADIUS, **BUDGET)


def test_box_is_the_tight_box_enlarged_by_ten_percent(converted, tet_grid_128):
  # The floater (about 0.2% of the faces) is removed before the box is taken.
  assert 0 < converted.removed_faces < 0.01 * converted.coarse_faces
  ext = TIGHT[1] - TIGHT[0]
  expected = np.stack([TIGHT[0] - 0.1 * ext, TIGHT[1] + 0.1 * ext])
  # The coarse surface (lattice edge h = 4/64) misses the extremes by 1.2e-3 at most
  # (measured): its vertices lie on lattice edges, within about h²/(2 r) ≈ 1.3e-2 of an
  # extreme for the torus tube's radius 0.15, but in practice much closer.
  np.testing.assert_allclose(converted.bbox, expected, atol=4e-3)
  np.testing.assert_array_equal(converted.deformation, 0.0)
  # Grid corners land on the box corners: the SDF there is the shape's, unclamped.
  corner = np.array([0, len(converted.sdf) - 1])
  np.testing.assert_allclose(converted.sdf[corner], np.asarray(_shape(converted.bbox)),
                             rtol=1e-6)


def test_reextracted_surface_is_close_to_the_zero_level_set(converted, tet_grid_128):
  x = tets.to_box(tet_grid_128.vertices, converted.bbox)
  v, f = mt.compact(mt.extract(x, converted.sdf, tet_grid_128, **BUDGET))
  h = (converted.bbox[1] - converted.bbox[0]).max() / tet_grid_128.cells_per_axis  # ≈ 0.032
  rng = np.random.default_rng(0)
  ours = _surface_points(v, f, 1500, rng)
  # The analytic SDF is the exact distance near these disjoint smooth parts. Measured:
  # mean 2.8e-4, max 1.7e-3 (≈ h / 19).
  d_true = np.abs(np.asarray(_shape(ours)))
  assert d_true.mean() < 1e-3 and d_true.max() < 0.15 * h
  # PyMCubes at twice our lattice density over the same box (what an exporter from the NeuS
  # SDF would give). Measured: ours -> MC mean 2.0e-4 / max 1.6e-3; MC -> ours mean 2.6e-4 /
  # max 1.5e-3. The bounds (1e-3 on the means, 0.15 h ≈ 4.8e-3 on the maxima, about 3× the
  # measured figures) leave room for float32 and sampling; a grid off by a fifth of a cell
  # (or a wrong box mapping) fails them.
  mc_v, mc_f = _marching_cubes(converted.bbox.astype(np.float64), 129)
  d_ours = _point_mesh_distance(ours, mc_v, mc_f)
  d_mc = _point_mesh_distance(_surface_points(mc_v, mc_f, 1500, rng), v, f)
  assert d_ours.mean() < 1e-3 and d_mc.mean() < 1e-3
  assert d_ours.max() < 0.15 * h and d_mc.max() < 0.15 * h


@pytest.mark.parametrize("value", [1.0, -1.0])
def test_no_surface_is_a_resume_error(value):
  grid = tets.tet_grid(8)
  with pytest.raises(errors.ResumeError, match="no zero level set"):
    dmtet_init.init_from_sdf(lambda x: np.full(len(x), value), grid, RADIUS,
                             max_vertices=512, max_faces=1024)
