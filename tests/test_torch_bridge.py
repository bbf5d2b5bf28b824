"""The JAX -> torch bridge the nvdiffrast backend stands on, with a torch CPU stand-in whose
gradient is known: values, gradients (jit, vmap), integer inputs, and unused outputs."""

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
