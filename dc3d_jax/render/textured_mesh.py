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
blend included. c is evaluated at every pixel (a static shape) and masked by hit. Everything
but `unseen` is render/mesh.py's renderer, given the stopped vertices.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax.core.types import Camera
from dc3d_jax.geometry import rasterize as raster_lib
from dc3d_jax.render import mesh as mesh_render

# The same settings as the geometry stage's mesh renderer (remat stays off here).
RenderSettings = mesh_render.MeshRenderSettings


def render(mesh: dict, cameras: Camera, color_fn, settings: RenderSettings) -> dict:
  """mesh {"vertices", "faces", "normals", "seen"} (module docstring); cameras [B];
  color_fn [N, 3] -> [N, 3]. Returns render/mesh.py's images (rgb [B, H, W, 3], opacity /
  depth [B, H, W, 1], comp_normal [B, H, W, 3], raster_overflow [B] int32) and unseen
  [B, H, W, 1]."""
  vertices = jax.lax.stop_gradient(mesh["vertices"])    # so the raster carries none either
  images, raster = mesh_render.render_with_raster(vertices, mesh["faces"], mesh["normals"],
                                                  cameras, color_fn, settings)
  hit = (raster.tri_id >= 0)[..., None].astype(jnp.float32)
  unseen = hit * (1.0 - mesh["seen"][jnp.maximum(raster.tri_id, 0)][..., None])
  return {**images, "unseen": unseen}


def seen_faces(vertices: np.ndarray, faces: np.ndarray, camera: Camera,
               settings: RenderSettings) -> np.ndarray:
  """[F] float32: 1 for faces that own a pixel of `camera`'s view (batch_shape ()), else 0:
  the faces the reference view sees, at that camera's resolution."""
  clip = mesh_render.clip_coordinates(jnp.asarray(vertices, jnp.float32),
                                      jax.tree_util.tree_map(lambda a: a[None], camera))
  raster = raster_lib.rasterize(clip, jnp.asarray(faces, jnp.int32), camera.height,
                                camera.width, backend=settings.backend,
                                max_pairs=settings.max_pairs)
  ids = np.asarray(raster.tri_id).reshape(-1)
  seen = np.zeros((faces.shape[0],), np.float32)
  seen[ids[ids >= 0]] = 1.0
  return seen
