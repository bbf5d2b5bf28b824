"""Marching-cubes isosurfaces of the volume stages' fields: accuracy, winding, empty fields."""

import numpy as np
import pytest

from dc3d_jax.geometry import isosurface, mesh_ops


def _sphere_sdf(points):
  return np.linalg.norm(points, axis=-1) - 0.6


def _area_volume(v, f):
  return float(mesh_ops.surface_area(v, f)), float(mesh_ops.enclosed_volume(v, f))


@pytest.mark.parametrize("inside", ["below", "above"])
def test_sphere_matches_analytic_area_and_volume_with_outward_faces(inside):
  """SDF < 0 inside ("below" 0), or a density peaked at the centre ("above" a threshold)."""
  fn = _sphere_sdf if inside == "below" else (lambda p: 10.0 - 10.0 * _sphere_sdf(p) / 0.6)
  level = 0.0 if inside == "below" else 10.0
  v, f = isosurface.extract(fn, radius=1.0, resolution=96, level=level, inside=inside)
  area, volume = _area_volume(v, f)
  assert area == pytest.approx(4 * np.pi * 0.36, rel=0.01)
  assert volume == pytest.approx(4 / 3 * np.pi * 0.216, rel=0.01)   # > 0: faces point out
  np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 0.6, atol=2e-3)


def test_grid_spans_the_box_corner_to_corner():
  g = isosurface.grid_points(2.0, 5)
  np.testing.assert_array_equal(g[0, 0, 0], [-2, -2, -2])
  np.testing.assert_array_equal(g[4, 4, 4], [2, 2, 2])
  np.testing.assert_array_equal(g[1, 2, 3], [-1, 0, 1])    # ij indexing: x, y, z


@pytest.mark.parametrize("offset", [5.0, -5.0])
def test_a_field_without_a_surface_raises(offset):
  with pytest.raises(isosurface.NoSurfaceError, match="no surface"):
    isosurface.extract(lambda p: _sphere_sdf(p) + offset, 1.0, 16, 0.0, "below")
