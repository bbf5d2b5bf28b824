"""The JAX -> torch bridge the nvdiffrast backend stands on, on CPU: a torch function with a
known gradient (values, gradients under jit and vmap, integer inputs, unused outputs), and the
nvdiffrast backend's own plumbing with brute-force torch stand-ins for nvdiffrast's ops (the
real ones need a GPU: tests/test_rasterize_gpu.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax.geometry.raster import torch_bridge

torch = pytest.importorskip("torch")


def _gather_scale(x, idx, y):
  """(x[idx] · Σy², sin x): torch autograd knows both gradients."""
  return x[idx.long()] * (y * y).sum(), torch.sin(x)


OP = torch_bridge.torch_op(
    _gather_scale,
    lambda x, idx, y: (jax.ShapeDtypeStruct(idx.shape + x.shape[1:], x.dtype),
                       jax.ShapeDtypeStruct(x.shape, x.dtype)))
X = np.arange(6.0, dtype=np.float32).reshape(3, 2) / 4
IDX = np.array([2, 0, 2], np.int32)
Y = np.array([1.0, -2.0], np.float32)
WEIGHTS = np.arange(6.0, dtype=np.float32).reshape(3, 2) - 2.0


def _loss(op_outputs):
  gathered, sines = op_outputs
  return jnp.sum(WEIGHTS * gathered) + jnp.sum(sines * sines)


def test_values_and_gradients_match_the_closed_form():
  gathered, sines = jax.jit(OP)(X, IDX, Y)
  np.testing.assert_allclose(gathered, X[IDX] * 5.0, rtol=1e-6)
  np.testing.assert_allclose(sines, np.sin(X), rtol=1e-6)
  g_x, g_y = jax.jit(jax.grad(lambda x, y: _loss(OP(x, IDX, y)), (0, 1)))(X, Y)
  # d/dx: scatter-add of 5·W over idx, plus 2 sin x cos x; d/dy: 2y Σ W·x[idx].
  want_x = np.zeros_like(X)
  np.add.at(want_x, IDX, 5.0 * WEIGHTS)
  np.testing.assert_allclose(g_x, want_x + np.sin(2 * X), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_y, 2 * Y * np.sum(WEIGHTS * X[IDX]), rtol=1e-5)


def test_vmap_and_an_unused_output():
  xs = np.stack([X, 2 * X])
  sines = jax.vmap(lambda x: OP(x, IDX, Y)[1])(xs)
  np.testing.assert_allclose(sines, np.sin(xs), rtol=1e-6)
  # Only the first output reaches the loss: the second one's cotangent is zero.
  g = jax.grad(lambda x: jnp.sum(WEIGHTS * OP(x, IDX, Y)[0]))(X)
  want = np.zeros_like(X)
  np.add.at(want, IDX, 5.0 * WEIGHTS)
  np.testing.assert_allclose(g, want, rtol=1e-6)


def test_nvdiffrast_triangle_ids_decode():
  """nvdiffrast stores id + 1 as a float, above 2^24 as the float bits of 0x4a800000 + id + 1."""
  from dc3d_jax.geometry.raster import nvdiffrast_backend
  ids = np.array([-1, 0, 5, 16777215, 16777216, 40000000], np.int64)   # -1: empty pixel
  stored = ids + 1
  small = stored <= 0x01000000
  encoded = np.where(small, stored.astype(np.float32),
                     (0x4A800000 + stored).astype(np.int32).view(np.float32))
  np.testing.assert_array_equal(nvdiffrast_backend._triangle_ids(jnp.asarray(encoded)), ids)


def _fake_nvdiffrast_rasterize(height, width, pos, tri):
  """A brute-force torch stand-in with nvdiffrast's documented conventions: output
  [B, H, W, 4] = (u, v, z/w, id + 1), u and v the perspective-correct weights of a face's
  first two vertices, the smallest z/w wins, zeros on empty pixels, and row 0 is the
  bottom (NDC y = -1)."""
  x, y, z = (pos[..., k] / pos[..., 3] for k in range(3))                  # [B, V]
  py = (-1.0 + 2.0 * (torch.arange(height) + 0.5) / height)[None, :, None, None]
  px = (-1.0 + 2.0 * (torch.arange(width) + 0.5) / width)[None, None, :, None]
  corner = lambda a, k: a[:, tri[:, k].long()][:, None, None, :]           # [B, 1, 1, F]
  cross = lambda i, j, qx, qy: ((corner(x, j) - corner(x, i)) * (qy - corner(y, i))
                                - (corner(y, j) - corner(y, i)) * (qx - corner(x, i)))
  area = cross(0, 1, corner(x, 2), corner(y, 2))
  b = torch.stack([cross(1, 2, px, py), cross(2, 0, px, py), cross(0, 1, px, py)]) / area
  inside = (b >= 0).all(0)                                                 # [B, H, W, F]
  depth = sum(b[k] * corner(z, k) for k in range(3))
  best = torch.where(inside, depth, torch.inf).argmin(-1, keepdim=True)
  pick = lambda a: torch.gather(a.expand(inside.shape), -1, best)[..., 0]
  q = [pick(b[k]) / pick(corner(pos[..., 3], k)) for k in range(3)]         # b_k / w_k
  out = torch.stack([q[0] / sum(q), q[1] / sum(q), pick(depth), best[..., 0].float() + 1], -1)
  return (torch.where(pick(inside)[..., None], out, torch.zeros_like(out)),)


def _fake_nvdiffrast_interpolate(attr, rast, tri):
  """nvdiffrast's interpolation rule: a0 u + a1 v + a2 (1 - u - v)."""
  a = attr[tri.long()[(rast[..., 3].long() - 1).clamp(min=0)]]            # [B, H, W, 3, C]
  u, v = rast[..., :1], rast[..., 1:2]
  out = u * a[..., 0, :] + v * a[..., 1, :] + (1 - u - v) * a[..., 2, :]
  return (torch.where(rast[..., 3:] > 0, out, torch.zeros_like(out)),)


def test_nvdiffrast_backend_plumbing_with_torch_stand_ins(monkeypatch):
  """The nvdiffrast backend's translation (y flip, u/v order, id offset, depth from w) and
  its gradient routing, with brute-force torch CPU stand-ins for nvdiffrast's ops, against
  the JAX backend."""
  from dc3d_jax.geometry import rasterize
  from dc3d_jax.geometry.raster import nvdiffrast_backend as nvb
  from tests.test_rasterize_analytic import triangle_soup
  monkeypatch.setattr(nvb, "missing", lambda: None)
  monkeypatch.setattr(nvb, "_torch_rasterize", _fake_nvdiffrast_rasterize)
  monkeypatch.setattr(nvb, "_torch_interpolate", _fake_nvdiffrast_interpolate)
  monkeypatch.setattr(nvb, "_torch_antialias", lambda color, rast, pos, tri: (2.0 * color,))
  nvb._ops.cache_clear()
  clip, faces = triangle_soup(n=8, seed=3)
  clip[:, 2] = clip[:, 3] - 0.5          # OpenGL-like z: z/w = 1 - 0.5/w grows with depth
  colors = np.random.default_rng(4).uniform(size=(clip.shape[0], 3)).astype(np.float32)
  weights = np.random.default_rng(5).uniform(-1, 1, (12, 16, 3)).astype(np.float32)

  def loss(c, backend, aa):
    raster = rasterize.rasterize(c, faces, 12, 16, backend=backend)
    rgb = rasterize.interpolate(colors, faces, raster)
    image = rasterize.antialias(rgb, raster, c, faces) if aa else rgb
    return jnp.sum(weights * image) + jnp.sum(raster.depth), (raster, image)

  try:
    (_, (nv, image)), g_nv = jax.value_and_grad(loss, has_aux=True)(clip, "nvdiffrast", False)
    (_, (jx, _)), g_jx = jax.value_and_grad(loss, has_aux=True)(clip, "jax", False)
    assert nv.backend == "nvdiffrast" and np.sum(np.asarray(jx.tri_id) >= 0) > 30
    np.testing.assert_array_equal(nv.tri_id, jx.tri_id)
    np.testing.assert_allclose(nv.bary, jx.bary, atol=1e-5)
    np.testing.assert_allclose(nv.depth, jx.depth, rtol=1e-5)
    np.testing.assert_allclose(image, rasterize.interpolate(colors, faces, jx), atol=1e-5)
    np.testing.assert_allclose(g_nv, g_jx, rtol=1e-3, atol=1e-3 * np.abs(g_jx).max())
    # antialias goes through its op too (the stand-in doubles the image).
    _, (_, doubled) = loss(clip, "nvdiffrast", True)
    np.testing.assert_allclose(doubled, 2.0 * image, rtol=1e-6)
  finally:
    nvb._ops.cache_clear()
