"""Reference-view losses and regularizers, each a small named function (reference §3).

Images are [..., H, W, C] in [0, 1]; masks [..., H, W, 1]. Packed per-sample arrays are [K]
with a `live` mask marking the real samples. Every function returns an unweighted scalar; the
stage weights it by the config key of the same name.
"""

import jax
import jax.numpy as jnp

from dc3d_jax.core import numerics


def rgb(pred: jax.Array, gt: jax.Array, mask: jax.Array, background: float = 1.0) -> jax.Array:
  """MSE against the reference composited over the render's background."""
  target = gt * mask + background * (1.0 - mask)
  return jnp.mean((pred - target) ** 2)


def mask(opacity: jax.Array, gt_mask: jax.Array) -> jax.Array:
  return jnp.mean((opacity - gt_mask) ** 2)


def depth_rel(depth: jax.Array, gt_depth: jax.Array, gt_mask: jax.Array) -> jax.Array:
  """1 - Pearson correlation of rendered and reference depth inside the mask."""
  w = gt_mask / jnp.maximum(jnp.sum(gt_mask), 1.0)
  mp, mg = jnp.sum(w * depth), jnp.sum(w * gt_depth)
  dp, dg = depth - mp, gt_depth - mg
  cov = jnp.sum(w * dp * dg)
  var = jnp.sum(w * dp * dp) * jnp.sum(w * dg * dg)
  return 1.0 - cov / numerics.safe_sqrt(var)


def normal_smooth_2d(comp_normal: jax.Array) -> jax.Array:
  """Mean squared finite differences of the normal image along H and along W."""
  dh = comp_normal[..., 1:, :, :] - comp_normal[..., :-1, :, :]
  dw = comp_normal[..., :, 1:, :] - comp_normal[..., :, :-1, :]
  return jnp.mean(dh ** 2) + jnp.mean(dw ** 2)


def _masked_mean(values: jax.Array, live: jax.Array) -> jax.Array:
  live = live.astype(values.dtype)
  return jnp.sum(values * live) / jnp.maximum(jnp.sum(live), 1.0)


def normal_smooth_3d(normal: jax.Array, normal_perturb: jax.Array, live: jax.Array):
  """Mean |n(x) - n(x + ε)| over live samples (ε ~ N(0, 0.01²))."""
  return _masked_mean(jnp.mean(jnp.abs(normal - normal_perturb), axis=-1), live)


def orientation(weights, normal, dirs, live, opacity) -> jax.Array:
  """Σ sg(w)·max(0, n·d)² / #(pixels with opacity > 0): normals should face the camera."""
  facing_away = jnp.maximum(jnp.sum(normal * dirs, axis=-1), 0.0) ** 2
  total = jnp.sum(jax.lax.stop_gradient(weights) * facing_away * live)
  return total / jnp.maximum(jnp.sum(opacity > 0), 1)


def sparsity(opacity: jax.Array) -> jax.Array:
  return jnp.mean(jnp.sqrt(opacity ** 2 + 0.01))


def opaque(opacity: jax.Array) -> jax.Array:
  """Binary entropy of the opacity, pushing it to 0 or 1."""
  return jnp.mean(numerics.binary_entropy(opacity, eps=1e-3))


def eikonal(sdf_grad: jax.Array, live: jax.Array) -> jax.Array:
  """Mean (|∇f| - 1)² over live samples: an SDF has unit gradient."""
  return _masked_mean((numerics.safe_norm(sdf_grad) - 1.0) ** 2, live)


def eroded_mask(mask: jax.Array, pixels: int = 4) -> jax.Array:
  """[..., H, W, 1] 0/1 mask eroded by `pixels`: 1 - maxpool_{(2p+1)²}(1 - m), with the image
  outside counted as foreground (the reference's max_pool2d(1 - m, 9, 1, padding=4) pads with
  -inf)."""
  if pixels <= 0:
    return mask
  size = 2 * pixels + 1
  window = (1,) * (mask.ndim - 3) + (size, size, 1)
  pooled = jax.lax.reduce_window(1.0 - mask, -jnp.inf, jax.lax.max, window,
                                 (1,) * mask.ndim, "SAME")
  return 1.0 - pooled


def rgb_l1_eroded(pred: jax.Array, gt: jax.Array, mask: jax.Array, background: float = 1.0,
                  erode: int = 4) -> jax.Array:
  """The texture stage's reference loss (reference §3): mean |pred - target|·m_e over all
  pixels and channels, target = gt over the background, m_e the mask eroded by `erode` px."""
  target = gt * mask + background * (1.0 - mask)
  return jnp.mean(jnp.abs(pred - target) * eroded_mask(mask, erode))
