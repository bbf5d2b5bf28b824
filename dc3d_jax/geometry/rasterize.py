"""The project's one triangle rasterizer, nvdiffrast-shaped, with two backends.

  raster = rasterize(clip [V, 4] | [B, V, 4], faces [F, 3], H, W, backend=...) -> RasterOut
  attrs  = interpolate(attr [V, C] | [B, V, C], faces, raster)     -> [..., H, W, C]
  image  = antialias(color [..., H, W, C], raster, clip, faces)     -> [..., H, W, C]
  render_mesh(Mesh, Camera) -> {'rgb', 'alpha', 'depth', 'normal', 'overflow'}  (ground truth)

Backends (`backend=`, config key `render.rasterizer` for stages):
  'jax'        pure JAX (raster/jax_backend.py, raster/antialias.py); any device.
  'nvdiffrast' nvdiffrast's CUDA ops through a torch bridge (raster/nvdiffrast_backend.py);
               needs a GPU, CUDA torch and diffrp-nvdiffrast, else a ConfigError.
  'auto'       nvdiffrast where it can run, else jax.
Both are differentiable w.r.t. clip and attr: interior gradients through the barycentrics,
silhouette gradients only through `antialias`. interpolate and antialias follow the
backend recorded in the RasterOut. Conventions (NDC, pixel centres, row 0 = top, empty
pixels) are in raster/common.py and shared by both.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax import cameras, errors
from dc3d_jax.core import numerics
from dc3d_jax.core.types import Camera
from dc3d_jax.geometry.raster import antialias as jax_antialias
from dc3d_jax.geometry.raster import jax_backend, nvdiffrast_backend
from dc3d_jax.geometry.raster.common import RasterOut

BACKENDS = ("auto", "jax", "nvdiffrast")
__all__ = ["BACKENDS", "RasterOut", "antialias", "check_exact", "face_normals", "interpolate",
           "rasterize", "render_mesh", "resolve_backend"]


def resolve_backend(backend: str) -> str:
  """'auto' | 'jax' | 'nvdiffrast' -> the backend that will run ('jax' or 'nvdiffrast').

  Raises ConfigError for an unknown name, or for 'nvdiffrast' where it cannot run.
  """
  if backend == "jax":
    return "jax"
  if backend == "nvdiffrast":
    nvdiffrast_backend.require()
    return "nvdiffrast"
  if backend == "auto":
    return "nvdiffrast" if nvdiffrast_backend.missing() is None else "jax"
  raise errors.ConfigError(
      f"rasterizer backend {backend!r} (config key render.rasterizer) is unknown; "
      f"expected one of {BACKENDS}")


@functools.partial(jax.jit, static_argnames=("height", "width", "backend", "search", "max_pairs"))
def rasterize(clip: jax.Array, faces: jax.Array, height: int, width: int, *,
              backend: str = "auto", search: str = "auto",
              max_pairs: int | None = None) -> RasterOut:
  """Rasterizes one view (clip [V, 4]) or a batch (clip [B, V, 4], one shared faces [F, 3]).

  clip: OpenGL clip coordinates; faces: int vertex indices (either winding, no culling).
  search, max_pairs: the JAX backend's visibility search (raster/visibility.py): 'brute',
  'tiled' or 'auto'; check RasterOut.overflow == 0 when the tiled search may run.
  """
  faces = jnp.asarray(faces, jnp.int32)
  if resolve_backend(backend) == "nvdiffrast":
    return nvdiffrast_backend.rasterize(clip, faces, height, width)
  one = functools.partial(jax_backend.rasterize, height=height, width=width, search=search,
                          max_pairs=max_pairs)
  return jax.vmap(one, in_axes=(0, None))(clip, faces) if clip.ndim == 3 else one(clip, faces)


def interpolate(attr: jax.Array, faces: jax.Array, raster: RasterOut) -> jax.Array:
  """Perspective-correct vertex attributes: attr [V, C] or [B, V, C] -> [..., H, W, C],
  0 where no triangle covers the pixel."""
  if raster.backend == "nvdiffrast":
    return nvdiffrast_backend.interpolate(attr, faces, raster)
  return jax_backend.interpolate(attr, faces, raster)


def antialias(color: jax.Array, raster: RasterOut, clip: jax.Array,
              faces: jax.Array) -> jax.Array:
  """Blends colours across silhouette edges (Laine et al. 2020 §4): color [..., H, W, C]
  shaded from `raster`, clip and faces as rasterized -> [..., H, W, C]. The only source of
  gradients w.r.t. silhouette positions; apply it to everything a loss sees at the
  silhouette (rgb, opacity, normals)."""
  if raster.backend == "nvdiffrast":
    return nvdiffrast_backend.antialias(color, raster, clip, faces)
  return jax_antialias.antialias(color, raster, clip, faces)


def face_normals(vertices: jax.Array, faces: jax.Array) -> jax.Array:
  """[F, 3] unit normals cross(v1 - v0, v2 - v0) (outward for counter-clockwise faces)."""
  v = jnp.asarray(vertices)[jnp.asarray(faces)]
  return numerics.safe_normalize(jnp.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]))


def check_exact(overflow, what: str) -> None:
  """Host side: raises if a tiled search had to drop candidates (RasterOut.overflow > 0)."""
  dropped = int(np.max(np.asarray(overflow)))
  if dropped > 0:
    raise RuntimeError(f"{what}: the tiled rasterizer had no room for {dropped} (tile, "
                       "triangle) pairs, so the image may miss triangles; raise max_pairs")


@functools.partial(jax.jit, static_argnames=("backend", "search", "max_pairs"))
def render_mesh(mesh, camera: Camera, *, near: float = 0.1, far: float = 1000.0,
                background=1.0, backend: str = "auto", search: str = "auto",
                max_pairs: int | None = None) -> dict:
  """Renders a coloured Mesh (primitives.Mesh) from one camera (batch_shape ()); vmap for more.

  Returns, for H, W = camera.height, camera.width:
    rgb:    [H, W, 3] vertex colours over `background` (scalar or [3])
    alpha:  [H, W, 1] coverage, exactly 0 or 1 (no antialiasing)
    depth:  [H, W, 1] distance along the ray from the camera centre to the hit (Euclidean, as
            volume rendering's depth, not camera z), 0 where empty
    normal: [H, W, 3] world-space unit face normal of the hit triangle as wound (not flipped
            toward the camera), 0 where empty
    overflow: [] int32 RasterOut.overflow (0 = exact; check_exact on the host)
  """
  vertices = jnp.asarray(mesh.vertices, jnp.float32)
  faces = jnp.asarray(mesh.faces, jnp.int32)
  mvp = cameras.mvp_matrix(camera, near, far)
  clip = jnp.concatenate([vertices, jnp.ones_like(vertices[:, :1])], -1) @ mvp.T
  raster = rasterize(clip, faces, camera.height, camera.width, backend=backend, search=search,
                     max_pairs=max_pairs)
  alpha = (raster.tri_id >= 0)[..., None].astype(jnp.float32)
  color = interpolate(jnp.asarray(mesh.colors, jnp.float32), faces, raster)
  points = interpolate(vertices, faces, raster)
  depth = numerics.safe_norm(points - camera.position, keepdims=True) * alpha
  normal = face_normals(vertices, faces)[jnp.maximum(raster.tri_id, 0)] * alpha
  rgb = color + (1.0 - alpha) * jnp.asarray(background, jnp.float32)
  return {"rgb": rgb, "alpha": alpha, "depth": depth, "normal": normal,
          "overflow": raster.overflow}
