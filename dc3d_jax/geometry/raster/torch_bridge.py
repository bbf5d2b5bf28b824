"""Calling a PyTorch function from (jitted) JAX, differentiably, without host copies.

  op = torch_op(fn, result_shapes)      # fn(*torch tensors) -> tuple of float tensors
  outs = op(*arrays)                     # a tuple of jax arrays; jax.grad works through it

Forward and backward each run as a `jax.experimental.buffer_callback`: XLA hands the
callback its device buffers, torch views them through DLPack (zero-copy, on CPU and GPU),
runs there, and copies its results into XLA's output buffers (device to device). On a GPU
the torch work is queued on XLA's own CUDA stream (`ctx.stream`, wrapped in
torch.cuda.ExternalStream), so it is ordered with the surrounding XLA work with no sync.

The gradient is `jax.custom_vjp`: the backward callback re-runs fn under torch autograd on
the saved inputs and calls torch.autograd.grad with the cotangents. So no torch state lives
between the two calls (XLA may run them far apart, or in another process after a
checkpoint), at the price of one extra forward. Inputs of integer dtype get no gradient.
fn must be deterministic and must not keep references to its inputs.

torch is imported on first use only.
"""

import contextlib
import functools

import jax
import jax.numpy as jnp
from jax.experimental import buffer_callback

_DLPACK_CUDA = 2      # DLDeviceType kDLCUDA


def torch_op(fn, result_shapes):
  """fn(*tensors) -> tuple of float tensors; result_shapes(*arrays) -> tuple of
  jax.ShapeDtypeStruct (evaluated at trace time). Returns op(*arrays) -> tuple of arrays."""

  def forward(*args):
    return _call(functools.partial(_forward, fn), tuple(result_shapes(*args)), args)

  def backward(args, cotangents):
    diff = [i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.floating)]
    shapes = tuple(jax.ShapeDtypeStruct(args[i].shape, args[i].dtype) for i in diff)
    grads = _call(functools.partial(_backward, fn, diff, len(args)), shapes,
                  tuple(args) + tuple(cotangents))
    out = [None] * len(args)             # None: no cotangent (integer inputs)
    for i, g in zip(diff, grads):
      out[i] = g
    return tuple(out)

  op = jax.custom_vjp(forward)
  op.defvjp(lambda *args: (forward(*args), args), backward)
  return op


def _call(callback, shapes: tuple, args: tuple) -> tuple:
  # vmap runs the op once per batch element: fn sees the shapes it was written for.
  run = buffer_callback.buffer_callback(callback, shapes, vmap_method="sequential")
  return tuple(run(*args))


def _forward(fn, ctx, outs, *ins) -> None:
  import torch
  with _on_xla_stream(ctx, ins + tuple(outs)):
    tensors = [torch.from_dlpack(b) for b in ins]
    with torch.no_grad():
      results = fn(*tensors)
    for buf, value in zip(outs, results, strict=True):
      torch.from_dlpack(buf).copy_(value)


def _backward(fn, diff: list, n_args: int, ctx, grads, *ins) -> None:
  import torch
  with _on_xla_stream(ctx, ins + tuple(grads)):
    tensors = [torch.from_dlpack(b) for b in ins]
    args, cotangents = tensors[:n_args], tensors[n_args:]
    for i in diff:
      args[i] = args[i].detach().requires_grad_(True)
    with torch.enable_grad():
      results = fn(*args)
    pairs = [(r, c) for r, c in zip(results, cotangents, strict=True) if r.requires_grad]
    found = torch.autograd.grad([r for r, _ in pairs], [args[i] for i in diff],
                                [c for _, c in pairs], allow_unused=True) if pairs else None
    for k, buf in enumerate(grads):
      out = torch.from_dlpack(buf)
      if found is None or found[k] is None:
        out.zero_()
      else:
        out.copy_(found[k])


def _on_xla_stream(ctx, buffers):
  """Context that makes XLA's CUDA stream torch's current stream (nothing on CPU)."""
  device_type, index = buffers[0].__dlpack_device__()
  if device_type != _DLPACK_CUDA:
    return contextlib.nullcontext()
  import torch
  stream = torch.cuda.ExternalStream(ctx.stream, device=torch.device("cuda", index))
  return torch.cuda.stream(stream)
