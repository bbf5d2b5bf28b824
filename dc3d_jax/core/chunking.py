"""Applying a point-wise function in chunks, optionally recomputed in the backward pass.

A hash-grid field keeps ~2 KB of residuals per query point for its backward pass (corner
indices, weights, gathered features of every level). At the reference's 384² renders with
normals that is tens of millions of queries, far beyond device memory. Mapping the field over
chunks with jax.checkpoint keeps only the inputs; the backward pass recomputes one chunk at a
time, so memory holds one chunk's intermediates (the role of tiny-cuda-nn's fused kernels).
`map_on_host` is the host-side counterpart for queries outside a step (conversion, export).
"""

import jax
import jax.numpy as jnp
import numpy as np


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


def map_on_host(fn, points, chunk: int = 2**17) -> np.ndarray:
  """Host side: fn([c, D]) -> [c, ...] over points [N, D] in chunks of exactly `chunk` rows
  (the tail padded with its last row), so a jitted fn compiles once; -> float32 [N, ...]."""
  points = np.asarray(points, np.float32)
  n = points.shape[0]
  chunk = max(1, min(chunk, n))
  padded = np.concatenate([points, np.repeat(points[-1:], (-n) % chunk, 0)])
  out = [np.asarray(fn(padded[i:i + chunk]), np.float32)
         for i in range(0, padded.shape[0], chunk)]
  return np.concatenate(out)[:n]
