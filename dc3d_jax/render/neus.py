"""NeuS volume rendering of a signed distance field (reference §1b, §10; NeuS, Wang et al. 2021).

Symbols: f the SDF (negative inside), s = inv_std the learned sharpness, Φ_s(x) = sigmoid(s·x),
Δ the render step, d the unit ray direction, n = ∇f/|∇f| the normal at a sample's midpoint,
r the cosine-anneal ratio.

A sample at the midpoint of [t_i, t_i + Δ] estimates f at both ends from its midpoint value
and the annealed cosine c:
  c = -(relu((1 - d·n)/2)·(1 - r) + relu(-d·n)·r)       (always ≤ 0)
  f_prev = f - c·Δ/2,  f_next = f + c·Δ/2
  α = clip((Φ_s(f_prev) - Φ_s(f_next) + 1e-5) / (Φ_s(f_prev) + 1e-5), 0, 1)
At r = 1, c = min(d·n, 0): for a plane this α is exact, 1 - exp(-∫ ρ dt) with NeuS's opaque
density ρ = max(-(dΦ_s(f)/dt) / Φ_s(f), 0). At r = 0, c = -(1 - d·n)/2 keeps rays that leave
a surface (d·n > 0) contributing early in training. r = min(1, step / anneal_end)
(core/schedules.cos_anneal_ratio).

Occupancy and pruning (reference §10): the grid and the pre-pass use the simplified alpha with
c = -1 (no normal needed), α̂ = clip((Φ_s(f + Δ/2) - Φ_s(f - Δ/2) + 1e-5) / (Φ_s(f + Δ/2) +
1e-5), 0, 1); samples with α̂ < 0.01 are pruned. Sampling, packing and compositing are
render/volume.py's; only α differs from NeRF.
"""

import jax
import jax.numpy as jnp

from dc3d_jax.core import numerics
from dc3d_jax.core.types import Rays
from dc3d_jax.render import occupancy, volume

ALPHA_EPS = 1e-5   # the reference's guard in (p + ε)/(c + ε)


def section_alpha(sdf: jax.Array, cos: jax.Array, step_size: float, inv_std) -> jax.Array:
  """α of a section of length Δ whose midpoint SDF is `sdf` and SDF slope along the ray `cos`
  (≤ 0 means approaching the surface). [N], [N] or scalar -> [N] in [0, 1]."""
  prev_cdf = jax.nn.sigmoid((sdf - cos * step_size * 0.5) * inv_std)
  next_cdf = jax.nn.sigmoid((sdf + cos * step_size * 0.5) * inv_std)
  return jnp.clip((prev_cdf - next_cdf + ALPHA_EPS) / (prev_cdf + ALPHA_EPS), 0.0, 1.0)


def annealed_cos(true_cos: jax.Array, ratio) -> jax.Array:
  """-(relu((1 - cos)/2)·(1 - r) + relu(-cos)·r): r = 0 -> -(1 - cos)/2, r = 1 -> min(cos, 0)."""
  return -(jax.nn.relu(0.5 - 0.5 * true_cos) * (1.0 - ratio) + jax.nn.relu(-true_cos) * ratio)


def neus_alpha(sdf, normal, dirs, step_size: float, inv_std, cos_anneal_ratio) -> jax.Array:
  """The rendering α of samples [N] with unit normals and ray directions [N, 3]."""
  true_cos = jnp.sum(dirs * normal, axis=-1)
  return section_alpha(sdf, annealed_cos(true_cos, cos_anneal_ratio), step_size, inv_std)


def occupancy_alpha(sdf: jax.Array, step_size: float, inv_std) -> jax.Array:
  """The simplified α (cos = -1) of the occupancy grid and the pruning pre-pass."""
  return section_alpha(sdf, -1.0, step_size, inv_std)


def render_rays(field_fn: volume.FieldFn, sdf_fn: volume.DensityFn, rays: Rays,
                grid: occupancy.OccupancyGrid, settings: volume.VolumeSettings, inv_std,
                cos_anneal_ratio, key, *, normals: str = "normal",
                budget: int | None = None) -> dict:
  """Renders flat rays [R] of an SDF. field_fn: [N,3] -> (f [N], rgb [N,3]); sdf_fn: [N,3] ->
  f [N]; inv_std: scalar s (gradients flow to it through the rendering α only).
  normals: "normal" | "normal_perturb" (the normal is always needed for α).

  Returns volume.composite's outputs plus comp_normal [R,3], per-sample `normal` [K,3]
  (∇f/|∇f|, forward differences), `sdf_grad` [K,3] (∇f, for the eikonal term) and with
  "normal_perturb" the normal at a jittered point.
  """
  k_strat, k_perturb = jax.random.split(key)
  n_rays, step = rays.origins.shape[0], settings.step_size
  prune_std = jax.lax.stop_gradient(inv_std)
  alpha_fn = lambda x: occupancy_alpha(sdf_fn(x), step, prune_std)
  t_mid, ray, sample, live, kept_frac = volume.select_samples(
      alpha_fn, rays, grid, settings, k_strat, budget or settings.budget(n_rays))
  t, dirs, points = volume.packed_points(rays, t_mid, ray, sample)
  sdf, rgb = field_fn(points)
  grad_fn = lambda x, f: volume.finite_difference_gradient(sdf_fn, x, f, settings.normal_eps,
                                                           settings.radius)
  sdf_grad = grad_fn(points, sdf)
  normal = numerics.safe_normalize(sdf_grad)
  alpha = neus_alpha(sdf, normal, dirs, step, inv_std, cos_anneal_ratio)
  weights = volume.weights_from_alpha(alpha, ray, live, settings.num_steps_diagonal)
  out = volume.composite(weights, rgb, t, dirs, live, ray, n_rays, kept_frac,
                         settings.background)
  normal_fn = lambda x: numerics.safe_normalize(grad_fn(x, sdf_fn(x)))
  out.update(volume.normal_outputs(normal, normal_fn, points, weights, ray, out["opacity"],
                                   settings, k_perturb, with_perturb=normals == "normal_perturb"))
  out["sdf_grad"] = sdf_grad
  return out
