"""Renders of a testbed object with the project's rasterizer, framed like reference images.

Frame: world Z-up; the reference camera sits at elevation e_ref, azimuth 0, distance 3.8,
fovy 20° (cameras.py). `place` turns the upright object by a yaw about Z, then scales it and
shifts it across the reference view's image plane until its silhouette's longer side fills
`fill` = 90% of that view and its box is centred: what io/recenter.py does to a reference
image (DreamCraft3D's preprocess --recenter, border ratio 0.1).

Colours: untextured objects carry per-corner albedo (albedo.py). The textured duck is drawn
by rasterizing (u, v, shade) as vertex "colours" over a black background, then sampling the
texture bilinearly at (u, v) and multiplying by the shade. Pixels are anti-aliased by
rendering at `supersample`× the size and averaging blocks (area filter).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax import cameras
from dc3d_jax.geometry import primitives, rasterize
from dc3d_jax.testbed import meshes

DISTANCE, FOVY_DEG, FILL = 3.8, 20.0, 0.9
FACE_BUCKET = 512     # faces are padded to a multiple of this: fewer compiled variants


@dataclasses.dataclass(frozen=True)
class ObjectModel:
  """An upright object (Z-up, front towards +X) ready to render.

  vertices [N, 3], faces [M, 3]; corner_attr [M, 3, 3]: albedo RGB per face corner, or
  (u, v, shade) when `texture` [H, W, 3] is given.
  """
  name: str
  vertices: np.ndarray
  faces: np.ndarray
  corner_attr: np.ndarray
  texture: np.ndarray | None = None


def _reference_projection(ref_elevation_deg: float) -> tuple[np.ndarray, np.ndarray]:
  """([4, 4] world -> clip matrix, [2, 3] world directions of image x (right) and y (up)) of
  the reference camera."""
  cam = cameras.make_camera(ref_elevation_deg, 0.0, DISTANCE, FOVY_DEG, 64, 64)
  return (np.asarray(cameras.mvp_matrix(cam), np.float64),
          np.asarray(cam.c2w, np.float64)[:3, :2].T)


def _ndc_box(vertices: np.ndarray, mvp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """NDC (x right, y up) min and max of the vertices' projections."""
  clip = np.concatenate([vertices, np.ones_like(vertices[:, :1])], -1) @ mvp.T
  ndc = clip[:, :2] / clip[:, 3:]
  return ndc.min(0), ndc.max(0)


def place(vertices: np.ndarray, yaw_deg: float, ref_elevation_deg: float,
          fill: float = FILL, iterations: int = 30) -> np.ndarray:
  """[N, 3] upright vertices -> [N, 3] world vertices: turned by yaw about Z, scaled and
  shifted so the reference view's silhouette box has longer side `fill` of the image and
  its centre at the image centre (NDC (0, 0)); fixed-point iterations, error < 1e-6 NDC."""
  v = meshes.rotate(vertices - 0.5 * (vertices.min(0) + vertices.max(0)), (("z", yaw_deg),))
  v = v / np.linalg.norm(v, axis=-1).max()
  mvp, plane = _reference_projection(ref_elevation_deg)
  half_height = DISTANCE * np.tan(np.deg2rad(FOVY_DEG) / 2.0)  # NDC 1 at the origin's depth
  for _ in range(iterations):
    lo, hi = _ndc_box(v, mvp)
    centre, longer = 0.5 * (lo + hi), float(np.max(hi - lo))
    if abs(longer - 2.0 * fill) < 1e-6 and np.abs(centre).max() < 1e-6:
      break
    v = v - (centre * half_height) @ plane
    v = v * (2.0 * fill / longer)
  return v


def _pad_faces(faces: np.ndarray) -> np.ndarray:
  """Pads with (0, 0, 0) faces, which have zero area and never cover a pixel."""
  pad = -len(faces) % FACE_BUCKET
  return np.concatenate([faces, np.zeros((pad, 3), faces.dtype)])


def corner_mesh(vertices: np.ndarray, faces: np.ndarray, corner_attr: np.ndarray):
  """Unshared corners (3 vertices per face) so attributes may jump across edges; padded to
  a multiple of FACE_BUCKET faces (unused corners at the origin)."""
  corner_faces = _pad_faces(np.arange(3 * len(faces), dtype=np.int32).reshape(-1, 3))
  pad = ((0, 3 * (len(corner_faces) - len(faces))), (0, 0))
  corners = np.pad(vertices[faces].reshape(-1, 3), pad)
  return primitives.Mesh(vertices=corners.astype(np.float32), faces=corner_faces,
                         colors=np.pad(corner_attr.reshape(-1, 3), pad).astype(np.float32))


@jax.jit
def _render_batch(mesh, camera, background):
  out = jax.vmap(lambda c: rasterize.render_mesh(mesh, c, background=background))(camera)
  return out["rgb"], out["alpha"]


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
  """Bilinear texture lookup, [H, W, 3] at [..., 2] (u right, v up; edges clamped)."""
  h, w = texture.shape[:2]
  x = np.clip(uv[..., 0] * w - 0.5, 0, w - 1)
  y = np.clip((1.0 - uv[..., 1]) * h - 0.5, 0, h - 1)
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  top = texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx
  bottom = texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx
  return top * (1 - fy) + bottom * fy


def _downsample(images: np.ndarray, factor: int) -> np.ndarray:
  b, h, w, c = images.shape
  return images.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def render_views(obj: ObjectModel, vertices: np.ndarray, elevation_deg, azimuth_deg,
                 size: int, supersample: int = 2, views_per_call: int = 16) -> np.ndarray:
  """Placed world vertices [N, 3] and [B] camera angles -> [B, size, size, 4] float32:
  RGB composited on white, alpha = pixel coverage."""
  mesh = corner_mesh(vertices, obj.faces, obj.corner_attr)
  elevation_deg, azimuth_deg = np.atleast_1d(elevation_deg), np.atleast_1d(azimuth_deg)
  background = 0.0 if obj.texture is not None else 1.0
  out = []
  for s in range(0, len(elevation_deg), views_per_call):
    # Pad the last batch to views_per_call: one compiled shape per face bucket.
    take = np.minimum(np.arange(s, s + views_per_call), len(elevation_deg) - 1)
    cams = cameras.make_camera(elevation_deg[take], azimuth_deg[take], DISTANCE, FOVY_DEG,
                               size * supersample, size * supersample)
    rgb, alpha = (np.asarray(a) for a in _render_batch(mesh, cams, jnp.float32(background)))
    if obj.texture is not None:
      colour = sample_texture(obj.texture, rgb[..., :2]) * rgb[..., 2:]
      rgb = colour * alpha + (1.0 - alpha)
    out.append(np.concatenate([rgb, alpha], -1)[:len(elevation_deg) - s])
  return _downsample(np.concatenate(out), supersample).astype(np.float32)
