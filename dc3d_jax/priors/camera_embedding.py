"""Camera conditioning of a UNet through a class embedding (DS's BSD variant, reference §10).

DS gives both trained UNets a `class_embedding = TimestepEmbedding(16 -> 1280)` fed the
flattened c2w: e = W_2 silu(W_1 c + b_1) + b_2, added to the time embedding (diffusers'
UNet2DConditionModel: emb = time_embedding(t) + class_embedding(class_labels), which every
ResNet block then reads). diffusers' Flax UNet has no class embedding, so
`added_to_time_embedding(e)` installs a flax method interceptor that adds e [N, D] to the
output of the UNet's `time_embedding` module, only inside the `with` block.

  flat_c2w(c2w)         [B, 4, 4] -> [B, 16] row-major (torch's c2w.view(B, -1))
  init(key, out_dim)    PyTorch nn.Linear's default init: U(±1/√fan_in) for weight and bias
  embed(params, labels) [N, 16] -> [N, out_dim]
"""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
from diffusers.models.embeddings_flax import FlaxTimestepEmbedding

IN_DIM = 16


def flat_c2w(c2w: jax.Array) -> jax.Array:
  """[B, 4, 4] camera-to-world -> [B, 16] class labels, row by row."""
  return jnp.reshape(c2w, c2w.shape[:-2] + (16,)).astype(jnp.float32)


def _linear(key, fan_in: int, fan_out: int) -> dict:
  bound = 1.0 / jnp.sqrt(fan_in)
  k_w, k_b = jax.random.split(key)
  return {"kernel": jax.random.uniform(k_w, (fan_in, fan_out), jnp.float32, -bound, bound),
          "bias": jax.random.uniform(k_b, (fan_out,), jnp.float32, -bound, bound)}


def init(key: jax.Array, out_dim: int, in_dim: int = IN_DIM) -> dict:
  """{"linear_1": {"kernel" [in, D], "bias" [D]}, "linear_2": {"kernel" [D, D], "bias"}}."""
  k1, k2 = jax.random.split(key)
  return {"linear_1": _linear(k1, in_dim, out_dim), "linear_2": _linear(k2, out_dim, out_dim)}


def embed(params: dict, labels: jax.Array) -> jax.Array:
  """[N, 16] labels -> [N, D] float32 class embedding (Linear, SiLU, Linear)."""
  l1, l2 = params["linear_1"], params["linear_2"]
  h = jax.nn.silu(labels.astype(jnp.float32) @ l1["kernel"].astype(jnp.float32) + l1["bias"])
  return h @ l2["kernel"].astype(jnp.float32) + l2["bias"]


@contextlib.contextmanager
def added_to_time_embedding(class_emb: jax.Array):
  """Within this block, a diffusers Flax UNet's time embedding [N, D] gets class_emb [N, D]
  added (cast to the UNet's dtype)."""

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if (context.method_name == "__call__" and isinstance(module, FlaxTimestepEmbedding)
        and module.name == "time_embedding"):
      return out + class_emb.astype(out.dtype)
    return out

  with nn.intercept_methods(interceptor):
    yield
