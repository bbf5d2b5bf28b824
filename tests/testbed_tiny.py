"""Tiny testbed fixtures: objects made from the project's primitives (no assets needed), and
tiny render sets and configs for the testbed prior's tests."""

import numpy as np

from dc3d_jax.geometry import primitives
from dc3d_jax.testbed import dataset, objects


def snowman_mesh() -> primitives.Mesh:
  """An asymmetric upright object: two spheres and a box nose pointing at +X."""
  parts = [primitives.uv_sphere((0, 0, -0.3), 0.5, n_lat=8, n_lon=12),
           primitives.uv_sphere((0, 0, 0.45), 0.3, n_lat=8, n_lon=12),
           primitives.box((0.35, 0.1, 0.45), (0.15, 0.05, 0.05))]
  return primitives.concatenate(parts)


def tiny_object(name: str = "snowman"):
  mesh = snowman_mesh()
  return objects.prepare_mesh(name, np.asarray(mesh.vertices, np.float64),
                              np.asarray(mesh.faces, np.int64))


TINY_RENDER = dataset.RenderSettings(resolution=16, supersample=1, instances=2, views=3)


def tiny_sets():
  """(training set, held-out set) dicts shaped like dataset's, from one or two toy objects."""
  obj = tiny_object()
  train = dataset.render_object(obj, TINY_RENDER)
  train["object"] = np.zeros(TINY_RENDER.instances, np.int32)
  train["names"] = np.array(["snowman"])
  views = render_heldout(obj)
  return train, views


def render_heldout(obj, n_views: int = 2) -> dict:
  from dc3d_jax.testbed import render
  elev = np.array([0.0, 30.0][:n_views], np.float32)
  azim = np.array([90.0, 180.0][:n_views], np.float32)
  placed = render.place(obj.vertices, 0.0, 0.0)
  images = render.render_views(obj, placed, np.concatenate([[0.0], elev]),
                               np.concatenate([[0.0], azim]), TINY_RENDER.resolution, 1)
  to8 = lambda x: np.round(x * 255).astype(np.uint8)
  return {"ref": to8(images[:1]), "targets": to8(images[None, 1:]), "elevation": elev,
          "azimuth": azim, "names": np.array([obj.name])}


def repeating_lookup(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
  """Brute force: bilinear lookup of a texture that repeats (GL_REPEAT), texel by texel."""
  h, w = texture.shape[:2]
  out = np.zeros(uv.shape[:-1] + (3,))
  for i in np.ndindex(uv.shape[:-1]):
    x, y = uv[i][0] * w - 0.5, (1.0 - uv[i][1]) * h - 0.5
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
      weight = (1 - abs(x - x0 - dx)) * (1 - abs(y - y0 - dy))
      out[i] += weight * texture[(y0 + dy) % h, (x0 + dx) % w]
  return out
