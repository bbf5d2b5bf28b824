"""Mesh ops against closed forms (regular polyhedra), brute force and trimesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
import trimesh

from dc3d_jax.geometry import marching_tets as mt
from dc3d_jax.geometry import mesh_ops, sdf_shapes, tets

BOX = np.array([[-1.0] * 3, [1.0] * 3], np.float32)
BUDGET = dict(max_vertices=2**16, max_faces=2**17)   # as test_marching_tets: one compile


@jax.jit
def _all_ops(vertices, faces, face_mask, vertex_mask):
  edges = mesh_ops.unique_edges(faces, face_mask)
  normals = mesh_ops.vertex_normals(vertices, faces, face_mask)
  return {"edges": edges, "normals": normals,
          "consistency": mesh_ops.normal_consistency(normals, edges.edges, edges.mask),
          "laplacian": mesh_ops.laplacian_loss(vertices, edges.edges, edges.mask, vertex_mask),
          "area": mesh_ops.surface_area(vertices, faces, face_mask),
          "volume": mesh_ops.enclosed_volume(vertices, faces, face_mask)}


def _ops(vertices, faces, n_vertices=12, n_faces=20):
  """_all_ops on a mesh padded as marching tets pads (zero vertices, (0, 0, 0) faces, masks),
  to one shape for both polyhedra: one compile."""
  v = np.zeros((n_vertices, 3), np.float32)
  f = np.zeros((n_faces, 3), np.int32)
  v[:len(vertices)], f[:len(faces)] = vertices, faces
  return _all_ops(v, f, np.arange(n_faces) < len(faces), np.arange(n_vertices) < len(vertices))


def test_regular_polyhedra_closed_forms():
  # Icosahedron: by symmetry every vertex normal is radial, and neighbours subtend
  # cos = 1/√5, so the consistency is 1 - 1/√5; each vertex has 5 neighbours.
  ico = trimesh.creation.icosahedron()
  out = _ops(ico.vertices, ico.faces)
  radial = ico.vertices / np.linalg.norm(ico.vertices, axis=1, keepdims=True)
  np.testing.assert_allclose(out["normals"], radial, atol=1e-6)
  assert float(out["consistency"]) == pytest.approx(1 - 1 / np.sqrt(5), rel=1e-6)
  assert int(out["edges"].num_edges) == 30
  assert np.all(np.asarray(out["edges"].face_count)[:30] == 2)
  # Octahedron ±e_k: neighbour normals are orthogonal (consistency 1); each vertex has the 4
  # others but its antipode as neighbours, so Σ (v_i - v_j) = 4 v_i and the Laplacian is 4.
  octa = np.concatenate([np.eye(3), -np.eye(3)])
  faces = [[0, 1, 2], [1, 3, 2], [3, 4, 2], [4, 0, 2], [1, 0, 5], [3, 1, 5], [4, 3, 5], [0, 4, 5]]
  out = _ops(octa, faces)
  assert float(out["volume"]) == pytest.approx(4 / 3)            # positive: outward winding
  assert float(out["area"]) == pytest.approx(8 * np.sqrt(3) / 2)
  assert float(out["consistency"]) == pytest.approx(1.0, abs=1e-6)
  assert float(out["laplacian"]) == pytest.approx(4.0, rel=1e-6)


def _brute_force(v, f):
  """float64 NumPy: area-weighted normals (np.add.at), trimesh's unique edges, the sparse
  uniform Laplacian D - A."""
  v = v.astype(np.float64)
  fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
  vn = np.zeros_like(v)
  for k in range(3):
    np.add.at(vn, f[:, k], fn)
  vn /= np.linalg.norm(vn, axis=1, keepdims=True)
  edges = trimesh.Trimesh(v, f, process=False).edges_unique
  consistency = np.mean(1 - np.sum(vn[edges[:, 0]] * vn[edges[:, 1]], -1))
  i, j = np.concatenate([edges[:, 0], edges[:, 1]]), np.concatenate([edges[:, 1], edges[:, 0]])
  adj = scipy.sparse.coo_matrix((np.ones(len(i)), (i, j)), shape=(len(v), len(v))).tocsr()
  lap = scipy.sparse.diags(np.asarray(adj.sum(1)).ravel()) - adj
  return vn, edges, consistency, np.linalg.norm(lap @ v, axis=1).mean()


def test_padded_marching_sphere_against_brute_force(tet_grid_128):
  x = tets.to_box(tet_grid_128.vertices, BOX)
  mesh = mt.extract(x, sdf_shapes.sphere(x, (0.03, -0.02, 0.01), 0.6), tet_grid_128, **BUDGET)
  out = _all_ops(mesh.vertices, mesh.faces, mesh.face_mask, mesh.vertex_mask)
  v, f = mt.compact(mesh)          # all vertices are used, so compact keeps their order
  vn, edges, consistency, laplacian = _brute_force(v, f)
  n = int(mesh.num_vertices)
  np.testing.assert_allclose(np.asarray(out["normals"])[:n], vn, atol=1e-5)
  e = out["edges"]
  got = np.asarray(e.edges)[np.asarray(e.mask)]
  np.testing.assert_array_equal(got, edges[np.lexsort((edges[:, 1], edges[:, 0]))])
  # Measured 5.25e-4 (float32 here, float64 there: 1 - cos loses ~1e-7 absolute).
  assert float(out["consistency"]) == pytest.approx(consistency, rel=2e-3)
  assert float(out["laplacian"]) == pytest.approx(laplacian, rel=1e-4)
  third_party = trimesh.Trimesh(v, f, process=False)
  # float32 sums over 41,588 faces here (measured 7e-5 off trimesh's float64 area).
  assert float(out["area"]) == pytest.approx(third_party.area, rel=2e-4)
  assert float(out["volume"]) == pytest.approx(third_party.volume, rel=2e-4)
  # Adjacency: the two faces of each edge, as trimesh pairs them.
  pairs = np.sort(np.asarray(e.adjacent_faces)[np.asarray(e.mask)], axis=1)
  expected = np.sort(third_party.face_adjacency, axis=1)
  assert set(map(tuple, pairs)) == set(map(tuple, expected))


def test_normal_consistency_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    sphere = trimesh.creation.icosphere(subdivisions=2)
    rng = np.random.default_rng(1)
    v0 = sphere.vertices * (1 + 0.05 * rng.normal(size=(len(sphere.vertices), 1)))
    faces = jnp.asarray(sphere.faces)
    loss = jax.jit(lambda v: mesh_ops.mesh_normal_consistency(v, faces))
    g = jax.jit(jax.grad(lambda v: mesh_ops.mesh_normal_consistency(v, faces)))(v0)
    eps = 1e-6
    for _ in range(3):
      u = rng.normal(size=v0.shape)
      fd = (loss(v0 + eps * u) - loss(v0 - eps * u)) / (2 * eps)
      assert np.sum(g * u) == pytest.approx(float(fd), rel=1e-6)


def test_component_removal_keeps_the_rule_of_the_reference():
  """Components below int(fraction × largest) faces go: the largest (1280 faces) sets the
  threshold 12 at 1%, so a 20-face icosahedron stays and a 4-face tetrahedron goes; at 2%
  (threshold 25) the icosahedron goes too."""
  big = trimesh.creation.icosphere(subdivisions=3)
  ico = trimesh.creation.icosahedron()
  ico.apply_translation([3.0, 0.0, 0.0])
  tet = trimesh.Trimesh([[0, 0, 5], [1, 0, 5], [0, 1, 5], [0, 0, 6]],
                        [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
  mesh = trimesh.util.concatenate([tet, big, ico])
  labels, counts = mesh_ops.connected_components(mesh.faces, len(mesh.vertices))
  assert sorted(counts) == [4, 20, 1280]
  assert len(set(labels[:4])) == 1 and counts[labels[0]] == 4
  v, f = mesh_ops.remove_small_components(mesh.vertices, mesh.faces)
  assert len(f) == 1300 and len(v) == len(big.vertices) + 12
  assert trimesh.Trimesh(v, f).volume == pytest.approx(big.volume + ico.volume)
  v, f = mesh_ops.remove_small_components(mesh.vertices, mesh.faces, min_fraction=0.02)
  np.testing.assert_allclose(np.sort(v, 0), np.sort(big.vertices, 0))


def test_component_removal_on_two_marched_spheres(tet_grid_128):
  """A sphere of radius 0.6 and one of radius 0.05 (apart): two components, the small one
  under 1% of the large one's faces, so it is removed and the large one is left whole."""
  x = tets.to_box(tet_grid_128.vertices, BOX)
  sdf = sdf_shapes.union(sdf_shapes.sphere(x, (-0.2, 0.01, 0.02), 0.6),
                         sdf_shapes.sphere(x, (0.71, 0.69, 0.72), 0.05))
  v, f = mt.compact(mt.extract(x, sdf, tet_grid_128, **BUDGET))
  _, counts = mesh_ops.connected_components(f, len(v))
  assert len(counts) == 2 and counts.min() < 0.01 * counts.max()
  kept_v, kept_f = mesh_ops.remove_small_components(v, f)
  assert len(kept_f) == counts.max()
  assert np.linalg.norm(kept_v - [-0.2, 0.01, 0.02], axis=1).max() < 0.61
  assert trimesh.Trimesh(kept_v, kept_f).volume == pytest.approx(4 / 3 * np.pi * 0.6**3,
                                                                 rel=0.01)
