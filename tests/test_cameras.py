"""Cameras: spherical round trips, the frame of docs/ARCHITECTURE.md, pixel-centre rays, projection, sampling."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dreamcraft3d
from dc3d_jax import cameras
from dc3d_jax.core import types

_make_camera = jax.jit(cameras.make_camera, static_argnums=(4, 5))
_camera_rays = jax.jit(cameras.camera_rays)
_random_cameras = jax.jit(cameras.random_cameras, static_argnums=(2, 3, 4, 5))


def _random_spherical(n, seed=0):
  rng = np.random.default_rng(seed)
  elev = rng.uniform(-80.0, 80.0, n)
  azim = rng.uniform(-180.0, 180.0, n)
  azim[0] = 180.0                                  # the closed end of (-180, 180]
  dist = rng.uniform(0.5, 10.0, n)
  return elev, azim, dist


def test_spherical_position_round_trip():
  elev, azim, dist = _random_spherical(200)
  pos = cameras.spherical_to_position(jnp.asarray(elev, jnp.float32),
                                      jnp.asarray(azim, jnp.float32),
                                      jnp.asarray(dist, jnp.float32))
  e2, a2, d2 = (np.asarray(v, np.float64) for v in cameras.position_to_spherical(pos))
  np.testing.assert_allclose(e2, elev, atol=1e-4)
  # Azimuths compared on the circle (180 and -180 are the same direction).
  np.testing.assert_allclose((a2 - azim + 180.0) % 360.0 - 180.0, 0.0, atol=1e-4)
  np.testing.assert_allclose(d2, dist, rtol=1e-6)
  # (-180, 180] up to float32: azimuth 180 comes back as -180 when sin(π_f32) < 0.
  assert np.all(a2 >= -180.0) and np.all(a2 <= 180.0)
  # The position itself against the closed form, in float64.
  e, a = np.deg2rad(elev), np.deg2rad(azim)
  want = dist[:, None] * np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1)
  np.testing.assert_allclose(np.asarray(pos), want, atol=1e-5)


def test_c2w_is_a_rotation_whose_back_axis_points_to_the_camera():
  elev, azim, dist = _random_spherical(64, seed=1)
  cam = _make_camera(elev, azim, dist, 20.0, 8, 8)
  c2w = np.asarray(cam.c2w, np.float64)
  rot, pos = c2w[:, :3, :3], c2w[:, :3, 3]
  np.testing.assert_allclose(rot.transpose(0, 2, 1) @ rot, np.broadcast_to(np.eye(3), rot.shape),
                             atol=1e-5)
  np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
  np.testing.assert_allclose(c2w[:, 3], np.broadcast_to([0.0, 0.0, 0.0, 1.0], (64, 4)))
  np.testing.assert_allclose(rot[:, :, 2], pos / np.linalg.norm(pos, axis=-1, keepdims=True),
                             atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(pos, axis=-1), dist, rtol=1e-6)
  # Up has a non-negative world-Z component (no upside-down cameras) and right is horizontal.
  assert np.all(rot[:, 2, 1] > 0.0)
  np.testing.assert_allclose(rot[:, 2, 0], 0.0, atol=1e-6)
  # The stored spherical coordinates are the ones asked for.
  np.testing.assert_allclose(np.asarray(cam.elevation_deg), elev, atol=1e-4)
  np.testing.assert_allclose(np.asarray(cam.distance), dist, rtol=1e-6)


def test_reference_view_frame():
  cam = _make_camera(0.0, 0.0, 3.8, 20.0, 8, 8)
  c2w = np.asarray(cam.c2w)
  np.testing.assert_allclose(c2w[:3, 3], [3.8, 0.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(c2w[:3, 0], [0.0, 1.0, 0.0], atol=1e-6)   # right = +Y
  np.testing.assert_allclose(c2w[:3, 1], [0.0, 0.0, 1.0], atol=1e-6)   # up = +Z
  np.testing.assert_allclose(c2w[:3, 2], [1.0, 0.0, 0.0], atol=1e-6)   # back = +X
  np.testing.assert_allclose(float(cam.fovy), np.deg2rad(20.0), rtol=1e-6)
  # focal = (H/2) / tan(fovy/2), in pixels.
  np.testing.assert_allclose(float(cam.focal), 4.0 / np.tan(np.deg2rad(10.0)), rtol=1e-6)
  assert cam.batch_shape == ()


def test_camera_indexing_slices_the_batch():
  cam = _make_camera(jnp.array([0.0, 10.0, 20.0]), jnp.array([0.0, 30.0, 60.0]), 3.8, 20.0, 8, 6)
  one = cam[1]
  assert one.batch_shape == () and (one.height, one.width) == (8, 6)
  np.testing.assert_allclose(float(one.azimuth_deg), 30.0)
  np.testing.assert_allclose(np.asarray(one.c2w), np.asarray(cam.c2w)[1])


@pytest.mark.parametrize("elev,azim", [(0.0, 0.0), (30.0, -120.0), (-10.0, 75.0)])
def test_rays_unit_centre_ray_hits_origin_and_vertical_spread(elev, azim):
  h, w, fovy = 9, 7, 20.0
  cam = _make_camera(elev, azim, 3.8, fovy, h, w)
  rays = _camera_rays(cam)
  o, d = np.asarray(rays.origins, np.float64), np.asarray(rays.directions, np.float64)
  assert o.shape == d.shape == (h, w, 3)
  np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(o, np.broadcast_to(np.asarray(cam.position), o.shape), atol=1e-6)
  centre = d[h // 2, w // 2]
  np.testing.assert_allclose(centre, -o[0, 0] / np.linalg.norm(o[0, 0]), atol=1e-6)
  # Top and bottom row centres are (H-1)/2 pixels from the axis: tan = ((H-1)/H)·tan(fovy/2).
  angle = np.arccos(np.clip(np.dot(d[0, w // 2], d[h - 1, w // 2]), -1.0, 1.0))
  want = 2.0 * np.arctan((h - 1) / h * np.tan(np.deg2rad(fovy) / 2))
  np.testing.assert_allclose(angle, want, atol=1e-4)
  # Square pixels: the horizontal spread uses the same focal length.
  angle_w = np.arccos(np.clip(np.dot(d[h // 2, 0], d[h // 2, w - 1]), -1.0, 1.0))
  np.testing.assert_allclose(angle_w, 2.0 * np.arctan((w - 1) / h * np.tan(np.deg2rad(fovy) / 2)),
                             atol=1e-4)


def test_rays_image_orientation_at_reference_view():
  cam = _make_camera(0.0, 0.0, 3.8, 20.0, 9, 9)
  d = np.asarray(_camera_rays(cam).directions)
  assert d[0, 4, 2] > 0.0 and d[8, 4, 2] < 0.0            # row 0 looks up (+Z)
  np.testing.assert_allclose(d[0, 4, 2], -d[8, 4, 2], atol=1e-6)
  assert d[4, 8, 1] > 0.0 and d[4, 0, 1] < 0.0            # last column looks to +Y
  np.testing.assert_allclose(d[0, 4, 1], 0.0, atol=1e-6)  # the centre column stays in XZ
  assert np.all(d[..., 0] < 0.0)                          # every ray heads towards -X


@pytest.mark.parametrize("elev,azim", [(0.0, 0.0), (35.0, 140.0)])
def test_mvp_projects_points_on_pixel_rays_to_pixel_centres(elev, azim):
  h, w = 6, 10                                             # non-square: checks the aspect
  cam = _make_camera(elev, azim, 3.8, 30.0, h, w)
  rays = _camera_rays(cam)
  mvp = np.asarray(cameras.mvp_matrix(cam), np.float64)
  rng = np.random.default_rng(2)
  t = rng.uniform(1.0, 6.0, (h, w, 1))
  points = np.asarray(rays.origins, np.float64) + t * np.asarray(rays.directions, np.float64)
  clip = np.concatenate([points, np.ones((h, w, 1))], -1) @ mvp.T
  ndc = clip[..., :3] / clip[..., 3:]
  i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  np.testing.assert_allclose(ndc[..., 0], 2 * (j + 0.5) / w - 1, atol=1e-4)
  np.testing.assert_allclose(ndc[..., 1], 1 - 2 * (i + 0.5) / h, atol=1e-4)
  # Clip w is the camera-space depth (positive in front of the camera).
  back = np.asarray(cam.c2w, np.float64)[:3, 2]
  depth = -np.sum((points - np.asarray(cam.position)) * back, -1)
  np.testing.assert_allclose(clip[..., 3], depth, rtol=1e-5)
  # OpenGL depth: near plane -> -1, far plane -> +1.
  near, far = 0.1, 1000.0
  for z, want in [(near, -1.0), (far, 1.0)]:
    p = np.asarray(cam.position, np.float64) - z * back
    c = np.append(p, 1.0) @ mvp.T
    np.testing.assert_allclose(c[2] / c[3], want, atol=1e-3)


def _settings(progressive_until):
  return cameras.ViewSettings(progressive_until=progressive_until)


def test_random_cameras_start_at_the_reference_view():
  cam = _random_cameras(jax.random.key(0), 0, 64, _settings(200), 4, 4)
  np.testing.assert_array_equal(np.asarray(cam.elevation_deg), 0.0)
  np.testing.assert_array_equal(np.asarray(cam.azimuth_deg), 0.0)
  np.testing.assert_allclose(np.asarray(cam.distance), 3.8)
  np.testing.assert_allclose(np.asarray(cam.fovy), np.deg2rad(20.0), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(cam.position), np.broadcast_to([3.8, 0, 0], (64, 3)),
                             atol=1e-6)
  # A non-zero reference view is where the range starts, too.
  shifted = dataclasses.replace(_settings(200), ref_elevation_deg=15.0, ref_azimuth_deg=30.0)
  cam = _random_cameras(jax.random.key(1), 0, 8, shifted, 4, 4)
  np.testing.assert_allclose(np.asarray(cam.elevation_deg), 15.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(cam.azimuth_deg), 30.0, atol=1e-5)


def _mixture_sin_mean(lo_deg, hi_deg):
  """E[sin e] for e half uniform in degrees, half uniform on the sphere (sin e uniform)."""
  lo, hi = np.deg2rad(lo_deg), np.deg2rad(hi_deg)
  uniform_deg = (np.cos(lo) - np.cos(hi)) / (hi - lo)
  on_sphere = 0.5 * (np.sin(lo) + np.sin(hi))
  return 0.5 * (uniform_deg + on_sphere), uniform_deg, on_sphere


def _mixture_cdf(e_deg, lo_deg, hi_deg):
  e, lo, hi = np.deg2rad(e_deg), np.deg2rad(lo_deg), np.deg2rad(hi_deg)
  return 0.5 * (e - lo) / (hi - lo) + 0.5 * (np.sin(e) - np.sin(lo)) / (np.sin(hi) - np.sin(lo))


@pytest.mark.parametrize("step", [201, 5000])
def test_random_cameras_full_range_distribution(step):
  n = 20000
  cam = _random_cameras(jax.random.key(3), step, n, _settings(200), 2, 2)
  elev = np.asarray(cam.elevation_deg, np.float64)
  azim = np.asarray(cam.azimuth_deg, np.float64)
  assert elev.min() >= -10.0 - 1e-4 and elev.max() <= 45.0 + 1e-4
  assert azim.min() >= -180.0 and azim.max() < 180.0
  assert elev.min() < -9.5 and elev.max() > 44.5           # the range is used to its ends
  assert azim.min() < -179.0 and azim.max() > 179.0
  # Azimuth uniform: mean 0, variance 360²/12.
  assert abs(azim.mean()) < 4 * 360 / np.sqrt(12 * n)
  np.testing.assert_allclose(azim.var(), 360.0**2 / 12, rtol=0.03)
  # Elevation: the 50/50 mixture, not either pure law (the tolerance is well under the gap).
  want, pure_deg, pure_sphere = _mixture_sin_mean(-10.0, 45.0)
  tol = 4.0 * np.sin(np.deg2rad(elev)).std() / np.sqrt(n)
  assert tol < 0.5 * abs(pure_deg - pure_sphere)
  assert abs(np.sin(np.deg2rad(elev)).mean() - want) < tol
  # Kolmogorov-Smirnov distance to the mixture's closed-form CDF (1.95/√n: the 0.1% level).
  sorted_e = np.sort(elev)
  cdf = _mixture_cdf(sorted_e, -10.0, 45.0)
  ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
  assert ks < 1.95 / np.sqrt(n)
  # The camera positions follow the sampled angles.
  want_pos = cameras.spherical_to_position(cam.elevation_deg, cam.azimuth_deg, cam.distance)
  np.testing.assert_allclose(np.asarray(cam.position), np.asarray(want_pos), atol=1e-5)


def test_random_cameras_intermediate_range():
  # r = step / (progressive_until + 1) = 100 / 200 = 0.5.
  n = 4000
  cam = _random_cameras(jax.random.key(4), 100, n, _settings(199), 2, 2)
  elev, azim = np.asarray(cam.elevation_deg), np.asarray(cam.azimuth_deg)
  assert elev.min() >= -5.0 - 1e-4 and elev.max() <= 22.5 + 1e-4
  assert azim.min() >= -90.0 - 1e-4 and azim.max() <= 90.0 + 1e-4
  assert elev.min() < -4.8 and elev.max() > 22.2
  assert azim.min() < -89.0 and azim.max() > 89.0


def test_random_cameras_without_progression_use_the_full_range_at_step_0():
  cam = _random_cameras(jax.random.key(5), 0, 2000, _settings(0), 2, 2)
  elev, azim = np.asarray(cam.elevation_deg), np.asarray(cam.azimuth_deg)
  assert elev.min() < -9.0 and elev.max() > 44.0
  assert azim.min() < -170.0 and azim.max() > 170.0


def test_random_cameras_depend_on_the_key_only():
  a = _random_cameras(jax.random.key(6), 300, 16, _settings(200), 2, 2)
  b = _random_cameras(jax.random.key(6), 300, 16, _settings(200), 2, 2)
  c = _random_cameras(jax.random.key(7), 300, 16, _settings(200), 2, 2)
  np.testing.assert_array_equal(np.asarray(a.c2w), np.asarray(b.c2w))
  assert not np.allclose(np.asarray(a.azimuth_deg), np.asarray(c.azimuth_deg))


def test_view_settings_from_config():
  cfg = dreamcraft3d.data_config()
  views = cameras.ViewSettings.from_config(cfg, progressive_until=200)
  assert views == cameras.ViewSettings(ref_elevation_deg=0.0, ref_azimuth_deg=0.0,
                                       ref_distance=3.8, fovy_deg=20.0,
                                       elevation_range_deg=(-10.0, 45.0),
                                       azimuth_range_deg=(-180.0, 180.0), progressive_until=200)
  assert isinstance(views.elevation_range_deg, tuple)
  hash(views)                                              # usable as a static jit argument
  cfg.fovy_deg = 30.0
  cfg.elevation_range_deg = [0.0, 60.0]
  views = cameras.ViewSettings.from_config(cfg)
  assert views.fovy_deg == 30.0 and views.elevation_range_deg == (0.0, 60.0)
  assert views.progressive_until == 0


def test_reference_camera_reads_view_settings():
  views = cameras.ViewSettings(ref_elevation_deg=10.0, ref_azimuth_deg=-40.0, ref_distance=2.5,
                               fovy_deg=35.0)
  cam = cameras.reference_camera(views, 5, 7)
  assert (cam.height, cam.width) == (5, 7)
  e, a, d = cameras.position_to_spherical(cam.position)
  np.testing.assert_allclose([float(e), float(a), float(d)], [10.0, -40.0, 2.5], atol=1e-4)
  np.testing.assert_allclose(float(cam.fovy), np.deg2rad(35.0), rtol=1e-6)


@pytest.mark.parametrize("n,ref_azimuth", [(8, 0.0), (5, 30.0), (120, -170.0)])
def test_orbit_cameras_even_spacing(n, ref_azimuth):
  views = cameras.ViewSettings(ref_elevation_deg=5.0, ref_azimuth_deg=ref_azimuth)
  cam = cameras.orbit_cameras(n, views, 4, 4)
  azim = np.asarray(cam.azimuth_deg, np.float64)
  assert azim.shape == (n,)
  np.testing.assert_allclose(azim[0], ref_azimuth, atol=1e-4)
  np.testing.assert_allclose((np.diff(azim) - 360.0 / n + 180.0) % 360.0 - 180.0, 0.0, atol=1e-3)
  assert np.all(azim >= -180.0) and np.all(azim < 180.0)
  np.testing.assert_allclose(np.asarray(cam.elevation_deg), 5.0)
  # The positions are evenly spread: the angle between neighbours is constant.
  _, a2, _ = cameras.position_to_spherical(cam.position)
  np.testing.assert_allclose(((np.asarray(a2) - azim) + 180) % 360 - 180, 0.0, atol=1e-3)
  flat = cameras.orbit_cameras(n, views, 4, 4, elevation_deg=-7.0)
  np.testing.assert_allclose(np.asarray(flat.elevation_deg), -7.0)


def test_types_are_pytrees_with_static_image_size():
  cam = _make_camera(0.0, 0.0, 3.8, 20.0, 12, 16)
  leaves, treedef = jax.tree_util.tree_flatten(cam)
  assert len(leaves) == 5                                  # height and width are static
  assert jax.tree_util.tree_unflatten(treedef, leaves).height == 12
  rays = types.Rays(origins=jnp.zeros((2, 3)), directions=jnp.ones((2, 3)))
  assert len(jax.tree_util.tree_leaves(rays)) == 2


@pytest.mark.parametrize("elevation", [90.0, -90.0])
def test_camera_straight_above_or_below_is_a_rotation(elevation):
  c2w = np.asarray(cameras.make_camera(elevation, 30.0, 3.8, 20.0, 8, 8).c2w)
  rot = c2w[:3, :3]
  np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-5)
  assert np.linalg.det(rot) == pytest.approx(1.0, abs=1e-5)
  np.testing.assert_allclose(rot[:, 2], np.sign(elevation) * np.array([0, 0, 1.0]), atol=1e-5)


def test_jittered_rays_offset_origin_and_unnormalised_direction():
  """threestudio's get_rays(noise_scale): o + n_o for every ray, normalise(R·(x/f, -y/f, -1)
  + n_d), with one (n_o, n_d) for the whole image; here written per pixel in NumPy."""
  h, w, fovy = 5, 7, 20.0
  cam = _make_camera(10.0, 30.0, 3.8, fovy, h, w)
  jitter = np.array([[0.01, -0.02, 0.03], [0.05, 0.0, -0.04]], np.float32)
  rays = jax.jit(cameras.camera_rays)(cam, jnp.asarray(jitter))
  c2w = np.asarray(cam.c2w, np.float64)
  focal = 0.5 * h / np.tan(np.deg2rad(fovy) / 2)
  for row in range(h):
    for col in range(w):
      d_cam = np.array([(col + 0.5 - w / 2) / focal, -(row + 0.5 - h / 2) / focal, -1.0])
      d = c2w[:3, :3] @ d_cam + jitter[1]
      np.testing.assert_allclose(rays.directions[row, col], d / np.linalg.norm(d), atol=1e-6)
      np.testing.assert_allclose(rays.origins[row, col], c2w[:3, 3] + jitter[0], atol=1e-6)


def test_reference_ray_jitter_is_fixed_per_resolution():
  from dc3d_jax.stages import coarse_nerf as cn
  settings = dataclasses.make_dataclass(
      "S", [("rays_noise_scale", float)])(2e-3)
  root = jax.random.key(0)
  at_128 = np.asarray(cn.ref_ray_jitter(root, 128, settings))
  assert at_128.shape == (2, 3)
  np.testing.assert_array_equal(np.asarray(cn.ref_ray_jitter(root, 128, settings)), at_128)
  assert not np.allclose(np.asarray(cn.ref_ray_jitter(root, 384, settings)), at_128)
  draws = np.stack([np.asarray(cn.ref_ray_jitter(jax.random.key(s), 128, settings))
                    for s in range(100)])
  assert abs(draws.std() / 2e-3 - 1.0) < 0.15 and abs(draws.mean()) < 4e-4   # N(0, scale²)
  off = dataclasses.make_dataclass("S", [("rays_noise_scale", float)])(0.0)
  assert cn.ref_ray_jitter(root, 128, off) is None
  assert dreamcraft3d.get_config().data.rays_noise_scale == 2e-3     # the reference's value
