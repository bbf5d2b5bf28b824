"""Rasterizer vs closed forms (ray-sphere), a brute-force NumPy ray caster, and orientation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax import cameras
from dc3d_jax.geometry import primitives, rasterize


_camera_rays = jax.jit(cameras.camera_rays)    # one compile instead of many eager op compiles


def _rays(camera):
  rays = _camera_rays(camera)
  return np.asarray(rays.origins, np.float64), np.asarray(rays.directions, np.float64)


def _ray_sphere(origins, dirs, center, radius):
  """Nearest hit distance along unit rays ([..., 3]), NaN on a miss; also cos(incidence)."""
  oc = origins - center
  b = np.sum(oc * dirs, -1)
  disc = b * b - (np.sum(oc * oc, -1) - radius**2)
  t = -b - np.sqrt(np.where(disc >= 0, disc, np.nan))
  normal = (origins + t[..., None] * dirs - center) / radius
  return t, -np.sum(normal * dirs, -1)


def _ray_cast(mesh, origins, dirs):
  """Brute-force Möller–Trumbore, both-facing, in float64: (tri_id [P] or -1, t, bary [P, 3])."""
  v = mesh.vertices.astype(np.float64)[mesh.faces]                  # [F, 3, 3]
  e1, e2 = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]
  d, o = dirs[:, None], origins[:, None]                             # [P, 1, 3]
  pvec = np.cross(d, e2)
  det = np.sum(e1 * pvec, -1)
  inv = 1.0 / np.where(np.abs(det) > 1e-12, det, np.inf)
  tvec = o - v[:, 0]
  u = np.sum(tvec * pvec, -1) * inv
  qvec = np.cross(tvec, e1)
  w = np.sum(d * qvec, -1) * inv
  t = np.sum(e2 * qvec, -1) * inv
  hit = (inv != 0) & (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 0)
  t = np.where(hit, t, np.inf)
  tri = np.argmin(t, -1)
  rows = np.arange(len(tri))
  ok = np.isfinite(t[rows, tri])
  bary = np.stack([1 - u[rows, tri] - w[rows, tri], u[rows, tri], w[rows, tri]], -1)
  return np.where(ok, tri, -1), t[rows, tri], bary


def test_sphere_depth_and_coverage_match_ray_sphere():
  center, radius = np.array([0.1, -0.05, 0.08]), 0.5
  mesh = primitives.uv_sphere(center, radius, (0.2, 0.6, 0.9), n_lat=48, n_lon=96)
  cam = cameras.make_camera(15.0, 30.0, 3.8, 20.0, 64, 64)
  out = rasterize.render_mesh(mesh, cam)
  origins, dirs = _rays(cam)
  t, cos_inc = _ray_sphere(origins, dirs, center, radius)
  alpha, depth = np.asarray(out["alpha"][..., 0]), np.asarray(out["depth"][..., 0])
  covered = alpha > 0
  analytic = np.isfinite(t)
  # Coverage: the inscribed polygonal silhouette loses at most a few boundary pixels.
  assert abs(covered.sum() - analytic.sum()) <= 0.03 * analytic.sum()
  assert np.sum(covered & ~analytic) == 0
  # Depth: facets lie inside the sphere, so the mesh is hit at or just beyond the sphere; the gap
  # is at most the facet sagitta r(1 - cos δ) ≈ 5e-4 over cos(incidence).
  sel = covered & analytic & (np.nan_to_num(cos_inc) > 0.5)
  gap = depth[sel] - t[sel]
  assert sel.sum() > 500
  assert gap.min() > -1e-4 and gap.max() < 1.2e-3
  # Normals face the camera on the front of the sphere (both-facing, outward winding).
  assert np.all(np.sum(np.asarray(out["normal"])[sel] * dirs[sel], -1) < 0)


def test_coverage_matches_projected_disc():
  radius = 0.5
  mesh = primitives.uv_sphere((0, 0, 0), radius, (1, 1, 1), n_lat=48, n_lon=96)
  cam = cameras.make_camera(0.0, 0.0, 3.8, 20.0, 64, 64)
  pixels = float(rasterize.render_mesh(mesh, cam)["alpha"].sum())
  # The silhouette of a centred sphere is a disc of radius f·tan(asin(r/d)) pixels.
  disc = np.pi * (float(cam.focal) * np.tan(np.arcsin(radius / 3.8)))**2
  assert pixels == pytest.approx(disc, rel=0.03)


@pytest.mark.parametrize("elev,azim", [(20.0, 40.0), (-10.0, 200.0)])
def test_matches_brute_force_ray_caster(elev, azim):
  mesh = primitives.test_object()
  # Random per-vertex colours, so interpolation is tested, not flat part colours.
  colors = np.random.default_rng(0).uniform(size=mesh.vertices.shape).astype(np.float32)
  mesh = mesh.replace(colors=colors)
  cam = cameras.make_camera(elev, azim, 3.8, 20.0, 24, 24)
  out = rasterize.render_mesh(mesh, cam, background=0.0)
  clip = np.concatenate([mesh.vertices, np.ones_like(mesh.vertices[:, :1])], -1)
  raster = rasterize.rasterize(clip @ np.asarray(cameras.mvp_matrix(cam)).T, mesh.faces, 24, 24)
  origins, dirs = _rays(cam)
  ref_id, ref_t, ref_bary = _ray_cast(mesh, origins.reshape(-1, 3), dirs.reshape(-1, 3))
  tri_id = np.asarray(raster.tri_id).ravel()
  assert np.mean(tri_id == ref_id) >= 0.99
  same = (tri_id == ref_id) & (ref_id >= 0)
  assert same.sum() > 100
  depth = np.asarray(out["depth"]).reshape(-1)
  np.testing.assert_allclose(depth[same], ref_t[same], atol=2e-4)
  np.testing.assert_allclose(np.asarray(raster.bary).reshape(-1, 3)[same], ref_bary[same],
                             atol=2e-4)
  ref_rgb = np.sum(ref_bary[:, :, None] * colors[mesh.faces[np.maximum(ref_id, 0)]], 1)
  np.testing.assert_allclose(np.asarray(out["rgb"]).reshape(-1, 3)[same], ref_rgb[same],
                             atol=2e-4)


def test_interpolated_position_lies_on_pixel_ray():
  mesh = primitives.test_object()
  cam = cameras.make_camera(25.0, -60.0, 3.8, 20.0, 24, 32)      # non-square on purpose
  clip = jnp.concatenate([mesh.vertices, jnp.ones_like(mesh.vertices[:, :1])], -1)
  raster = rasterize.rasterize(clip @ cameras.mvp_matrix(cam).T, mesh.faces, 24, 32)
  points = np.asarray(rasterize.interpolate(mesh.vertices, mesh.faces, raster), np.float64)
  origins, dirs = _rays(cam)
  hit = np.asarray(raster.tri_id) >= 0
  assert 100 < hit.sum() < hit.size
  rel = points - origins
  along = np.sum(rel * dirs, -1)
  off_ray = np.linalg.norm(rel - along[..., None] * dirs, axis=-1)
  assert off_ray[hit].max() < 1e-4
  # raster.depth is camera z: the hit's offset along the optical axis (c2w column 2 is "back").
  axis = -np.asarray(cam.c2w[:3, 2], np.float64)
  np.testing.assert_allclose(np.asarray(raster.depth)[hit], (rel @ axis)[hit], atol=1e-4)
  assert np.all(np.asarray(raster.depth)[~hit] == 0) and np.all(points[~hit] == 0)


def test_reference_view_orientation():
  """World +Y is image right and +Z is image top at the reference view (camera on +X)."""
  red, green, blue = (1.0, 0, 0), (0, 1.0, 0), (0, 0, 1.0)
  scene = primitives.concatenate([
      primitives.box((0, 0, 0), (0.15, 0.15, 0.15), red),
      primitives.box((0, 0.4, 0), (0.08, 0.08, 0.08), green),    # on the +Y side
      primitives.box((0, 0, 0.4), (0.08, 0.08, 0.08), blue)])    # on top
  cam = cameras.make_camera(0.0, 0.0, 3.8, 20.0, 32, 32)
  rgb = np.asarray(rasterize.render_mesh(scene, cam, background=0.0)["rgb"])
  rows, cols = np.indices((32, 32))
  for colour, want_row, want_col in ((red, 15.5, 15.5), (green, 15.5, None), (blue, None, 15.5)):
    mask = np.all(np.abs(rgb - colour) < 1e-5, -1)
    assert mask.sum() > 4
    if want_row is not None:
      assert abs(rows[mask].mean() - want_row) < 0.5
    if want_col is not None:
      assert abs(cols[mask].mean() - want_col) < 0.5
  green_mask = np.all(rgb == green, -1)
  blue_mask = np.all(rgb == blue, -1)
  assert cols[green_mask].min() >= 16 and rows[blue_mask].max() < 16


def test_box_faces_land_where_expected():
  """A box seen from above-right: its +Y face on the right half, its +Z face on the top rows."""
  face_colors = np.array([[0.5, 0.5, 0.5], [0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]])
  mesh = primitives.box((0, 0, 0), (0.3, 0.3, 0.3), face_colors)
  cam = cameras.make_camera(30.0, 30.0, 3.8, 20.0, 32, 32)
  rgb = np.asarray(rasterize.render_mesh(mesh, cam, background=1.0)["rgb"])
  rows, cols = np.indices((32, 32))
  plus_y = np.all(rgb == (0, 1, 0), -1)
  plus_z = np.all(rgb == (0, 0, 1), -1)
  plus_x = np.all(rgb == (0.5, 0.5, 0.5), -1)
  assert plus_y.sum() > 20 and plus_z.sum() > 20 and plus_x.sum() > 20
  assert cols[plus_y].mean() > 16 and cols[plus_x].mean() < 16
  assert rows[plus_z].mean() < rows[plus_x].mean() and rows[plus_z].mean() < 16
  assert not np.any(np.all(rgb == 0, -1))          # the three far faces are hidden


def test_vmap_over_cameras_equals_separate_calls():
  mesh = primitives.test_object()
  cams = cameras.make_camera(np.array([0.0, 20.0]), np.array([0.0, 120.0]), 3.8, 20.0, 20, 20)
  batched = jax.vmap(lambda c: rasterize.render_mesh(mesh, c))(cams)
  for i in range(2):
    single = rasterize.render_mesh(mesh, cams[i])
    for key in ("rgb", "alpha", "depth", "normal"):
      np.testing.assert_allclose(batched[key][i], single[key], atol=1e-6, err_msg=key)
  assert not np.allclose(batched["rgb"][0], batched["rgb"][1])


def test_empty_pixels_background_and_tiled_search():
  mesh = primitives.uv_sphere((0, 0, 0), 0.3, (1.0, 0.0, 0.0), 8, 16)
  cam = cameras.make_camera(0.0, 0.0, 3.8, 20.0, 16, 16)
  bg = jnp.array([0.1, 0.2, 0.3])
  out = rasterize.render_mesh(mesh, cam, background=bg)
  empty = np.asarray(out["alpha"][..., 0]) == 0
  assert 0 < empty.sum() < empty.size
  np.testing.assert_allclose(np.asarray(out["rgb"])[empty], np.broadcast_to(bg, (empty.sum(), 3)))
  assert np.all(np.asarray(out["depth"])[empty] == 0)
  assert np.all(np.asarray(out["normal"])[empty] == 0)
  np.testing.assert_allclose(np.asarray(out["rgb"])[~empty], [[1.0, 0, 0]] * int((~empty).sum()),
                             atol=1e-6)
  # The tiled visibility search gives the same image as the brute-force one.
  odd = rasterize.render_mesh(mesh, cam, background=bg, search="tiled")
  np.testing.assert_array_equal(odd["depth"], out["depth"])


def test_triangles_crossing_the_near_plane_are_dropped():
  cam = cameras.make_camera(0.0, 0.0, 2.0, 40.0, 16, 16)      # camera at x = 2
  verts = np.array([[0, -1, -1], [0, 1, -1], [0, 0, 1],          # in front: drawn
                    [3, -1, -1], [1, 1, -1], [1, 0, 1]], np.float32)  # one vertex behind
  faces = np.array([[0, 1, 2], [3, 4, 5]], np.int32)
  clip = np.concatenate([verts, np.ones((6, 1), np.float32)], -1) @ np.asarray(
      cameras.mvp_matrix(cam)).T
  ids = np.asarray(rasterize.rasterize(clip, faces, 16, 16).tri_id)
  assert np.sum(ids == 0) > 10 and np.sum(ids == 1) == 0


def test_depth_gradient_is_finite():
  mesh = primitives.uv_sphere((0, 0, 0), 0.4, (1, 0, 0), 8, 16)
  cam = cameras.make_camera(0.0, 0.0, 3.8, 20.0, 16, 16)

  def total_depth(vertices):
    return jnp.sum(rasterize.render_mesh(mesh.replace(vertices=vertices), cam)["depth"])

  grad = jax.grad(total_depth)(jnp.asarray(mesh.vertices))
  assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


@pytest.mark.parametrize("search", ["brute", "tiled"])
def test_a_pixel_centre_on_an_edge_two_triangles_share_is_covered(search):
  """A fan of 72 triangles around a point; each spoke (the edge two neighbours share) aims
  at a pixel centre, which lies on it to float32 rounding. Every pixel centre inside the fan
  must be covered by one of its triangles: the shared edge's function must be evaluated
  bit-identically (and negated) in both, or rounding can leave the centre outside both (a
  crack; the texture stage's reference view had one inside its mesh). Measured with each
  triangle evaluating its edges from its own start vertex: 20 of the 72 centres on spokes
  uncovered, with either of XLA's CPU fusion emitters."""
  size = 64
  rng = np.random.default_rng(3)
  centre = np.array([0.0371, -0.0523])
  cols, rows = rng.choice(np.arange(12, 52), (2, 72))
  targets = np.stack([2.0 * (cols + 0.5) / size - 1.0, 1.0 - 2.0 * (rows + 0.5) / size], -1)
  angle = np.arctan2(*(targets - centre).T[::-1])
  keep = np.unique(np.round(angle, 6), return_index=True)[1]            # distinct spokes
  targets, angle = targets[keep], angle[keep]
  order = np.argsort(angle)
  unit = (targets - centre)[order] / np.linalg.norm(targets - centre, axis=-1)[order, None]
  outer = centre + 2.0 * unit                                # past every target, off-screen
  xy = np.concatenate([centre[None], outer]).astype(np.float32)
  n = len(outer)
  faces = np.stack([np.zeros(n), 1 + np.arange(n), 1 + (np.arange(n) + 1) % n], -1)
  clip = np.concatenate([xy, np.zeros((n + 1, 1)), np.ones((n + 1, 1))], -1).astype(np.float32)
  out = rasterize.rasterize(jnp.asarray(clip), faces.astype(np.int32), size, size,
                            backend="jax", search=search, max_pairs=2**14)
  ids = np.asarray(out.tri_id)
  on_spokes = np.stack([(1.0 - targets[:, 1]) * size / 2 - 0.5,
                        (targets[:, 0] + 1.0) * size / 2 - 0.5], -1).round().astype(int)
  assert int(out.overflow) == 0
  assert np.all(ids[on_spokes[:, 0], on_spokes[:, 1]] >= 0)
  assert np.all(ids >= 0)                                 # the fan covers the whole image
