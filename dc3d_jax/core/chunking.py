"""Applying a point-wise function in chunks, optionally recomputed in the backward pass.

A hash-grid field keeps ~2 KB of residuals per query point for its backward pass (corner
indices, weights, gathered features of every level). At the reference's 384² renders with
normals that is tens of millions of queries, far beyond device memory. Mapping the field over
chunks with jax.checkpoint keeps only the inputs; the backward pass recomputes one chunk at a
time, so memory holds one chunk's intermediates (the role of tiny-cuda-nn's fused kernels).
"""

import jax
import jax.numpy as jnp


def map_in_chunks(fn, x: jax.Array, chunk: int, *, remat: bool = False):
  """fn([c, D]) -> pytree of [c, ...] applied to x [N, D] in chunks of `chunk` rows.

  chunk <= 0 applies fn once (still rematerialised when remat). The tail is padded by
  repeating the last row; padded outputs are dropped.
  """
  f = jax.checkpoint(fn) if remat else fn
  n = x.shape[0]
  if chunk <= 0 or n <= chunk:
    return f(x)
  pad = (-n) % chunk
  blocks = jnp.pad(x, ((0, pad), (0, 0)), mode="edge").reshape(-1, chunk, x.shape[-1])
  out = jax.lax.map(f, blocks)
  return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:])[:n], out)
