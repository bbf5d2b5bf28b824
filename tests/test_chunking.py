"""map_in_chunks: same values and gradients as one call, with and without recomputation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax.core.chunking import map_in_chunks
from dc3d_jax.geometry import hash_grid

SPEC = hash_grid.HashGridSpec(n_levels=4, log2_table_size=8, base_resolution=4,
                              per_level_scale=2.0)


def _field(table, x):
  h = hash_grid.encode(table, x, SPEC)
  return jnp.sum(h * h, axis=-1), jnp.tanh(h[:, :3])


@pytest.mark.parametrize("chunk, remat", [(0, False), (0, True), (7, False), (16, True),
                                          (1000, True)])
def test_chunked_values_and_gradients_equal_one_call(chunk, remat):
  table = hash_grid.init_table(jax.random.key(0), SPEC) * 1e3
  x = jax.random.uniform(jax.random.key(1), (50, 3))

  def loss(t, fn):
    sigma, rgb = fn(t, x)
    return jnp.sum(sigma * jnp.arange(50)) + jnp.sum(rgb ** 2)

  whole = lambda t, x: _field(t, x)
  chunked = lambda t, x: map_in_chunks(lambda p: _field(t, p), x, chunk, remat=remat)
  for a, b in zip(jax.tree_util.tree_leaves(whole(table, x)),
                  jax.tree_util.tree_leaves(chunked(table, x))):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  g_whole = jax.grad(loss)(table, whole)
  g_chunk = jax.jit(jax.grad(lambda t: loss(t, chunked)))(table)
  np.testing.assert_allclose(g_whole, g_chunk, rtol=1e-5, atol=1e-6)


def test_chunks_with_recomputation_bound_the_backward_memory():
  """The compiled gradient's temporary memory: one chunk's intermediates, not all points'."""
  table = hash_grid.init_table(jax.random.key(0), SPEC)
  x = jax.random.uniform(jax.random.key(1), (65536, 3))

  def temp_bytes(chunk, remat):
    f = lambda t: jnp.sum(map_in_chunks(lambda p: _field(t, p)[0], x, chunk, remat=remat))
    return jax.jit(jax.grad(f)).lower(table).compile().memory_analysis().temp_size_in_bytes

  whole, chunked = temp_bytes(0, False), temp_bytes(4096, True)
  assert chunked * 8 < whole, (chunked, whole)
