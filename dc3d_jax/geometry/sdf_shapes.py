"""Analytic signed distance functions (< 0 inside, the project's convention), in jnp.

Each maps points x [..., 3] (world, Z-up) to [...]. Exact distances for the sphere, box and
torus; `union` (the minimum) is exact outside its parts and a bound inside.
"""

import jax
import jax.numpy as jnp


def sphere(x: jax.Array, center=(0.0, 0.0, 0.0), radius: float = 0.5) -> jax.Array:
  return jnp.linalg.norm(x - jnp.asarray(center), axis=-1) - radius


def box(x: jax.Array, center=(0.0, 0.0, 0.0), half_sizes=(0.5, 0.5, 0.5)) -> jax.Array:
  """Axis-aligned box: outside, the distance to the box; inside, minus the distance to the
  nearest face."""
  q = jnp.abs(x - jnp.asarray(center)) - jnp.asarray(half_sizes)
  outside = jnp.linalg.norm(jnp.maximum(q, 0.0), axis=-1)
  return outside + jnp.minimum(jnp.max(q, -1), 0.0)


def torus(x: jax.Array, center=(0.0, 0.0, 0.0), major_radius: float = 0.5,
          minor_radius: float = 0.15) -> jax.Array:
  """Torus about the Z axis through `center`."""
  p = x - jnp.asarray(center)
  ring = jnp.linalg.norm(p[..., :2], axis=-1) - major_radius
  return jnp.sqrt(ring**2 + p[..., 2]**2) - minor_radius


def union(*values: jax.Array) -> jax.Array:
  return jnp.min(jnp.stack(values), axis=0)
