"""Export: frames, UV bake against brute force, hole fill, GLB/OBJ round trips through trimesh."""

import numpy as np
import pytest
import trimesh

from dc3d_jax import export
from dc3d_jax.export import bake, mesh_files
from dc3d_jax.geometry import primitives


def albedo(points):
  return 0.5 + 0.5 * np.sin(3.0 * points + np.array([0.0, 1.0, 2.0]))


@pytest.fixture(scope="module")
def toy():
  return primitives.test_object()


@pytest.fixture(scope="module")
def uv_mesh(toy):
  return bake.unwrap(toy.vertices, toy.faces)


def test_gltf_frame_is_a_rotation_taking_up_to_y_and_front_to_z():
  r = mesh_files.TRAINING_TO_GLTF
  np.testing.assert_allclose(r @ r.T, np.eye(3))
  assert np.linalg.det(r) == pytest.approx(1.0)
  np.testing.assert_array_equal(mesh_files.to_gltf_frame([0, 0, 1]), [0, 1, 0])   # up
  np.testing.assert_array_equal(mesh_files.to_gltf_frame([1, 0, 0]), [0, 0, 1])   # front


def test_unwrap_keeps_the_surface(toy, uv_mesh):
  np.testing.assert_array_equal(uv_mesh.vertices, toy.vertices[uv_mesh.source])
  np.testing.assert_array_equal(uv_mesh.source[uv_mesh.faces], toy.faces)
  assert uv_mesh.uv.min() >= 0.0 and uv_mesh.uv.max() <= 1.0


def _brute_force_texel(uv_mesh, size, row, col):
  """The face whose UV triangle holds the texel centre, and its 3D point, by testing all."""
  p = np.array([(col + 0.5) / size, 1.0 - (row + 0.5) / size])
  tri = uv_mesh.uv[uv_mesh.faces].astype(np.float64)                     # [M, 3, 2]
  a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
  cross = lambda u, v: u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
  den = cross(b - a, c - a)
  w1, w2 = cross(p - a, c - a) / den, cross(b - a, p - a) / den
  w = np.stack([1 - w1 - w2, w1, w2], -1)
  hits = np.nonzero(np.all(w >= -1e-9, axis=-1))[0]
  return hits, np.einsum("hc,hcd->hd", w[hits], uv_mesh.vertices[uv_mesh.faces[hits]])


def test_bake_matches_brute_force_point_lookup(uv_mesh):
  size = 96
  texture, covered = bake.bake(uv_mesh, albedo, size)
  rows, cols = np.nonzero(covered)
  rng = np.random.default_rng(0)
  for k in rng.choice(len(rows), 40, replace=False):
    hits, points = _brute_force_texel(uv_mesh, size, rows[k], cols[k])
    assert len(hits) >= 1
    np.testing.assert_allclose(texture[rows[k], cols[k]], albedo(points[-1]), atol=1e-4)
  # Texels no triangle holds stay uncovered.
  empty = np.nonzero(~covered)
  for k in rng.choice(len(empty[0]), 20, replace=False):
    assert len(_brute_force_texel(uv_mesh, size, empty[0][k], empty[1][k])[0]) == 0


def test_fill_takes_the_nearest_covered_texel():
  rng = np.random.default_rng(1)
  texture = rng.random((12, 12, 3)).astype(np.float32)
  covered = rng.random((12, 12)) < 0.3
  filled = bake.fill_holes(texture, covered)
  cr, cc = np.nonzero(covered)
  for r, c in zip(*np.nonzero(~covered)):
    d = (cr - r) ** 2 + (cc - c) ** 2
    nearest = np.nonzero(d == d.min())[0]
    assert any(np.array_equal(filled[r, c], texture[cr[n], cc[n]]) for n in nearest)
  np.testing.assert_array_equal(filled[covered], texture[covered])


def test_glb_and_obj_round_trip(tmp_path, toy):
  summary = export.export_mesh(tmp_path, toy.vertices, toy.faces, albedo, texture_size=64)
  assert summary["faces"] == len(toy.faces) and 0.3 < summary["texture_coverage"] < 1.0
  v, f, uv, image = mesh_files.load_glb(tmp_path / "model.glb")
  source = np.asarray(trimesh.load(tmp_path / "model.obj", force="mesh", process=False).vertices)
  np.testing.assert_allclose(mesh_files.from_gltf_frame(source), v, atol=1e-5)
  # Same surface as the input (the unwrap duplicates seam vertices only).
  np.testing.assert_allclose(v[f].mean(axis=1), toy.vertices[toy.faces].mean(axis=1), atol=1e-5)
  assert image.shape == (64, 64, 3) and uv.shape == (len(v), 2)
  for name in ("model.mtl", "model_albedo.png"):
    assert (tmp_path / name).is_file()
  assert not list(tmp_path.glob(".*tmp*"))
