"""Functional LoRA on a Flax params pytree: low-rank adapters on the UNet's attention projections.

For a Dense kernel W [in, out] (y = x W + b) an adapter is a [in, r], b [r, out] with
  W' = W + s·a b,   s = α / r
(diffusers' LoRALinearLayer: `down` = aᵀ, `up` = bᵀ, network_alpha = α; PEFT's scaling α/r).
At init a ~ N(0, 1/r²) (diffusers' init of `down`) and b = 0, so W' = W exactly.

Adapters are a pytree that mirrors the params' nesting down to each adapted module:
  {"down_blocks_0": {"attentions_0": {... "attn1": {"to_q": {"a": [in, r], "b": [r, out]}}}}}
so they checkpoint and optimise like any params. Only the adapters are trained; the base
params stay frozen and can be shared by several adapter sets (the BSD DreamBooth prior and
score estimator in `lora` memory mode).

  merge(params, adapters, scale)   the base with W' in place of W (what `apply` is given)
  unmerged(adapters, scale)        a flax method interceptor adding s·(x a) b to the adapted
                                   Dense outputs instead (same function; used to check merge)
"""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

# Attention projections of diffusers' Flax UNet (FlaxAttention): query, key, value, output.
TARGETS = ("to_q", "to_k", "to_v", "to_out_0")


def target_modules(params, targets=TARGETS) -> list:
  """Paths (tuples of names) of the Dense modules named in `targets`, sorted."""
  flat = traverse_util.flatten_dict(params)
  return sorted(p[:-1] for p in flat if p[-1] == "kernel" and p[-2] in targets)


def init(params, key: jax.Array, rank: int, targets=TARGETS) -> dict:
  """Adapters for every target module of `params`: a ~ N(0, 1/rank²), b = 0 (float32)."""
  flat = traverse_util.flatten_dict(params)
  modules = target_modules(params, targets)
  if not modules:
    raise ValueError(f"lora.init: no Dense kernels named {targets} in the params")
  out = {}
  for i, path in enumerate(modules):
    fan_in, fan_out = flat[path + ("kernel",)].shape
    a = jax.random.normal(jax.random.fold_in(key, i), (fan_in, rank), jnp.float32) / rank
    out[path + ("a",)] = a
    out[path + ("b",)] = jnp.zeros((rank, fan_out), jnp.float32)
  return traverse_util.unflatten_dict(out)


def delta(adapter: dict, scale) -> jax.Array:
  """s·a b [in, out] in float32."""
  return scale * (adapter["a"].astype(jnp.float32) @ adapter["b"].astype(jnp.float32))


def merge(params, adapters, scale, dtype=None):
  """params with each adapted kernel W replaced by W + s·a b, computed in float32 and cast
  to `dtype` (default: W's dtype). `scale` may be traced (0 gives the base exactly)."""
  flat = dict(traverse_util.flatten_dict(params))
  for path, adapter in _adapters_by_module(adapters).items():
    w = flat[path + ("kernel",)]
    flat[path + ("kernel",)] = (w.astype(jnp.float32) + delta(adapter, scale)).astype(
        dtype or w.dtype)
  if dtype is not None:
    flat = {k: v.astype(dtype) for k, v in flat.items()}
  return traverse_util.unflatten_dict(flat)


def _adapters_by_module(adapters) -> dict:
  """{module path: {"a", "b"}} from the nested adapters pytree."""
  flat = traverse_util.flatten_dict(adapters)
  return {p[:-1]: {"a": flat[p[:-1] + ("a",)], "b": flat[p[:-1] + ("b",)]}
          for p in flat if p[-1] == "a"}


@contextlib.contextmanager
def unmerged(adapters, scale):
  """Within this block, every adapted Dense returns x W + b + s·(x a) b_lora."""
  by_module = _adapters_by_module(adapters)

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != "__call__" or not isinstance(context.module, nn.Dense):
      return out
    adapter = by_module.get(tuple(context.module.path))
    if adapter is None:
      return out
    x = args[0].astype(jnp.float32)
    branch = scale * ((x @ adapter["a"].astype(jnp.float32)) @ adapter["b"].astype(jnp.float32))
    return out + branch.astype(out.dtype)

  with nn.intercept_methods(interceptor):
    yield
