"""Safe elementwise ops: finite values and finite gradients everywhere.

One module for them so no file re-derives its own epsilon.
"""

import jax
import jax.numpy as jnp

TINY = 1e-12


def safe_sqrt(x: jax.Array, eps: float = TINY) -> jax.Array:
  """sqrt(max(x, eps)): finite gradient at 0."""
  return jnp.sqrt(jnp.maximum(x, eps))


def safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
  """Euclidean norm with a finite gradient at the zero vector."""
  return safe_sqrt(jnp.sum(x * x, axis=axis, keepdims=keepdims))


def safe_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-20) -> jax.Array:
  """x / |x|, returning 0 (not NaN) for the zero vector, as torch's F.normalize does."""
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps))


def binary_entropy(p: jax.Array, eps: float = 1e-3) -> jax.Array:
  """-p log p - (1-p) log(1-p) with p clamped to [eps, 1-eps]."""
  p = jnp.clip(p, eps, 1.0 - eps)
  return -p * jnp.log(p) - (1.0 - p) * jnp.log(1.0 - p)


def all_finite(tree) -> jax.Array:
  """True when every leaf of a pytree is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
