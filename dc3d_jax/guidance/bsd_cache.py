"""BSD's FIFO cache of augmented renders (reference §4: a Python list of ≤ 10 images) as
fixed-size arrays and a write index, so it lives inside a jitted, checkpointed state.

  empty_cache(K, H, W)   K zero slots
  push(cache, image)     overwrite the oldest slot (the reference appends, then pops the
                         oldest once more than K are held)
  draw(cache, key)       a uniformly random filled slot (the reference's randint over the list)
"""

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class AugmentationCache:
  """images [K, H, W, 3] in [0, 1]; write: the slot the next push overwrites (the oldest once
  full); count: filled slots (≤ K)."""
  images: jax.Array
  write: jax.Array
  count: jax.Array


def empty_cache(size: int, height: int, width: int) -> AugmentationCache:
  return AugmentationCache(images=jnp.zeros((size, height, width, 3), jnp.float32),
                           write=jnp.zeros((), jnp.int32), count=jnp.zeros((), jnp.int32))


def push(cache: AugmentationCache, image: jax.Array) -> AugmentationCache:
  """FIFO push of one [H, W, 3] image."""
  k = cache.images.shape[0]
  return AugmentationCache(images=cache.images.at[cache.write].set(image.astype(jnp.float32)),
                           write=(cache.write + 1) % k, count=jnp.minimum(cache.count + 1, k))


def draw(cache: AugmentationCache, key: jax.Array) -> jax.Array:
  """A uniformly random filled image [1, H, W, 3] (slot 0, zeros, if none is filled yet)."""
  index = jax.random.randint(key, (), 0, jnp.maximum(cache.count, 1))
  return cache.images[index][None]
