"""Rendering the texture stage's fixed mesh with a colour field (reference §1 "3 Texture": DC
rasterizes the cached DMTet surface with nvdiffrast and antialiases what the losses see).

For cameras [B] and one fixed mesh (vertices [V, 3], faces [F, 3], unit vertex normals [V, 3],
per-face flag seen [F] ∈ {0, 1}: visible from the reference view), per pixel:
  hit          1 where a triangle covers the pixel centre (rasterize: tri_id >= 0), else 0
  x, n         the interpolated world point and vertex normal (n normalised)
  rgb          antialias(hit·c(x) + (1 - hit)·background)       c: the colour field at x
  opacity      antialias(hit)
  comp_normal  antialias(hit·(n + 1)/2)   world normals in [0, 1] on black
  depth        antialias(hit·|x - o|)     distance from the camera centre o, premultiplied
  unseen       hit·(1 - seen[tri_id])     DS's front-visibility mask (1 = not seen from the
               reference view), not antialiased; 0 on the background, so masked augmentation
               keeps the render's white background
The geometry is fixed, so the rasterization carries no gradient (its inputs are
stop_gradient'ed); gradients reach the colour field through the colours, the antialiasing
blend included. c is evaluated at every pixel (a static shape) and masked by hit.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax import cameras as cams
from dc3d_jax.core import numerics
from dc3d_jax.core.chunking import map_in_chunks
from dc3d_jax.core.types import Camera
from dc3d_jax.geometry import rasterize as raster_lib

# The reference's projection planes (§2); the rasterizer ranks depth by 1/w, so they only
# drop triangles in front of `near`.
NEAR, FAR = 0.1, 1000.0


@dataclasses.dataclass(frozen=True)
class RenderSettings:
  backend: str = "jax"          # rasterize backend: 'auto', 'jax' or 'nvdiffrast'
  max_pairs: int | None = None  # the tiled visibility search's (tile, triangle) budget
  background: float = 1.0       # solid white, as every stage of the reference
  field_chunk: int = 0          # colour queries per chunk (0: all at once)


def clip_coordinates(vertices: jax.Array, cameras: Camera) -> jax.Array:
  """[V, 3] world points, cameras [B] -> [B, V, 4] OpenGL clip coordinates."""
  mvp = cams.mvp_matrix(cameras, NEAR, FAR)
  homogeneous = jnp.concatenate([vertices, jnp.ones_like(vertices[:, :1])], -1)
  return jnp.einsum("vj,bij->bvi", homogeneous, mvp)


def render(mesh: dict, cameras: Camera, color_fn, settings: RenderSettings) -> dict:
  """mesh {"vertices", "faces", "normals", "seen"} (module docstring); cameras [B];
  color_fn [N, 3] -> [N, 3]. Returns rgb [B, H, W, 3], opacity / depth / unseen [B, H, W, 1],
  comp_normal [B, H, W, 3] and raster_overflow [B] int32 (0: exact)."""
  vertices = jax.lax.stop_gradient(mesh["vertices"])
  faces = mesh["faces"]
  clip = clip_coordinates(vertices, cameras)
  raster = raster_lib.rasterize(clip, faces, cameras.height, cameras.width,
                                backend=settings.backend, max_pairs=settings.max_pairs)
  raster = jax.lax.stop_gradient(raster)
  hit = (raster.tri_id >= 0)[..., None].astype(jnp.float32)
  per_view = lambda a: jnp.broadcast_to(a, (clip.shape[0],) + a.shape)
  attrs = raster_lib.interpolate(per_view(jnp.concatenate([vertices, mesh["normals"]], -1)),
                                 faces, raster)
  points, normal = attrs[..., :3], numerics.safe_normalize(attrs[..., 3:])
  color = map_in_chunks(color_fn, points.reshape(-1, 3), settings.field_chunk)
  distance = numerics.safe_norm(points - cameras.position[:, None, None, :], keepdims=True)
  shaded = jnp.concatenate([hit * color.reshape(points.shape) + (1.0 - hit) * settings.background,
                            hit, hit * 0.5 * (normal + 1.0), hit * distance], -1)
  out = raster_lib.antialias(shaded, raster, clip, faces)
  unseen = hit * (1.0 - mesh["seen"][jnp.maximum(raster.tri_id, 0)][..., None])
  return {"rgb": out[..., 0:3], "opacity": out[..., 3:4], "comp_normal": out[..., 4:7],
          "depth": out[..., 7:8], "unseen": unseen, "raster_overflow": raster.overflow}


def seen_faces(vertices: np.ndarray, faces: np.ndarray, camera: Camera,
               settings: RenderSettings) -> np.ndarray:
  """[F] float32: 1 for faces that own a pixel of `camera`'s view (batch_shape ()), else 0:
  the faces the reference view sees, at that camera's resolution."""
  clip = clip_coordinates(jnp.asarray(vertices, jnp.float32),
                          jax.tree_util.tree_map(lambda a: a[None], camera))
  raster = raster_lib.rasterize(clip, jnp.asarray(faces, jnp.int32), camera.height,
                                camera.width, backend=settings.backend,
                                max_pairs=settings.max_pairs)
  ids = np.asarray(raster.tri_id).reshape(-1)
  seen = np.zeros((faces.shape[0],), np.float32)
  seen[ids[ids >= 0]] = 1.0
  return seen
