"""Rendering a triangle mesh from cameras with the project's rasterizer (reference §1 "2 Geometry
(DMTet)": DC rasterizes the DMTet surface with nvdiffrast and antialiases every output).

For B cameras and one (padded) mesh, per pixel:
  hit          1 where a triangle covers the pixel centre, else 0 (rasterize: tri_id >= 0)
  x, n         the interpolated world-space surface point and vertex normal (n normalised)
  rgb          antialias(hit·c(x) + (1 - hit)·background)     c: the albedo field at x
  opacity      antialias(hit)
  comp_normal  antialias(hit·(n + 1)/2): world normals in [0, 1] on black, as the reference's
  depth        antialias(hit·|x - o|): distance along the ray from the camera centre o,
               premultiplied by coverage like opacity (as volume rendering's depth is)
Antialiasing is the only source of gradients at silhouettes (geometry/rasterize.py); inside,
gradients reach the vertices through the barycentrics. c is evaluated at every pixel (the
static-shape stand-in for the reference's covered-pixel selection) and masked by hit.

Padded meshes (geometry/marching_tets.py) render as they are: their padding faces (0, 0, 0) are
degenerate and cover nothing. The tiled visibility search reports candidates it had no room
for in `raster_overflow` (0: exact).
"""

import dataclasses

import jax
import jax.numpy as jnp

from dc3d_jax import cameras as cams
from dc3d_jax.core import numerics
from dc3d_jax.core.chunking import map_in_chunks
from dc3d_jax.core.types import Camera
from dc3d_jax.geometry import rasterize as raster_lib

# The reference's random-view projection planes (§2); the rasterizer only culls triangles in
# front of `near`, and ranks depth by 1/w, so they do not change the image of an object.
NEAR, FAR = 0.1, 1000.0


@dataclasses.dataclass(frozen=True)
class MeshRenderSettings:
  backend: str = "jax"          # a resolved rasterize backend: 'jax' or 'nvdiffrast'
  max_pairs: int | None = None  # the tiled visibility search's (tile, triangle) budget
  background: float = 1.0       # solid white, as every stage of the reference
  field_chunk: int = 0          # albedo queries per chunk (0: all at once)
  remat: bool = False           # recompute albedo chunks in the backward pass (memory)


def clip_coordinates(vertices: jax.Array, cameras: Camera) -> jax.Array:
  """[V, 3] world points, cameras [B] -> [B, V, 4] OpenGL clip coordinates."""
  mvp = cams.mvp_matrix(cameras, NEAR, FAR)                                # [B, 4, 4]
  homogeneous = jnp.concatenate([vertices, jnp.ones_like(vertices[:, :1])], -1)
  return jnp.einsum("vj,bij->bvi", homogeneous, mvp)


def render(vertices: jax.Array, faces: jax.Array, normals: jax.Array, cameras: Camera,
           color_fn, settings: MeshRenderSettings) -> dict:
  """Renders one mesh from cameras [B] (all of cameras.height × cameras.width).

  vertices [V, 3] world; faces [F, 3] int32 (padding rows (0, 0, 0)); normals [V, 3] unit
  vertex normals; color_fn: [N, 3] world points -> [N, 3] albedo.
  Returns rgb [B, H, W, 3], opacity [B, H, W, 1], comp_normal [B, H, W, 3], depth
  [B, H, W, 1] (module docstring) and raster_overflow [B] int32.
  """
  return render_with_raster(vertices, faces, normals, cameras, color_fn, settings)[0]


def render_with_raster(vertices: jax.Array, faces: jax.Array, normals: jax.Array,
                       cameras: Camera, color_fn, settings: MeshRenderSettings) -> tuple:
  """render's images and the rasterizer's output they came from (its tri_id says which face
  owns each pixel)."""
  h, w = cameras.height, cameras.width
  clip = clip_coordinates(vertices, cameras)
  raster = raster_lib.rasterize(clip, faces, h, w, backend=settings.backend,
                                max_pairs=settings.max_pairs)
  hit = (raster.tri_id >= 0)[..., None].astype(jnp.float32)                 # [B, H, W, 1]
  per_view = lambda a: jnp.broadcast_to(a, (clip.shape[0],) + a.shape)
  attrs = raster_lib.interpolate(per_view(jnp.concatenate([vertices, normals], -1)), faces,
                                 raster)
  points, normal = attrs[..., :3], numerics.safe_normalize(attrs[..., 3:])
  albedo = map_in_chunks(color_fn, points.reshape(-1, 3), settings.field_chunk,
                         remat=settings.remat).reshape(points.shape)
  distance = numerics.safe_norm(points - cameras.position[:, None, None, :], keepdims=True)
  shaded = jnp.concatenate([hit * albedo + (1.0 - hit) * settings.background, hit,
                            hit * 0.5 * (normal + 1.0), hit * distance], -1)
  out = raster_lib.antialias(shaded, raster, clip, faces)
  images = {"rgb": out[..., 0:3], "opacity": out[..., 3:4], "comp_normal": out[..., 4:7],
            "depth": out[..., 7:8], "raster_overflow": raster.overflow}
  return images, raster
