"""Pure-JAX rasterizer against closed forms: coverage, depth and barycentrics of analytic
triangles, the tiled search against the brute-force one, and the overflow report."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax import errors
from dc3d_jax.geometry import rasterize
from dc3d_jax.geometry.raster import triangles, visibility

H, W = 40, 56      # not multiples of the 16-pixel tile on purpose


def clip_from_pixels(px, py, w, height=H, width=W):
  """Pixel-unit positions (X right, Y down) at clip w -> [N, 4] clip with NDC z = 0."""
  px, py, w = (np.broadcast_to(np.asarray(a, np.float64), np.shape(px)) for a in (px, py, w))
  x, y = 2.0 * px / width - 1.0, 1.0 - 2.0 * py / height
  return np.stack([x * w, y * w, np.zeros_like(w), w], -1).astype(np.float32)


@pytest.mark.parametrize("search", ["brute", "tiled"])
def test_screen_aligned_triangle_coverage_depth_and_bary(search):
  # Right triangle, legs along +X and +Y (pixel units), all at camera depth 2.5.
  x0, y0, a, b, depth = 7.3, 5.2, 38.6, 27.9, 2.5
  clip = clip_from_pixels([x0, x0 + a, x0], [y0, y0, y0 + b], depth)
  out = rasterize.rasterize(clip, np.array([[0, 1, 2]]), H, W, backend="jax", search=search)
  covered = np.asarray(out.tri_id) == 0
  assert np.all(np.asarray(out.tri_id)[~covered] == -1)
  # Row i (centre y = i + 0.5) spans X in [x0, x0 + a (1 - (y - y0) / b)]: its pixel centres
  # j + 0.5 in that span number floor(X_end - 0.5) - ceil(x0 - 0.5) + 1.
  yc = np.arange(H) + 0.5
  x_end = x0 + a * (1.0 - (yc - y0) / b)
  in_rows = (yc >= y0) & (yc <= y0 + b)
  per_row = np.where(in_rows, np.floor(x_end - 0.5) - np.ceil(x0 - 0.5) + 1, 0).clip(0)
  np.testing.assert_array_equal(covered.sum(1), per_row)
  assert covered.sum() == per_row.sum() > 400
  np.testing.assert_allclose(np.asarray(out.depth)[covered], depth, rtol=1e-6)
  assert np.all(np.asarray(out.depth)[~covered] == 0)
  # Equal w: perspective-correct weights are the affine ones, b1 = (X - x0)/a, b2 = (Y - y0)/b.
  xs, ys = np.meshgrid(np.arange(W) + 0.5, yc)
  want = np.stack([1 - (xs - x0) / a - (ys - y0) / b, (xs - x0) / a, (ys - y0) / b], -1)
  np.testing.assert_allclose(np.asarray(out.bary)[covered], want[covered], atol=2e-6)


def test_tilted_plane_depth_and_perspective_correct_position():
  """A triangle on the camera-space plane n·P = c, seen by a pinhole with focal f: the pixel
  with NDC (x, y) sees the point t·r, r = (x/f, y/f, -1), t = c / (n·r) = its depth."""
  f, n, c = 1.7, np.array([0.3, -0.2, -1.0]), 3.0
  corners_xy = np.array([[-2.2, -1.5], [2.4, -1.1], [0.1, 2.3]])          # camera X, Y
  z = -(c - corners_xy @ n[:2]) / -n[2]                                  # on the plane
  cam_pts = np.concatenate([corners_xy, z[:, None]], -1)
  clip = np.stack([f * cam_pts[:, 0], f * cam_pts[:, 1], np.zeros(3), -cam_pts[:, 2]],
                  -1).astype(np.float32)
  faces = np.array([[0, 1, 2]])
  out = rasterize.rasterize(clip, faces, H, W, backend="jax")
  hit = np.asarray(out.tri_id) == 0
  assert hit.sum() > 300
  xs = 2.0 * (np.arange(W) + 0.5) / W - 1.0
  ys = 1.0 - 2.0 * (np.arange(H) + 0.5) / H
  r = np.stack(np.broadcast_arrays(xs[None, :] / f, ys[:, None] / f, -1.0), -1)
  t = c / (r @ n)
  np.testing.assert_allclose(np.asarray(out.depth)[hit], t[hit], rtol=2e-5)
  points = np.asarray(rasterize.interpolate(cam_pts.astype(np.float32), faces, out))
  np.testing.assert_allclose(points[hit], (t[..., None] * r)[hit], atol=2e-5)


def triangle_soup(n=60, seed=0):
  """n random triangles (pixel units, some far off-screen, some sharing a depth) -> clip, faces."""
  rng = np.random.default_rng(seed)
  centres = rng.uniform([-10, -10], [W + 10, H + 10], (n, 1, 2))
  sizes = rng.uniform(1.0, 25.0, (n, 1, 1))
  pts = (centres + sizes * rng.normal(size=(n, 3, 2))).reshape(-1, 2)
  depth = np.repeat(rng.choice([1.5, 2.0, 2.5, 3.0], n), 3)       # ties on purpose
  depth = depth * rng.uniform(0.97, 1.03, depth.shape)             # and tilted faces
  depth[:9] = 2.0                                                  # exact ties too
  return clip_from_pixels(pts[:, 0], pts[:, 1], depth), np.arange(3 * n).reshape(n, 3)


def test_tiled_search_equals_brute_force_and_reports_overflow():
  clip, faces = triangle_soup()
  tri = jax.jit(triangles.setup)(jnp.asarray(clip), jnp.asarray(faces, jnp.int32))
  brute = np.asarray(jax.jit(visibility.brute_force, static_argnums=(1, 2))(tri, H, W))
  tiled = jax.jit(visibility.tiled, static_argnums=(1, 2), static_argnames="max_pairs")
  ids, overflow = tiled(tri, H, W, max_pairs=4096)
  assert int(overflow) == 0
  np.testing.assert_array_equal(np.asarray(ids), brute)
  assert len(np.unique(brute)) > 30            # most triangles are visible somewhere
  # With too small a budget the dropped (tile, triangle) pairs are counted, not hidden.
  tile_lists = jax.jit(visibility.tile_lists, static_argnums=(1, 2, 3, 4))
  pairs = int(tile_lists(tri, H, W, 16, 4096)["count"].sum())
  assert 100 < pairs < 4096
  overflow_small = tile_lists(tri, H, W, 16, pairs - 5)["overflow"]
  assert int(overflow_small) == 5
  with pytest.raises(RuntimeError, match="raise max_pairs"):
    rasterize.check_exact(overflow_small, "soup")


def test_nearest_wins_and_equal_depths_go_to_the_lower_index():
  square = lambda d: clip_from_pixels([4, 50, 50, 4], [4, 4, 36, 36], d)
  quads = np.array([[0, 1, 2], [0, 2, 3]])
  # Three copies of one square: far (3.0), near (2.0), and near again (2.0), in that order.
  clip = np.concatenate([square(3.0), square(2.0), square(2.0)])
  faces = np.concatenate([quads, quads + 4, quads + 8])
  ids = np.asarray(rasterize.rasterize(clip, faces, H, W, backend="jax").tri_id)
  assert set(np.unique(ids[ids >= 0])) == {2, 3}


def test_batched_views_equal_single_views():
  clip, faces = triangle_soup(n=20, seed=1)
  batch = np.stack([clip, clip * np.array([1.0, -1.0, 1.0, 1.0], np.float32)])
  out = rasterize.rasterize(batch, faces, H, W, backend="jax")
  colors = np.random.default_rng(2).uniform(size=(clip.shape[0], 3)).astype(np.float32)
  image = rasterize.interpolate(colors, faces, out)
  for b in range(2):
    one = rasterize.rasterize(batch[b], faces, H, W, backend="jax")
    np.testing.assert_array_equal(out.tri_id[b], one.tri_id)
    np.testing.assert_allclose(image[b], rasterize.interpolate(colors, faces, one), atol=1e-6)
  # The second view is the first mirrored top to bottom.
  np.testing.assert_array_equal(out.tri_id[1], out.tri_id[0][::-1])


def test_backend_selection():
  assert rasterize.resolve_backend("jax") == "jax"
  if not any(d.platform == "gpu" for d in jax.devices()):
    assert rasterize.resolve_backend("auto") == "jax"
    with pytest.raises(errors.ConfigError, match="render.rasterizer.*cannot run"):
      rasterize.resolve_backend("nvdiffrast")
  with pytest.raises(errors.ConfigError, match="unknown"):
    rasterize.resolve_backend("opengl")
