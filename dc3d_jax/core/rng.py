"""Random keys derived from (stream name, step); never threaded through return values.

One root key per run (from `config.seed`). Any random draw inside a step calls
`key_for(root, "stream", step)`, so a resumed run draws exactly what an uninterrupted one did.
"""

import zlib

import jax


def stream_id(stream: str) -> int:
  """A stable 31-bit id for a stream name (Python's hash() is salted per process)."""
  return zlib.crc32(stream.encode("utf-8")) & 0x7FFFFFFF


def key_for(root: jax.Array, stream: str, step) -> jax.Array:
  """The key of `stream` at `step` (a Python int or a traced int array)."""
  return jax.random.fold_in(jax.random.fold_in(root, stream_id(stream)), step)


def root_key(seed: int) -> jax.Array:
  return jax.random.key(seed)
