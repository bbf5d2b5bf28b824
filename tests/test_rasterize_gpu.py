"""nvdiffrast (the reference implementation) against the pure-JAX backend on one scene.

GPU only: run on the device machine with `-m gpu` (benchmarks/gpu_session.sh raster). The
first call compiles nvdiffrast's CUDA plugin (a minute or two). Start Python with
XLA_PYTHON_CLIENT_PREALLOCATE=false so torch can allocate beside JAX.

Tolerances, and why (provisional until a GPU run measures them):
  coverage: nvdiffrast snaps vertices to 1/16 pixel and uses a top-left fill rule, so a
    pixel centre within ~1/32 px of an edge can go either way: coverage (object vs
    background) agrees on ≥ 99.5% of pixels, covered counts within 0.5%, and tri_id on
    ≥ 97% of covered pixels (most flips are between two faces sharing an edge);
  depth, barycentrics, interpolated attributes: where the ids agree, both evaluate the
    perspective-correct formulas on the unsnapped float32 positions: 1e-4 relative (depth),
    1e-4 absolute (barycentrics, attributes in [0, 1]);
  antialiased image: the same model on the same silhouettes; it is built to be continuous
    where coverage flips, so mean absolute difference ≤ 2e-3 and ≥ 99% of pixels within 1e-2;
  gradients w.r.t. vertex positions (through barycentrics and antialiasing): cosine ≥ 0.95,
    relative L2 error ≤ 0.3 (flipped pixels move whole-pixel contributions between faces);
    w.r.t. vertex colours: cosine ≥ 0.999.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax import cameras
from dc3d_jax.geometry import primitives, rasterize

pytestmark = pytest.mark.gpu

RES = 256


@functools.cache
def _scene():
  """A sphere with a box in front of part of it, random vertex colours, two views [2, V, 4]."""
  mesh = primitives.concatenate([
      primitives.cube_sphere((0.0, 0.0, 0.0), 0.5, (1, 1, 1), n=20),
      primitives.box((0.45, 0.2, 0.1), (0.12, 0.2, 0.15), (1, 1, 1))])
  rng = np.random.default_rng(0)
  cams = cameras.make_camera(np.array([10.0, 35.0]), np.array([20.0, -70.0]), 2.2, 40.0,
                             RES, RES)
  return dict(vertices=jnp.asarray(mesh.vertices), faces=jnp.asarray(mesh.faces),
              colors=jnp.asarray(rng.uniform(size=mesh.vertices.shape), jnp.float32),
              mvp=cameras.mvp_matrix(cams),
              weights=jnp.asarray(rng.uniform(-1, 1, (2, RES, RES, 3)), jnp.float32))


def _clip(vertices, mvp):
  return jnp.einsum("vj,bij->bvi", jnp.concatenate([vertices, jnp.ones_like(vertices[:, :1])], -1),
                    mvp)


@functools.partial(jax.jit, static_argnames="backend")
def _render(vertices, colors, scene, backend):
  clip = _clip(vertices, scene["mvp"])
  raster = rasterize.rasterize(clip, scene["faces"], RES, RES, backend=backend)
  rgb = rasterize.interpolate(colors, scene["faces"], raster)
  return raster, rgb, rasterize.antialias(rgb, raster, clip, scene["faces"])


def _loss(vertices, colors, scene, backend):
  return jnp.sum(scene["weights"] * _render(vertices, colors, scene, backend)[2])


_grads = jax.jit(jax.grad(_loss, (0, 1)), static_argnames="backend")


def _cosine(a, b):
  a, b = np.ravel(a), np.ravel(b)
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_same_coverage_depth_barycentrics_and_attributes():
  s = _scene()
  nv, nv_rgb, _ = _render(s["vertices"], s["colors"], s, "nvdiffrast")
  jx, jx_rgb, _ = _render(s["vertices"], s["colors"], s, "jax")
  assert nv.backend == "nvdiffrast" and jx.backend == "jax"
  ids_nv, ids_jx = np.asarray(nv.tri_id), np.asarray(jx.tri_id)
  covered_nv, covered_jx = ids_nv >= 0, ids_jx >= 0
  assert covered_jx.mean() > 0.2
  assert np.mean(covered_nv == covered_jx) >= 0.995
  assert abs(int(covered_nv.sum()) - int(covered_jx.sum())) <= 0.005 * covered_jx.sum()
  assert np.mean((ids_nv == ids_jx)[covered_jx]) >= 0.97
  same = (ids_nv == ids_jx) & covered_jx
  np.testing.assert_allclose(np.asarray(nv.depth)[same], np.asarray(jx.depth)[same], rtol=1e-4)
  np.testing.assert_allclose(np.asarray(nv.bary)[same], np.asarray(jx.bary)[same], atol=1e-4)
  np.testing.assert_allclose(np.asarray(nv_rgb)[same], np.asarray(jx_rgb)[same], atol=1e-4)
  # nvdiffrast's own interpolate (through the bridge) against the JAX one on its raster.
  from dc3d_jax.geometry.raster import jax_backend
  mine = jax_backend.interpolate(s["colors"], s["faces"], nv)
  np.testing.assert_allclose(np.asarray(nv_rgb), np.asarray(mine), atol=1e-5)


def test_antialiased_images_and_gradients_agree():
  s = _scene()
  _, _, aa_nv = _render(s["vertices"], s["colors"], s, "nvdiffrast")
  _, _, aa_jx = _render(s["vertices"], s["colors"], s, "jax")
  diff = np.abs(np.asarray(aa_nv) - np.asarray(aa_jx))
  assert diff.mean() <= 2e-3 and np.mean(diff.max(-1) <= 1e-2) >= 0.99
  g_nv = _grads(s["vertices"], s["colors"], s, "nvdiffrast")
  g_jx = _grads(s["vertices"], s["colors"], s, "jax")
  assert np.all(np.isfinite(g_nv[0])) and np.all(np.isfinite(g_jx[0]))
  assert _cosine(g_nv[0], g_jx[0]) >= 0.95
  assert np.linalg.norm(g_nv[0] - g_jx[0]) <= 0.3 * np.linalg.norm(g_nv[0])
  assert _cosine(g_nv[1], g_jx[1]) >= 0.999


def test_render_mesh_backends_agree_under_vmap():
  mesh = primitives.test_object()
  cams = cameras.make_camera(np.array([0.0, 20.0]), np.array([0.0, 120.0]), 3.8, 20.0, 128, 128)
  out = {b: jax.vmap(lambda c: rasterize.render_mesh(mesh, c, backend=b))(cams)
         for b in ("nvdiffrast", "jax")}
  alpha_nv, alpha_jx = np.asarray(out["nvdiffrast"]["alpha"]), np.asarray(out["jax"]["alpha"])
  assert np.mean(alpha_nv == alpha_jx) >= 0.99
  both = (alpha_nv > 0) & (alpha_jx > 0)
  rgb_nv, rgb_jx = np.asarray(out["nvdiffrast"]["rgb"]), np.asarray(out["jax"]["rgb"])
  assert np.mean(np.abs(rgb_nv - rgb_jx)[both[..., 0]] < 1e-4) >= 0.99
