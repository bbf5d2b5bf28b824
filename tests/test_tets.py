"""Tet grids: counts, positive orientation, conformity, edge tables, deformation bound."""

import numpy as np
import pytest

from dc3d_jax import errors
from dc3d_jax.geometry import tets


def _sorted_rows(a):
  return np.sort(np.asarray(a), axis=-1)


def test_counts_match_the_reference_density():
  # DC's Quartet 64_tets.npz: 36,562 vertices, 192,492 tets; the lattice is within 2% / 3%.
  g = tets.tet_grid(64)
  assert (g.vertices.shape[0], g.tets.shape[0], g.edges.shape[0]) == (35_937, 196_608, 238_688)
  assert abs(g.vertices.shape[0] / 36_562 - 1) < 0.02
  assert abs(g.tets.shape[0] / 192_492 - 1) < 0.03
  # Closed forms for n = N/2 cells: (n+1)^3 vertices, 6 n^3 tets, and edges along the 7
  # directions of the Kuhn split: 3 n (n+1)^2 axis + 3 n^2 (n+1) face-diagonal + n^3 body.
  for res in (2, 10):
    g, n = tets.tet_grid(res), res // 2
    assert g.vertices.shape[0] == (n + 1)**3 and g.tets.shape[0] == 6 * n**3
    assert g.edges.shape[0] == 3 * n * (n + 1)**2 + 3 * n * n * (n + 1) + n**3


def test_tets_are_positive_and_tile_the_cube():
  g = tets.tet_grid(8)
  v = g.vertices.astype(np.float64)[g.tets]
  det = np.linalg.det(v[:, 1:] - v[:, :1])
  np.testing.assert_allclose(det, (2 / 8)**3, rtol=1e-9)     # each tet is 1/6 of a cell
  assert det.sum() / 6 == pytest.approx(1.0)
  np.testing.assert_array_equal(np.unique(g.vertices), np.arange(5) / 4)


def test_grid_is_conforming():
  """Every triangle of a tet is shared by exactly two tets, or lies on the cube's boundary."""
  g = tets.tet_grid(8)
  tris = g.tets[:, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]].reshape(-1, 3)
  unique, count = np.unique(_sorted_rows(tris), axis=0, return_counts=True)
  assert set(count) <= {1, 2}
  x = g.vertices[unique]                                    # [K, 3 corners, 3]
  on_boundary = np.any(np.all((x == 0) | (x == 1), axis=1) & np.all(x == x[:, :1], axis=1), -1)
  np.testing.assert_array_equal(count == 1, on_boundary)
  # 4 cells per axis, 2 triangles per boundary square.
  assert on_boundary.sum() == 6 * 4 * 4 * 2


def test_edge_tables_against_brute_force():
  g = tets.tet_grid(6)
  pairs = _sorted_rows(g.tets[:, tets.TET_EDGE_VERTICES])    # [T, 6, 2]
  brute = np.unique(pairs.reshape(-1, 2), axis=0)
  np.testing.assert_array_equal(np.unique(_sorted_rows(g.edges), axis=0), brute)
  assert len(brute) == len(g.edges)                          # each edge once
  np.testing.assert_array_equal(_sorted_rows(g.edges[g.tet_edges]), pairs)
  # Edges join lattice neighbours along one of the 7 Kuhn directions (0/1 steps, lower first).
  step = np.rint((g.vertices[g.edges[:, 1]] - g.vertices[g.edges[:, 0]]) * 3).astype(int)
  assert set(map(tuple, step)) == {d for d in np.ndindex(2, 2, 2) if any(d)}


def test_deformation_is_bounded_by_half_a_lattice_edge():
  g = tets.tet_grid(16)
  box = np.array([[-2.0, -1.0, 0.0], [2.0, 1.0, 4.0]], np.float32)
  rest = np.asarray(tets.deformed_vertices(g, np.zeros_like(g.vertices), box))
  np.testing.assert_allclose(rest, box[0] + g.vertices * (box[1] - box[0]), atol=1e-6)
  big = np.asarray(tets.deformed_vertices(g, np.full_like(g.vertices, 50.0), box))
  # (1/N) tanh(δ) -> 1/N = half of the lattice edge 2/N, in unit-cube units.
  np.testing.assert_allclose((big - rest) / (box[1] - box[0]), 1 / 16, rtol=1e-5)


def test_odd_resolution_is_a_config_error():
  with pytest.raises(errors.ConfigError, match="even"):
    tets.tet_grid(63)
