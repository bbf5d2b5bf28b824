"""Pure-JAX backend: visibility outside autodiff, barycentrics and depth inside it.

The nearest covering triangle per pixel (visibility.py) is piecewise constant in the vertex
positions, so it is found on stop_gradient'ed inputs. The winning triangle's perspective-
correct barycentrics and depth are then recomputed from its vertices with plain jnp, which
is where interior gradients come from (as nvdiffrast's rasterize backward). Silhouette
gradients come from antialias.py.

Perspective correction (symbols in triangles.py): q_k = e_k · weight_k = b_k / w_k,
1/w(p) = Σ q_k, bary_k = q_k / Σ q_m and depth = 1 / Σ q_k.
"""

import jax
import jax.numpy as jnp

from dc3d_jax.geometry.raster import common, triangles, visibility

# search='auto' tests every pair while H·W·F is at most this (~0.25 s on one CPU core at
# ~4 ns a pair); the tiled search compiles ~3x slower (~5 s on the 2-core CI machine) but
# its cost follows the pairs whose bounding boxes overlap, not H·W·F.
BRUTE_FORCE_MAX_PAIRS = 2**26


def rasterize(clip: jax.Array, faces: jax.Array, height: int, width: int, *,
              search: str = "auto", max_pairs: int | None = None) -> common.RasterOut:
  """One view: clip [V, 4], faces [F, 3] int32 -> RasterOut with [H, W] images.

  search: 'brute', 'tiled' or 'auto' (brute while H·W·F ≤ BRUTE_FORCE_MAX_PAIRS).
  max_pairs: the tiled search's (tile, triangle) budget (visibility.tiled's default if None).
  """
  tri = triangles.setup(jnp.asarray(clip, jnp.float32), faces)
  frozen = jax.lax.stop_gradient(tri)
  if search == "auto":
    search = "brute" if height * width * faces.shape[0] <= BRUTE_FORCE_MAX_PAIRS else "tiled"
  if search == "brute":
    tri_id, overflow = visibility.brute_force(frozen, height, width), jnp.int32(0)
  elif search == "tiled":
    tri_id, overflow = visibility.tiled(frozen, height, width, max_pairs=max_pairs)
  else:
    raise ValueError(f"search must be 'auto', 'brute' or 'tiled', got {search!r}")
  bary, depth = _perspective_bary(tri, tri_id, height, width)
  return common.RasterOut(tri_id=tri_id, bary=bary, depth=depth, overflow=overflow)


def _perspective_bary(tri: dict, tri_id: jax.Array, height: int, width: int) -> tuple:
  """[H, W] ids -> ([H, W, 3] perspective-correct weights, [H, W] depth), 0 where empty."""
  px, py = common.pixel_centres_ndc(height, width)
  hit = tri_id >= 0
  idx = jnp.maximum(tri_id, 0)
  picked = {k: tri[k][:, idx] for k in ("x1", "y1", "dx", "dy", "weight")}   # [3, H, W]
  q = jnp.moveaxis(triangles.edges(picked, px, py) * picked["weight"], 0, -1)  # b_k / w_k
  inv_w = jnp.sum(q, axis=-1)
  # Guarded divisions: finite values and gradients at empty pixels too.
  inv_w_safe = jnp.where(hit & (inv_w > 0.0), inv_w, 1.0)
  bary = jnp.where(hit[..., None], q / inv_w_safe[..., None], 0.0)
  depth = jnp.where(hit, 1.0 / inv_w_safe, 0.0)
  return bary, depth


def interpolate(attr: jax.Array, faces: jax.Array, raster: common.RasterOut) -> jax.Array:
  """attr [V, C] (or [B, V, C] with a batched raster) -> [..., H, W, C], 0 where empty.

  Differentiable w.r.t. attr and, through raster.bary, the vertex positions.
  """
  if attr.ndim == 3:
    return jax.vmap(interpolate, in_axes=(0, None, 0))(attr, faces, raster)
  tri_id = raster.tri_id
  corners = jnp.asarray(faces, jnp.int32)[jnp.maximum(tri_id, 0)]      # [..., H, W, 3]
  values = jnp.asarray(attr)[corners]                                 # [..., H, W, 3, C]
  out = jnp.sum(raster.bary[..., None] * values, axis=-2)
  return jnp.where((tri_id >= 0)[..., None], out, 0.0)
