"""Gradient checkpointing of diffusers' Flax UNet, block by block (PyTorch's
`unet.enable_gradient_checkpointing()`, which the reference turns on for both trained UNets).

`checkpointed(apply)` returns `apply` run inside a flax method interceptor that wraps every
ResNet block and spatial transformer in flax's lifted `nn.checkpoint`: the backward pass
keeps only the blocks' inputs and recomputes each block's activations when it reaches it.
Whether that lowers peak memory is for the compiler's scheduler to decide; the measured
effect is in benchmarks/RESULTS.md (`bsd_step.py --remat`).
"""

import functools

import flax.linen as nn
from diffusers.models import attention_flax, resnet_flax

BLOCKS = (resnet_flax.FlaxResnetBlock2D, attention_flax.FlaxTransformer2DModel)
_INSIDE = "_dc3d_inside_checkpoint"   # set on the lifted clone, so it is not wrapped twice


def _interceptor(next_fun, args, kwargs, context):
  module = context.module
  if (context.method_name != "__call__" or not isinstance(module, BLOCKS)
      or getattr(module, _INSIDE, False)):
    return next_fun(*args, **kwargs)

  def run(inner, *inner_args):
    object.__setattr__(inner, _INSIDE, True)    # flax modules are frozen dataclasses
    return inner(*inner_args, **kwargs)         # static kwargs (deterministic) stay Python
  return nn.checkpoint(run)(module, *args)


def checkpointed(apply):
  """`apply` (any function that calls a diffusers Flax UNet) with per-block remat."""
  @functools.wraps(apply)
  def wrapped(*args, **kwargs):
    with nn.intercept_methods(_interceptor):
      return apply(*args, **kwargs)
  return wrapped
