"""Primitives: closed-form area/volume, outward winding, watertightness, the ground-truth toy."""

import numpy as np
import pytest

from dc3d_jax import cameras
from dc3d_jax.geometry import primitives, rasterize

# A spread of axes so the orientation-preserving placement is exercised, not just +Z.
AXES = [(0.0, 0.0, 1.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0), (0.3, -0.5, 0.8)]


def _polygon_area(n: int, r: float) -> float:
  """Area of the regular n-gon inscribed in a circle of radius r (the tessellated disc)."""
  return 0.5 * n * r * r * np.sin(2.0 * np.pi / n)


def _face_normals_and_centroids(mesh):
  v = mesh.vertices.astype(np.float64)[mesh.faces]
  n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
  return n / np.linalg.norm(n, axis=-1, keepdims=True), v.mean(1)


def _assert_watertight_and_oriented(mesh):
  """After welding coincident vertices, every directed edge (a, b) has exactly one partner
  (b, a): the surface is closed and all faces agree on their orientation."""
  _, weld = np.unique(np.round(mesh.vertices, 5), axis=0, return_inverse=True)
  f = weld.ravel()[mesh.faces]
  edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
  keys = {tuple(e) for e in edges}
  assert len(keys) == len(edges), "a directed edge appears twice: inconsistent winding"
  assert all((b, a) in keys for a, b in keys), "an edge has no opposite: surface not closed"


def test_sphere_area_and_volume_converge_to_closed_form():
  r, center = 0.7, (0.1, -0.2, 0.3)
  errors = []
  for n in (16, 32, 64):
    m = primitives.uv_sphere(center, r, (1.0, 0.0, 0.0), n_lat=n, n_lon=2 * n)
    area_ratio = primitives.mesh_area(m) / (4.0 * np.pi * r**2)
    vol_ratio = primitives.mesh_volume(m) / (4.0 / 3.0 * np.pi * r**3)
    # An inscribed polyhedron: both are slightly below the sphere's, and the gap is O(1/n²).
    assert 1.0 - 3.0 / n**2 < area_ratio < 1.0
    assert 1.0 - 6.0 / n**2 < vol_ratio < 1.0
    errors.append(1.0 - vol_ratio)
  assert errors[1] < errors[0] / 3.5 and errors[2] < errors[1] / 3.5
  lo, hi = primitives.mesh_bounds(m)
  np.testing.assert_allclose(hi - lo, 2 * r, rtol=1e-5)


def test_cube_sphere_shares_its_vertices_and_converges():
  """12 n² faces on (6n² + 2) shared vertices (Euler: V - E + F = 2), every vertex on the
  sphere, and area and volume approaching the sphere's from below."""
  r, c = 0.6, np.array([0.1, 0.0, -0.2])
  previous = 0.0
  for n in (4, 8, 16):
    m = primitives.cube_sphere(c, r, (1, 1, 1), n)
    assert m.faces.shape == (12 * n * n, 3) and m.vertices.shape == (6 * n * n + 2, 3)
    np.testing.assert_allclose(np.linalg.norm(m.vertices - c, axis=-1), r, rtol=1e-6)
    volume_ratio = primitives.mesh_volume(m) / (4.0 / 3.0 * np.pi * r**3)
    assert previous < volume_ratio < 1.0
    previous = volume_ratio
  assert volume_ratio > 0.99 and 0.99 < primitives.mesh_area(m) / (4 * np.pi * r * r) < 1.0


def test_box_is_exact():
  h = np.array([0.1, 0.25, 0.4])
  m = primitives.box((0.3, -0.1, 0.2), h, (0.0, 1.0, 0.0))
  assert m.num_faces == 12
  assert primitives.mesh_volume(m) == pytest.approx(8 * np.prod(h), rel=1e-6)
  assert primitives.mesh_area(m) == pytest.approx(8 * (h[0] * h[1] + h[1] * h[2] + h[0] * h[2]),
                                                  rel=1e-6)
  lo, hi = primitives.mesh_bounds(m)
  np.testing.assert_allclose(lo, np.array([0.3, -0.1, 0.2]) - h, atol=1e-6)
  np.testing.assert_allclose(hi, np.array([0.3, -0.1, 0.2]) + h, atol=1e-6)


@pytest.mark.parametrize("axis", AXES)
def test_cylinder_and_cone_volumes_match_their_inscribed_polygons(axis):
  n, r = 20, 0.3
  cyl = primitives.cylinder((0.1, 0.2, -0.1), r, 0.25, (1, 0, 0), n=n, axis=axis)
  con = primitives.cone((0.1, 0.2, -0.1), r, 0.5, (1, 0, 0), n=n, axis=axis)
  # Prism and pyramid over the regular n-gon: exact, whatever the axis.
  assert primitives.mesh_volume(cyl) == pytest.approx(_polygon_area(n, r) * 0.5, rel=1e-5)
  assert primitives.mesh_volume(con) == pytest.approx(_polygon_area(n, r) * 0.5 / 3, rel=1e-5)
  apex = np.array([0.1, 0.2, -0.1]) + 0.5 * np.asarray(axis) / np.linalg.norm(axis)
  assert np.min(np.linalg.norm(con.vertices - apex, axis=-1)) < 1e-6


def test_torus_area_and_volume_close_to_closed_form():
  big, small = 0.5, 0.15
  m = primitives.torus((0.0, 0.1, 0.0), big, small, (0, 0, 1), n_major=64, n_minor=32,
                       axis=(0.0, 1.0, 1.0))
  assert primitives.mesh_area(m) == pytest.approx(4 * np.pi**2 * big * small, rel=0.01)
  assert primitives.mesh_volume(m) == pytest.approx(2 * np.pi**2 * big * small**2, rel=0.02)


@pytest.mark.parametrize("axis", AXES)
def test_every_face_of_every_primitive_points_outward(axis):
  c = np.array([0.2, -0.3, 0.1])
  a = np.asarray(axis) / np.linalg.norm(axis)
  convex = [primitives.uv_sphere(c, 0.4, (1, 0, 0), 8, 16),
            primitives.cube_sphere(c, 0.4, (1, 0, 0), 5),
            primitives.box(c, (0.1, 0.2, 0.3), (1, 0, 0)),
            primitives.cylinder(c, 0.3, 0.2, (1, 0, 0), 12, axis=axis),
            primitives.cone(c - 0.2 * a, 0.3, 0.5, (1, 0, 0), 12, axis=axis)]
  for m in convex:
    normals, centroids = _face_normals_and_centroids(m)
    assert np.all(np.einsum("fi,fi->f", normals, centroids - c) > 0)
    assert primitives.mesh_volume(m) > 0
    _assert_watertight_and_oriented(m)
  tor = primitives.torus(c, 0.4, 0.1, (1, 0, 0), 16, 8, axis=axis)
  normals, centroids = _face_normals_and_centroids(tor)
  # Outward for a torus: away from the nearest point of its core circle.
  rel = centroids - c
  radial = rel - np.outer(rel @ a, a)
  core = c + 0.4 * radial / np.linalg.norm(radial, axis=-1, keepdims=True)
  assert np.all(np.einsum("fi,fi->f", normals, centroids - core) > 0)
  assert primitives.mesh_volume(tor) > 0
  _assert_watertight_and_oriented(tor)


def test_concatenate_and_transforms():
  a = primitives.box((0, 0, 0), (0.1, 0.1, 0.1), (1, 0, 0))
  b = primitives.uv_sphere((0, 0, 0), 0.2, (0, 0, 1), 6, 12)
  m = primitives.concatenate([a, primitives.translate(primitives.scale(b, 2.0), (1.0, 0, 0))])
  assert m.num_faces == a.num_faces + b.num_faces
  assert m.faces.max() == len(m.vertices) - 1 and m.faces.dtype == np.int32
  assert primitives.mesh_volume(m) == pytest.approx(
      primitives.mesh_volume(a) + 8 * primitives.mesh_volume(b), rel=1e-5)
  np.testing.assert_allclose(primitives.mesh_bounds(m)[1], [1.4, 0.4, 0.4], atol=1e-5)
  with pytest.raises(ValueError):
    primitives.scale(a, -1.0)


def test_test_object_fits_has_colours_and_is_deterministic():
  m = primitives.test_object()
  assert 1000 <= m.num_faces <= 3000
  assert np.linalg.norm(m.vertices, axis=-1).max() < 0.6
  assert m.vertices.dtype == np.float32 and m.colors.dtype == np.float32
  assert np.all((m.colors >= 0) & (m.colors <= 1))
  assert len(np.unique(m.colors, axis=0)) >= 4
  again = primitives.test_object()
  assert np.array_equal(m.vertices, again.vertices) and np.array_equal(m.faces, again.faces)
  assert primitives.mesh_volume(m) > 0
  assert primitives.test_object(detail=2).num_faces > 3 * m.num_faces


def _colour_mask(rgb, name):
  target = np.asarray(primitives.TEST_OBJECT_COLORS[name])
  return np.all(np.abs(np.asarray(rgb) - target) < 0.02, axis=-1)


def test_test_object_views_differ_by_azimuth():
  m = primitives.test_object()
  cams = cameras.make_camera(0.0, np.array([0.0, 180.0]), 3.8, 20.0, 48, 48)
  front, back = (rasterize.render_mesh(m, cams[i])["rgb"] for i in range(2))
  front, back = np.asarray(front), np.asarray(back)
  # The magenta ring hides behind the body from the front, and shows from the back.
  assert _colour_mask(front, "ring").sum() == 0 and _colour_mask(back, "ring").sum() > 20
  # The orange arm points to +Y: image right from the front, image left from the back.
  arm_f, arm_b = _colour_mask(front, "arm"), _colour_mask(back, "arm")
  assert arm_f[:, 24:].sum() > 10 and arm_f[:, :24].sum() == 0
  assert arm_b[:, :24].sum() > 10 and arm_b[:, 24:].sum() == 0
  # Not a mirror pair either: the back view is not the flipped front view.
  assert np.mean(np.any(np.abs(back - front[:, ::-1]) > 0.1, axis=-1)) > 0.02
  # It fills most of the reference view's height (recentering rescales to 90% later).
  rows = np.flatnonzero(np.any(front < 0.99, axis=(1, 2)))
  assert 0.65 < (rows[-1] - rows[0] + 1) / 48 < 0.95
