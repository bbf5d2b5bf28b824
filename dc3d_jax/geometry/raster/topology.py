"""Edge neighbours of a triangle mesh, for the antialiasing's silhouette test.

Edge k of face f joins faces[f, k+1] and faces[f, k+2] (indices mod 3), opposite vertex k.
Computed with one sort, so faces may be a traced array (a mesh extracted inside a step).
"""

import jax
import jax.numpy as jnp


def edge_neighbours(faces: jax.Array) -> jax.Array:
  """faces [F, 3] int32 -> [F, 3] int32: for edge k of face f, the vertex opposite that edge
  in another face sharing it (same two vertex indices, either direction), -1 where none does
  (a boundary edge, or a degenerate one). An edge shared by more than two faces gets one of
  the others. Vertices are matched by index, as nvdiffrast does: faces that only share
  positions (split vertices) do not count as neighbours.
  """
  faces = jnp.asarray(faces, jnp.int32)
  a, b = jnp.roll(faces, -1, axis=1), jnp.roll(faces, -2, axis=1)     # edge k = (v_{k+1}, v_{k+2})
  half = jnp.arange(3 * faces.shape[0], dtype=jnp.int32)
  # A face with a repeated vertex has no edges: give its half-edges keys nothing else has.
  degenerate = jnp.repeat((a[:, 0] == a[:, 1]) | (a[:, 1] == a[:, 2]) | (a[:, 0] == a[:, 2]), 3)
  lo = jnp.where(degenerate, -1 - half, jnp.minimum(a, b).ravel())
  hi = jnp.where(degenerate, -1 - half, jnp.maximum(a, b).ravel())
  lo_s, hi_s, half_s = jax.lax.sort((lo, hi, half), num_keys=2)
  same = (lo_s[1:] == lo_s[:-1]) & (hi_s[1:] == hi_s[:-1])           # sorted i matches i + 1
  with_next = jnp.concatenate([same, jnp.array([False])])
  with_prev = jnp.concatenate([jnp.array([False]), same])
  pos = jnp.arange(half.shape[0], dtype=jnp.int32)
  twin = jnp.clip(jnp.where(with_next, pos + 1, pos - 1), 0, half.shape[0] - 1)
  opposite = jnp.where(with_next | with_prev, faces.ravel()[half_s[twin]], -1)
  return jnp.zeros_like(half).at[half_s].set(opposite).reshape(faces.shape)
