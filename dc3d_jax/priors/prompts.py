"""View-dependent prompts and Perp-Neg guidance for the 2D text prior (reference §3.1, §4).

Symbols: e the camera elevation and a its azimuth in degrees (a wrapped to (-180, 180]);
r ∈ [0, 1] the interpolation ratio between two direction prompts; ε_u, ε_p, ε_neg_i the
unconditional, positive and negative noise predictions; w_i ≤ 0 the negative weights; s the
guidance scale; ⊥(x, y) the component of x perpendicular to y. The guided predictions:
  classifier_free_guidance  ε̂ = ε_u + s(ε_c - ε_u)
  perp_neg_combine          ε̂ = ε_u + s[(ε_p - ε_u) + Σ_i w_i ⊥(ε_neg_i - ε_u, ε_p - ε_u)]
with the inner products of ⊥ taken per batch item (perpendicular).

Directions index the rows of the prior's embedding table: DIRECTIONS in order, then UNCOND
(the negative prompt, "" by default). `view_context` turns cameras into the UNet's context rows
and `guided_noise` the UNet's ε of those rows into ε̂; every text prior (Stable Diffusion,
DeepFloyd IF) uses both.

Boundary conventions (strict inequalities, as the reference's prompt processor):
  front    |a| < front_threshold
  back     |a| > 180 - back_threshold
  overhead e > overhead_threshold
  side     everything else.
Later rules override earlier ones (side < front < back < overhead), so a view above the
overhead threshold is overhead whatever its azimuth, and |a| = front_threshold is side.
"""

import jax
import jax.numpy as jnp

DIRECTIONS = ("side", "front", "back", "overhead")
SIDE, FRONT, BACK, OVERHEAD = range(4)
UNCOND = len(DIRECTIONS)            # row of the negative prompt in the embedding table

# Perp-Neg's shifted exponential decays a·exp(-0.5 r) + c (reference §3.1).
_FRONT_SIDE = (4.0, -2.426)         # both negatives of the front half
_BACK_SIDE = (1.0, -0.606)          # the side negative of the back half
_BACK_FRONT = (1.0, 0.967)          # the front negative of the back half


def directional_prompts(prompt: str) -> tuple:
  """The four prompts of DIRECTIONS: "<prompt>, side view", ..., "<prompt>, overhead view"."""
  return tuple(f"{prompt}, {d} view" for d in DIRECTIONS)


def abs_azimuth(azimuth_deg: jax.Array) -> jax.Array:
  """|a| after wrapping a to (-180, 180], so 180 and -180 (and 540) agree."""
  a = jnp.asarray(azimuth_deg, jnp.float32)
  return jnp.abs(a - 360.0 * jnp.ceil((a - 180.0) / 360.0))


def view_direction(elevation_deg, azimuth_deg, *, front_threshold: float = 45.0,
                   back_threshold: float = 45.0, overhead_threshold: float = 60.0) -> jax.Array:
  """[...] e, a in degrees -> [...] int32 index into DIRECTIONS (conventions above)."""
  abs_a = abs_azimuth(azimuth_deg)
  e = jnp.asarray(elevation_deg, jnp.float32)
  index = jnp.full(jnp.broadcast_shapes(abs_a.shape, e.shape), SIDE, jnp.int32)
  index = jnp.where(abs_a < front_threshold, FRONT, index)
  index = jnp.where(abs_a > 180.0 - back_threshold, BACK, index)
  return jnp.where(e > overhead_threshold, OVERHEAD, index).astype(jnp.int32)


def _decay(coeffs, r: jax.Array) -> jax.Array:
  scale, shift = coeffs
  return scale * jnp.exp(-0.5 * r) + shift


def perp_neg_terms(elevation_deg, azimuth_deg, overhead_threshold: float = 60.0):
  """[B] e, a -> (pos_mix [B, 4], neg_index [B, 2] int32, neg_weight [B, 2]).

  pos_mix: coefficients over DIRECTIONS of the interpolated positive embedding.
  neg_index: rows of the embedding table (DIRECTIONS + UNCOND) of the two negatives.
  Overhead (e > threshold): positive = overhead, negatives = UNCOND with weight 0.
  |a| < 90: r = 1 - |a|/90, positive = r·front + (1-r)·side, negatives front with
    w = -(4e^(-0.5r) - 2.426) and side with w = -(4e^(-0.5(1-r)) - 2.426).
  Otherwise: r = 2 - |a|/90, positive = r·side + (1-r)·back, negatives side with
    w = -(e^(-0.5r) - 0.606) and front with w = -(e^(-0.5r) + 0.967).
  """
  abs_a = abs_azimuth(azimuth_deg)
  overhead = jnp.asarray(elevation_deg, jnp.float32) > overhead_threshold
  in_front = abs_a < 90.0
  r = jnp.where(in_front, 1.0 - abs_a / 90.0, 2.0 - abs_a / 90.0)
  zero = jnp.zeros_like(r)
  front_mix = jnp.stack([1.0 - r, r, zero, zero], -1)
  back_mix = jnp.stack([r, zero, 1.0 - r, zero], -1)
  overhead_mix = jnp.broadcast_to(jnp.eye(4)[OVERHEAD], front_mix.shape)
  pos_mix = jnp.where(overhead[..., None], overhead_mix,
                      jnp.where(in_front[..., None], front_mix, back_mix))
  front_w = jnp.stack([-_decay(_FRONT_SIDE, r), -_decay(_FRONT_SIDE, 1.0 - r)], -1)
  back_w = jnp.stack([-_decay(_BACK_SIDE, r), -_decay(_BACK_FRONT, r)], -1)
  neg_weight = jnp.where(overhead[..., None], 0.0,
                         jnp.where(in_front[..., None], front_w, back_w))
  neg_index = jnp.where(in_front[..., None], jnp.array([FRONT, SIDE]), jnp.array([SIDE, FRONT]))
  neg_index = jnp.where(overhead[..., None], UNCOND, neg_index).astype(jnp.int32)
  return pos_mix, neg_index, neg_weight


def _batch_dot(x: jax.Array, y: jax.Array) -> jax.Array:
  """[B, ...] x, y -> [B, 1, ..., 1] per-item inner product over all non-batch axes."""
  axes = tuple(range(1, x.ndim))
  return jnp.sum(x * y, axis=axes, keepdims=True)


def perpendicular(x: jax.Array, y: jax.Array) -> jax.Array:
  """⊥(x, y) = x - (⟨x,y⟩ / max(⟨y,y⟩, 1e-6))·y, per batch item."""
  return x - _batch_dot(x, y) / jnp.maximum(_batch_dot(y, y), 1e-6) * y


def classifier_free_guidance(eps_uncond: jax.Array, eps_cond: jax.Array, scale) -> jax.Array:
  """ε̂ = ε_u + s·(ε_c - ε_u)."""
  return eps_uncond + scale * (eps_cond - eps_uncond)


def perp_neg_combine(eps_uncond: jax.Array, eps_pos: jax.Array, eps_negs: jax.Array,
                     neg_weights: jax.Array, scale) -> jax.Array:
  """[B, ...] ε_u, ε_p, [B, N, ...] ε_neg, [B, N] w -> [B, ...]
  ε̂ = ε_u + s·[(ε_p - ε_u) + Σ_i w_i·⊥(ε_neg_i - ε_u, ε_p - ε_u)]."""
  e_pos = eps_pos - eps_uncond
  tail = (1,) * (eps_pos.ndim - 1)
  total = e_pos
  for i in range(eps_negs.shape[1]):
    w = neg_weights[:, i].reshape((-1,) + tail)
    total = total + w * perpendicular(eps_negs[:, i] - eps_uncond, e_pos)
  return eps_uncond + scale * total


def view_context(table: jax.Array, elevation_deg, azimuth_deg, *, perp_neg: bool,
                 front_threshold: float, back_threshold: float,
                 overhead_threshold: float) -> dict:
  """[5, L, D] table (DIRECTIONS + UNCOND), [B] views -> {"context": [k·B, L, D]} with rows
  [cond, uncond] (k = 2), or with Perp-Neg rows [pos, uncond, neg_1, neg_2] (k = 4) plus
  "neg_weight" [B, 2]; each row block holds the B views in order."""
  e = jnp.asarray(elevation_deg, jnp.float32)
  uncond = jnp.broadcast_to(table[UNCOND], e.shape + table.shape[1:])
  if not perp_neg:
    index = view_direction(e, azimuth_deg, front_threshold=front_threshold,
                           back_threshold=back_threshold, overhead_threshold=overhead_threshold)
    return {"context": jnp.concatenate([table[index], uncond], 0)}
  pos_mix, neg_index, neg_weight = perp_neg_terms(e, azimuth_deg, overhead_threshold)
  pos = jnp.einsum("bk,kld->bld", pos_mix, table[:len(DIRECTIONS)].astype(jnp.float32))
  negs = table[neg_index]
  context = jnp.concatenate([pos.astype(table.dtype), uncond, negs[:, 0], negs[:, 1]], 0)
  return {"context": context, "neg_weight": neg_weight}


def guided_noise(eps: jax.Array, cond: dict, *, perp_neg: bool, scale) -> jax.Array:
  """[k·B, ...] ε of the rows of `view_context` -> [B, ...] ε̂ (CFG, or Perp-Neg)."""
  k = 4 if perp_neg else 2
  branches = eps.reshape((k, eps.shape[0] // k) + eps.shape[1:])
  if not perp_neg:
    return classifier_free_guidance(branches[1], branches[0], scale)
  negs = jnp.moveaxis(branches[2:], 0, 1)                      # [B, 2, ...]
  return perp_neg_combine(branches[1], branches[0], negs, cond["neg_weight"], scale)


class ViewPromptedPrior:
  """The condition / predict_noise half of the Prior protocol (guidance/sds.py) for a text
  prior with view-dependent prompts (Stable Diffusion, DeepFloyd IF). The class using it has
  the fields guidance_scale, perp_neg, front/back/overhead_threshold, params["embeddings"]
  (the [5, L, D] table) and raw_noise(params, x_t [N, ...], t [N], context [N, L, D]) -> ε."""

  def condition(self, params, cameras) -> dict:
    """[B] cameras -> view_context rows ([cond, uncond], or Perp-Neg's four)."""
    return view_context(params["embeddings"], cameras.elevation_deg, cameras.azimuth_deg,
                        perp_neg=self.perp_neg, front_threshold=self.front_threshold,
                        back_threshold=self.back_threshold,
                        overhead_threshold=self.overhead_threshold)

  def predict_noise(self, params, x_t: jax.Array, t: jax.Array, cond: dict) -> jax.Array:
    """[B, ...] x_t, [B] t -> guided ε̂ [B, ...]; one raw_noise call on all k·B rows."""
    b = x_t.shape[0]
    k = cond["context"].shape[0] // b
    steps = jnp.tile(jnp.broadcast_to(jnp.asarray(t), (b,)), k)
    eps = self.raw_noise(params, jnp.tile(x_t, (k,) + (1,) * (x_t.ndim - 1)), steps,
                         cond["context"])
    return guided_noise(eps, cond, perp_neg=self.perp_neg, scale=self.guidance_scale)
