"""Cameras on the viewing sphere: spherical <-> c2w, rays, projection, view sampling.

Position = d·(cos e·cos a, cos e·sin a, sin e) for elevation e and azimuth a; cameras look at
the origin with world +Z as up. Reference view: e = 0°, a = 0°, d = 3.8, fovy = 20°
(Zero123's fixed field of view; reference §2).
"""

import dataclasses

import jax
import jax.numpy as jnp

from dc3d_jax.core import numerics, schedules
from dc3d_jax.core.types import Camera, Rays


def look_at_c2w(position: jax.Array) -> jax.Array:
  """[..., 3] camera centres -> [..., 4, 4] c2w looking at the origin, world +Z up.

  Straight above or below the origin (elevation ±90°) world +Z is parallel to the view; there
  the image's up is taken as world +X so the frame stays a rotation.
  """
  forward = numerics.safe_normalize(-position)
  at_pole = (jnp.abs(forward[..., 2]) > 1.0 - 1e-6)[..., None]
  up_world = jnp.where(at_pole, jnp.array([1.0, 0.0, 0.0]), jnp.array([0.0, 0.0, 1.0]))
  up_world = jnp.broadcast_to(up_world, position.shape)
  right = numerics.safe_normalize(jnp.cross(forward, up_world))
  up = numerics.safe_normalize(jnp.cross(right, forward))
  rot = jnp.stack([right, up, -forward], axis=-1)
  top = jnp.concatenate([rot, position[..., None]], axis=-1)
  bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0]), position.shape[:-1] + (1, 4))
  return jnp.concatenate([top, bottom], axis=-2)


def spherical_to_position(elevation_deg, azimuth_deg, distance) -> jax.Array:
  """Degrees, degrees, world units -> [..., 3] position."""
  e, a = jnp.deg2rad(elevation_deg), jnp.deg2rad(azimuth_deg)
  return distance[..., None] * jnp.stack(
      [jnp.cos(e) * jnp.cos(a), jnp.cos(e) * jnp.sin(a), jnp.sin(e)], axis=-1)


def position_to_spherical(position: jax.Array):
  """[..., 3] -> (elevation_deg, azimuth_deg in (-180, 180], distance)."""
  distance = numerics.safe_norm(position)
  elevation = jnp.rad2deg(jnp.arcsin(jnp.clip(position[..., 2] / distance, -1.0, 1.0)))
  azimuth = jnp.rad2deg(jnp.arctan2(position[..., 1], position[..., 0]))
  return elevation, azimuth, distance


def make_camera(elevation_deg, azimuth_deg, distance, fovy_deg, height: int,
                width: int) -> Camera:
  """Cameras from spherical coordinates; all array arguments broadcast together."""
  e, a, d, f = jnp.broadcast_arrays(*(jnp.asarray(v, jnp.float32) for v in
                                      (elevation_deg, azimuth_deg, distance, fovy_deg)))
  c2w = look_at_c2w(spherical_to_position(e, a, d))
  return Camera(c2w=c2w, fovy=jnp.deg2rad(f), elevation_deg=e, azimuth_deg=a, distance=d,
                height=height, width=width)


def reference_camera(views, height: int, width: int) -> Camera:
  """The camera of the reference image, from ViewSettings (or the data config)."""
  return make_camera(views.ref_elevation_deg, views.ref_azimuth_deg,
                     views.ref_distance, views.fovy_deg, height, width)


def orbit_cameras(n_views: int, views, height: int, width: int,
                  elevation_deg: float | None = None) -> Camera:
  """n_views cameras evenly spaced in azimuth from the reference azimuth (turntable order)."""
  azimuth = views.ref_azimuth_deg + jnp.arange(n_views) * (360.0 / n_views)
  azimuth = (azimuth + 180.0) % 360.0 - 180.0
  elev = views.ref_elevation_deg if elevation_deg is None else elevation_deg
  return make_camera(elev, azimuth, views.ref_distance, views.fovy_deg, height, width)


def camera_rays(camera: Camera, jitter: jax.Array | None = None) -> Rays:
  """Rays through pixel centres. Camera batch [...] -> Rays [..., H, W, 3].

  jitter: optional [2, 3] world-space offsets (origin, direction) added to every ray of the
  image, the direction's to the unnormalised pixel direction R·(x/f, -y/f, -1) before it is
  normalised: the reference view's `rays_noise_scale` (threestudio get_rays(noise_scale)).
  """
  h, w = camera.height, camera.width
  j, i = jnp.meshgrid(jnp.arange(w) + 0.5, jnp.arange(h) + 0.5, indexing="xy")
  focal = camera.focal[..., None, None]
  dirs_cam = jnp.stack(jnp.broadcast_arrays((j - 0.5 * w) / focal, -(i - 0.5 * h) / focal,
                                            -jnp.ones_like(focal)), axis=-1)
  rot = camera.c2w[..., None, None, :3, :3]
  directions = jnp.sum(rot * dirs_cam[..., None, :], axis=-1)
  origins = jnp.broadcast_to(camera.position[..., None, None, :], directions.shape)
  if jitter is not None:
    origins, directions = origins + jitter[0], directions + jitter[1]
  return Rays(origins=origins, directions=numerics.safe_normalize(directions))


def reference_ray_jitter(key: jax.Array, scale: float) -> jax.Array:
  """[2, 3] (origin, direction) offsets ~ N(0, scale²), one draw for the whole image.

  The reference draws them when the reference view's rays are built, at start-up and at each
  resolution change, so within a resolution they are a fixed offset: key them by resolution.
  """
  return scale * jax.random.normal(key, (2, 3))


def projection_matrix(camera: Camera, near: float, far: float) -> jax.Array:
  """[..., 4, 4] OpenGL perspective (clip y up; image row 0 = clip y = +1)."""
  t = jnp.tan(0.5 * camera.fovy)
  aspect = camera.width / camera.height
  zeros = jnp.zeros_like(t)
  rows = [
      [1.0 / (t * aspect), zeros, zeros, zeros],
      [zeros, 1.0 / t, zeros, zeros],
      [zeros, zeros, zeros - (far + near) / (far - near), zeros - 2.0 * far * near / (far - near)],
      [zeros, zeros, zeros - 1.0, zeros],
  ]
  return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def mvp_matrix(camera: Camera, near: float = 0.1, far: float = 1000.0) -> jax.Array:
  """[..., 4, 4] world -> clip space."""
  return projection_matrix(camera, near, far) @ jnp.linalg.inv(camera.c2w)


def _sample_elevation(key, lo_deg, hi_deg):
  """Half the draws uniform in degrees, half uniform on the sphere (arcsine), reference §2."""
  k_choice, k_val = jax.random.split(key)
  u = jax.random.uniform(k_val)
  uniform_deg = lo_deg + u * (hi_deg - lo_deg)
  s_lo, s_hi = jnp.sin(jnp.deg2rad(lo_deg)), jnp.sin(jnp.deg2rad(hi_deg))
  on_sphere = jnp.rad2deg(jnp.arcsin(jnp.clip(s_lo + u * (s_hi - s_lo), -1.0, 1.0)))
  return jnp.where(jax.random.bernoulli(k_choice), uniform_deg, on_sphere)


def random_cameras(key, step, n_views: int, views, height: int, width: int) -> Camera:
  """n_views random cameras; the range grows from the reference view (progressive_until).

  With r = view_range_fraction(step), elevation is drawn in [e_ref + r(lo - e_ref),
  e_ref + r(hi - e_ref)] and azimuth in a_ref + r·[az_lo, az_hi] (reference §2).
  """
  r = schedules.view_range_fraction(step, views.progressive_until)
  e_ref, a_ref = views.ref_elevation_deg, views.ref_azimuth_deg
  e_lo = e_ref + r * (views.elevation_range_deg[0] - e_ref)
  e_hi = e_ref + r * (views.elevation_range_deg[1] - e_ref)
  k_elev, k_azim = jax.random.split(key)
  elev = jax.vmap(lambda k: _sample_elevation(k, e_lo, e_hi))(jax.random.split(k_elev, n_views))
  az_lo, az_hi = (r * v for v in views.azimuth_range_deg)
  azim = a_ref + az_lo + jax.random.uniform(k_azim, (n_views,)) * (az_hi - az_lo)
  azim = (azim + 180.0) % 360.0 - 180.0
  dist = jnp.full((n_views,), views.ref_distance)
  return make_camera(elev, azim, dist, views.fovy_deg, height, width)



@dataclasses.dataclass(frozen=True)
class ViewSettings:
  """Static camera settings: the reference view and the random-view ranges (degrees)."""
  ref_elevation_deg: float = 0.0
  ref_azimuth_deg: float = 0.0
  ref_distance: float = 3.8
  fovy_deg: float = 20.0
  elevation_range_deg: tuple = (-10.0, 45.0)
  azimuth_range_deg: tuple = (-180.0, 180.0)
  progressive_until: int = 0

  @classmethod
  def from_config(cls, data_cfg, progressive_until: int = 0) -> "ViewSettings":
    names = [f.name for f in dataclasses.fields(cls) if f.name != "progressive_until"]
    values = {n: tuple(data_cfg[n]) if isinstance(data_cfg[n], (list, tuple)) else data_cfg[n]
              for n in names}
    return cls(progressive_until=progressive_until, **values)
