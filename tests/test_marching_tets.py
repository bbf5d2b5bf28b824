"""Marching tets at the default resolution 128: closed-form area and volume of a sphere, a box
and a torus; watertight, outward-wound output; gradients against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh

from dc3d_jax import errors
from dc3d_jax.geometry import marching_tets as mt
from dc3d_jax.geometry import mesh_ops, sdf_shapes, tets

BOX = np.array([[-1.0] * 3, [1.0] * 3], np.float32)
# One budget for every resolution-128 test, so the extraction compiles once.
BUDGET = dict(max_vertices=2**16, max_faces=2**17)

# (sdf, analytic area, analytic volume). Off-lattice centres and sizes: no SDF value is 0.
SHAPES = {
    "sphere": (lambda x: sdf_shapes.sphere(x, (0.03, -0.02, 0.01), 0.6),
               4 * np.pi * 0.6**2, 4 / 3 * np.pi * 0.6**3),
    "box": (lambda x: sdf_shapes.box(x, (0.02, 0.01, -0.03), (0.73, 0.62, 0.51)),
            8 * (0.73 * 0.62 + 0.62 * 0.51 + 0.73 * 0.51), 8 * 0.73 * 0.62 * 0.51),
    "torus": (lambda x: sdf_shapes.torus(x, (0.01, 0.02, -0.01), 0.55, 0.2),
              4 * np.pi**2 * 0.55 * 0.2, 2 * np.pi**2 * 0.55 * 0.2**2),
}


@jax.jit
def _measures(mesh):
  """(area, volume, unique edges) of a padded mesh, in one compiled call."""
  args = (mesh.vertices, mesh.faces, mesh.face_mask)
  return (mesh_ops.surface_area(*args), mesh_ops.enclosed_volume(*args),
          mesh_ops.unique_edges(mesh.faces, mesh.face_mask))


def _extract(grid, sdf_fn):
  x = tets.to_box(grid.vertices, BOX)
  mesh = mt.extract(x, sdf_fn(x), grid, **BUDGET)
  assert not bool(mesh.overflow)
  return mesh


@pytest.mark.parametrize("name", list(SHAPES))
def test_area_volume_and_watertightness(tet_grid_128, name):
  sdf_fn, area, volume = SHAPES[name]
  mesh = _extract(tet_grid_128, sdf_fn)
  got_area, got_volume, edges = _measures(mesh)
  got_area, got_volume = float(got_area), float(got_volume)
  # Measured area / volume errors: sphere -0.06% / -0.14%, torus -0.10% / -0.41%, box -1.37% /
  # -0.12%. The box's edges are cut by chamfers about a lattice edge wide, so its area error is
  # O(h): -6.4% at N = 32, -3.3% at 64. The bound is 2%.
  assert got_area == pytest.approx(area, rel=0.02)
  assert got_volume == pytest.approx(volume, rel=0.02)
  # Watertight: every edge of the valid faces is used by exactly two faces (our edge table),
  # and trimesh agrees, with a consistent winding.
  counts = np.asarray(edges.face_count)[np.asarray(edges.mask)]
  assert counts.size == 3 * int(mesh.num_faces) // 2 and np.all(counts == 2)
  v, f = mt.compact(mesh)
  third_party = trimesh.Trimesh(v, f, process=False)
  assert third_party.is_watertight and third_party.is_winding_consistent
  assert third_party.volume == pytest.approx(got_volume, rel=1e-4)
  assert len(v) == int(mesh.num_vertices)       # every crossing-edge vertex is used


def test_sign_convention_and_outward_winding(tet_grid_128):
  """SDF |x - c| - r (< 0 inside): every face normal points away from the centre, the volume
  is positive. The negated SDF (inside and outside swapped) gives the same surface reversed."""
  centre = np.array([0.03, -0.02, 0.01])
  mesh = _extract(tet_grid_128, SHAPES["sphere"][0])
  v, f = mt.compact(mesh)
  tri = v[f].astype(np.float64)
  normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  outward = np.sum(normal * (tri.mean(1) - centre), -1)
  assert np.all(outward > 0)
  volume = float(_measures(mesh)[1])
  assert volume > 0
  flipped = _extract(tet_grid_128, lambda x: -SHAPES["sphere"][0](x))
  assert float(_measures(flipped)[1]) == pytest.approx(-volume, rel=1e-5)


def test_gradients_match_finite_differences():
  """d/d(vertices, sdf) of Σ w·p + area, in float64, against central differences along
  random directions (small enough that no SDF value changes sign)."""
  with jax.enable_x64(True):
    grid = tets.tet_grid(8)
    rng = np.random.default_rng(0)
    x0 = np.asarray(tets.to_box(grid.vertices.astype(np.float64), BOX.astype(np.float64)))
    x0 = x0 + 0.02 * rng.normal(size=x0.shape)
    s0 = np.linalg.norm(x0, axis=-1) - 0.55 + 0.03 * rng.normal(size=x0.shape[0])
    assert np.abs(s0).min() > 1e-3
    weights = rng.normal(size=(128, 3))

    def f(x, s):
      m = mt.marching_tets(x, s, grid, max_vertices=128, max_faces=256)
      value = jnp.sum(m.vertices * weights) + mesh_ops.surface_area(m.vertices, m.faces,
                                                                      m.face_mask)
      return value, m

    # One compiled function gives both the value (for the differences) and the gradient.
    value_and_grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))
    (_, mesh), (gx, gs) = value_and_grad(x0, s0)
    assert not bool(mesh.overflow) and int(mesh.num_faces) > 50
    assert np.abs(gs).max() > 0 and np.abs(gx).max() > 0
    value = lambda x, s: float(value_and_grad(x, s)[0][0])
    eps = 1e-6
    for _ in range(3):
      ux, us = rng.normal(size=x0.shape), rng.normal(size=s0.shape)
      fd = (value(x0 + eps * ux, s0 + eps * us) - value(x0 - eps * ux, s0 - eps * us)) / (2 * eps)
      assert np.sum(gx * ux) + np.sum(gs * us) == pytest.approx(fd, rel=1e-6)


def test_overflow_is_flagged_and_compact_refuses():
  grid = tets.tet_grid(8)
  x = tets.to_box(grid.vertices, BOX)
  sdf = sdf_shapes.sphere(x, (0.01, 0.02, 0.03), 0.6)
  full = mt.extract(x, sdf, grid, max_vertices=512, max_faces=1024)
  small = mt.extract(x, sdf, grid, max_vertices=512, max_faces=32)
  assert not bool(full.overflow) and bool(small.overflow)
  assert int(small.num_faces) == int(full.num_faces)           # true count kept
  with pytest.raises(errors.ConfigError, match="raise geometry.max_faces"):
    mt.compact(small, budget_keys="geometry.max_faces")
  # The padded rows are degenerate (0, 0, 0) faces and zero vertices.
  n = int(full.num_faces)
  assert np.all(np.asarray(full.faces)[n:] == 0) and not np.asarray(full.face_mask)[n:].any()
  assert np.all(np.asarray(full.vertices)[int(full.num_vertices):] == 0)


def test_no_crossing_gives_an_empty_mesh():
  grid = tets.tet_grid(4)
  mesh = mt.extract(grid.vertices, np.ones(grid.vertices.shape[0], np.float32), grid,
                   max_vertices=8, max_faces=8)
  assert int(mesh.num_faces) == 0 and not bool(mesh.overflow)
  v, f = mt.compact(mesh)
  assert v.shape == (0, 3) and f.shape == (0, 3)
