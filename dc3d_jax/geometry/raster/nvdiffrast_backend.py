"""nvdiffrast backend: its CUDA rasterize, interpolate and antialias, called from JAX.

Each op is a torch_bridge.torch_op (custom_vjp around buffer callbacks, zero-copy DLPack,
torch on XLA's CUDA stream), so it runs inside jitted steps with no host copy and its
gradients are nvdiffrast's own. nvdiffrast comes from PyPI's `diffrp-nvdiffrast==0.3.3.1`,
which compiles its CUDA plugin through torch.utils.cpp_extension on first use (a minute or
two; needs CUDA torch and nvcc). torch and nvdiffrast are imported only when an op runs, so
a CPU install needs neither.

Conventions are translated so both backends agree (common.py): nvdiffrast stores images
bottom row first (its row 0 is NDC y = -1), so clip y is negated on the way in and its
images then come out top row first. That mirror flips the winding, which nothing here
depends on (no culling; the antialias silhouette test compares orientations). Its output
(u, v, z/w, id + 1) becomes tri_id = id, bary = (u, v, 1 - u - v) and depth = the
perspective-correct interpolation of clip w (exact: w is affine on the triangle).

Memory: JAX preallocates 75% of a GPU by default, leaving torch (nvdiffrast's buffers) too
little. The first backend check (`missing`, from rasterize.resolve_backend) turns that off if
JAX has not started its GPU backend yet, so a run should resolve its backend before making
any array; later it can only warn (README: "Rasterizer backends").
"""

import functools
import importlib.util
import logging
import os

import jax
import jax.numpy as jnp

from dc3d_jax import errors
from dc3d_jax.geometry.raster import common, torch_bridge

PACKAGE = "diffrp-nvdiffrast==0.3.3.1"
_contexts = {}        # CUDA device index -> nvdiffrast RasterizeCudaContext (a resource handle)


def missing() -> str | None:
  """Why the nvdiffrast backend cannot run here, or None if it can."""
  if importlib.util.find_spec("nvdiffrast") is None:
    return f"the nvdiffrast package is not installed (pip install {PACKAGE})"
  share_gpu_memory()                     # before jax.devices() starts the GPU backend
  if not any(d.platform == "gpu" for d in jax.devices()):
    return "JAX sees no GPU"
  import torch
  if not torch.cuda.is_available():
    return f"torch {torch.__version__} has no CUDA device (a CUDA build of torch is needed)"
  return None


def require() -> None:
  """Raises ConfigError naming what is missing."""
  reason = missing()
  if reason is not None:
    raise errors.ConfigError(
        f"rasterizer backend 'nvdiffrast' (config key render.rasterizer) cannot run: "
        f"{reason}. Use 'jax' (any device) or 'auto' (nvdiffrast where it can run).")


def share_gpu_memory() -> None:
  """Lets torch allocate beside JAX: turns JAX's preallocation off if JAX has not started its
  backends yet and the user chose no allocator setting; warns if JAX already holds 75% of a
  GPU. Only called where nvdiffrast is installed."""
  chosen = {"XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
            "XLA_PYTHON_CLIENT_ALLOCATOR"} & set(os.environ)
  if chosen:
    return
  from jax._src import xla_bridge       # no public query for "already started" exists
  if not xla_bridge.backends_are_initialized():
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  elif any(d.platform == "gpu" for d in jax.devices()):
    _warn_preallocated()


@functools.cache                         # once per process
def _warn_preallocated() -> None:
  logging.getLogger(__name__).warning(
      "JAX started before the nvdiffrast backend and preallocated 75% of the GPU; set "
      "XLA_PYTHON_CLIENT_PREALLOCATE=false (or XLA_PYTHON_CLIENT_MEM_FRACTION) before "
      "starting Python so torch can allocate too.")


def _context(device):
  import nvdiffrast.torch as dr
  if device.index not in _contexts:
    _contexts[device.index] = dr.RasterizeCudaContext(device=device)
  return _contexts[device.index]


def _torch_rasterize(height, width, pos, tri):
  import nvdiffrast.torch as dr
  rast, _ = dr.rasterize(_context(pos.device), pos.contiguous(), tri.contiguous(),
                         (height, width), grad_db=False)
  return (rast,)


def _torch_interpolate(attr, rast, tri):
  import nvdiffrast.torch as dr
  return (dr.interpolate(attr.contiguous(), rast.contiguous(), tri.contiguous())[0],)


def _torch_antialias(color, rast, pos, tri):
  import nvdiffrast.torch as dr
  return (dr.antialias(color.contiguous(), rast.contiguous(), pos.contiguous(),
                       tri.contiguous()),)


@functools.cache
def _ops(height: int, width: int) -> dict:
  like = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype)
  return dict(
      rasterize=torch_bridge.torch_op(
          functools.partial(_torch_rasterize, height, width),
          lambda pos, tri: (like((pos.shape[0], height, width, 4)),)),
      interpolate=torch_bridge.torch_op(
          _torch_interpolate, lambda attr, rast, tri: (like(rast.shape[:3] + attr.shape[-1:]),)),
      antialias=torch_bridge.torch_op(_torch_antialias, lambda color, *_: (like(color.shape),)))


def _to_nvdiffrast(clip: jax.Array) -> jax.Array:
  """[B, V, 4] clip with y negated: nvdiffrast's row 0 then is our top row."""
  return jnp.asarray(clip, jnp.float32) * jnp.array([1.0, -1.0, 1.0, 1.0], jnp.float32)


def _triangle_ids(channel: jax.Array) -> jax.Array:
  """nvdiffrast's float id + 1 -> int32 id, -1 where empty (ids above 2^24 are stored as
  the float's bit pattern offset by 0x4a800000)."""
  as_int = jax.lax.bitcast_convert_type(channel, jnp.int32) - 0x4A800000
  return jnp.where(channel <= 16777216.0, channel.astype(jnp.int32), as_int) - 1


def rasterize(clip: jax.Array, faces: jax.Array, height: int, width: int) -> common.RasterOut:
  """clip [V, 4] or [B, V, 4], faces [F, 3] -> RasterOut (see common.py)."""
  require()
  batched = clip.ndim == 3
  clip = clip if batched else clip[None]
  faces = jnp.asarray(faces, jnp.int32)
  (rast,) = _ops(height, width)["rasterize"](_to_nvdiffrast(clip), faces)
  tri_id = _triangle_ids(jax.lax.stop_gradient(rast[..., 3]))
  hit = (tri_id >= 0)[..., None]
  u, v = rast[..., 0:1], rast[..., 1:2]
  bary = jnp.where(hit, jnp.concatenate([u, v, 1.0 - u - v], -1), 0.0)
  w = jax.vmap(lambda c, i: c[:, 3][faces[jnp.maximum(i, 0)]])(clip, tri_id)   # [B, H, W, 3]
  depth = jnp.sum(bary * w, -1)
  out = common.RasterOut(tri_id=tri_id, bary=bary, depth=depth,
                         overflow=jnp.zeros(clip.shape[0], jnp.int32), native=rast,
                         backend="nvdiffrast")
  return out if batched else jax.tree_util.tree_map(lambda a: a[0], out)


def interpolate(attr: jax.Array, faces: jax.Array, raster: common.RasterOut) -> jax.Array:
  """attr [V, C] or [B, V, C] -> [..., H, W, C] (nvdiffrast's interpolate), 0 where empty."""
  batched = raster.native.ndim == 4
  rast = raster.native if batched else raster.native[None]
  (out,) = _ops(*rast.shape[1:3])["interpolate"](
      jnp.asarray(attr, jnp.float32), rast, jnp.asarray(faces, jnp.int32))
  out = jnp.where((rast[..., 3] > 0.0)[..., None], out, 0.0)
  return out if batched else out[0]


def antialias(color: jax.Array, raster: common.RasterOut, clip: jax.Array,
              faces: jax.Array) -> jax.Array:
  """color [..., H, W, C], clip as rasterized -> nvdiffrast's antialiased color."""
  batched = raster.native.ndim == 4
  rast = raster.native if batched else raster.native[None]
  pos = _to_nvdiffrast(clip if clip.ndim == 3 else clip[None])
  color = jnp.asarray(color, jnp.float32)
  (out,) = _ops(*rast.shape[1:3])["antialias"](
      color if batched else color[None], jax.lax.stop_gradient(rast), pos,
      jnp.asarray(faces, jnp.int32))
  return out if batched else out[0]
