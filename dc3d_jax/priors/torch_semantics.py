"""Makes diffusers' Flax UNet compute what the PyTorch UNet computes with the same weights.

The Flax port differs from the PyTorch model (which the weights were trained with) in two
constants (../shared/reference/dependencies.md): the spatial transformer's GroupNorm uses
ε = 1e-5 where PyTorch uses 1e-6, and GEGLU uses tanh-approximate GELU where PyTorch uses the
exact (erf) GELU. On a tiny random UNet that is a 7e-5 gap in ε̂, 3e-4 after CFG 5.

`torch_semantics()` installs a flax.linen method interceptor that swaps both at trace time,
only inside the `with` block; nothing global changes. It also silences the diffusers Flax
modules' per-setup deprecation log. Wrap every call into diffusers/transformers Flax modules
(UNet, VAE, CLIP) in it.
"""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
from diffusers.models import attention_flax

TORCH_GROUP_NORM_EPS = 1e-6


def _exact_geglu(module, hidden_states, deterministic=True):
  """GEGLU as PyTorch computes it: proj, split, value · GELU_erf(gate)."""
  hidden_states = module.proj(hidden_states)
  value, gate = jnp.split(hidden_states, 2, axis=2)
  out = value * jax.nn.gelu(gate, approximate=False)
  return module.dropout_layer(out, deterministic=deterministic)


def _torch_group_norm(module, x):
  """The same GroupNorm with PyTorch's ε, applied with the module's own scale and bias."""
  twin = module.clone(parent=None, epsilon=TORCH_GROUP_NORM_EPS)
  return twin.apply({"params": module.variables["params"]}, x)


def _interceptor(next_fun, args, kwargs, context):
  module = context.module
  if context.method_name == "__call__":
    if isinstance(module, attention_flax.FlaxGEGLU):
      return _exact_geglu(module, *args, **kwargs)
    in_transformer = isinstance(module.parent, attention_flax.FlaxTransformer2DModel)
    if (isinstance(module, nn.GroupNorm) and in_transformer
        and module.has_variable("params", "scale")):
      return _torch_group_norm(module, *args, **kwargs)
  return next_fun(*args, **kwargs)


@contextlib.contextmanager
def quiet_libraries():
  """Silences diffusers' per-module Flax deprecation logs and transformers' load chatter,
  restoring both levels afterwards."""
  import diffusers
  import transformers
  d_level = diffusers.utils.logging.get_verbosity()
  t_level = transformers.utils.logging.get_verbosity()
  diffusers.utils.logging.set_verbosity_error()
  transformers.utils.logging.set_verbosity_error()
  try:
    yield
  finally:
    diffusers.utils.logging.set_verbosity(d_level)
    transformers.utils.logging.set_verbosity(t_level)


@contextlib.contextmanager
def torch_semantics():
  """Within this block, diffusers Flax UNets follow the PyTorch model's numerics (and the
  libraries stay quiet)."""
  with quiet_libraries(), nn.intercept_methods(_interceptor):
    yield
