"""DPM-Solver++(2M) sampling on a discrete DDPM grid: diffusers' DPMSolverMultistepScheduler
with its defaults (dpmsolver++, order 2, midpoint, "linspace" spacing, final σ = 0), in JAX.

Symbols: ᾱ_t the training schedule; α_t = √ᾱ_t, σ_t = √(1 - ᾱ_t), λ_t = log(α_t / σ_t).
An n-step grid is t_0 > t_1 > ... > t_{n-1} (round(linspace(0, T-1, n+1)) reversed, last
dropped) followed by a final point with σ = 0, α = 1. From x at t_i with guided noise ε̂:
  D_i = (x - σ_i ε̂) / α_i                                  the data (x_0) prediction
  h = λ_{i+1} - λ_i
  1st order:  x' = (σ_{i+1}/σ_i) x - α_{i+1}(e^{-h} - 1) D_i
  2nd order:  x' = 1st order - ½ α_{i+1}(e^{-h} - 1) (D_i - D_{i-1}) / r,  r = (λ_i - λ_{i-1})/h
The first step taken (no D_{i-1} yet) and the last one (σ = 0, so x' = D_i) are 1st order,
as diffusers' `lower_order_nums` and `lower_order_final`.

Img2img from a clean x_0 (reference §4 augmentation): noise to t_s with s = n - clip(⌊n·t'/T⌋,
1, n) (diffusers' img2img start for strength t'/T), x = α_s x_0 + σ_s ε, then steps s..n-1.
Masked sampling (DS's variant, §10): every step uses m·ε̂ + (1 - m)·ε with the ε that noised
x_0, so where m = 0 the sample follows x_0's own noising path back to x_0 exactly.
"""

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


class SolverGrid(NamedTuple):
  """timesteps: [n] int32 (descending); alpha, sigma, lam: [n + 1] float32 (last: the σ = 0
  end point, whose λ = +inf is stored as 0 and never read)."""
  timesteps: jax.Array
  alpha: jax.Array
  sigma: jax.Array
  lam: jax.Array


def grid(alphas_cumprod: np.ndarray, num_steps: int) -> SolverGrid:
  """The n-step "linspace" grid of a [T] ᾱ table (diffusers' set_timesteps)."""
  steps = len(alphas_cumprod)
  t = np.linspace(0, steps - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64)
  a = np.asarray(alphas_cumprod, np.float64)[t]
  alpha = np.concatenate([np.sqrt(a), [1.0]])
  sigma = np.concatenate([np.sqrt(1.0 - a), [0.0]])
  lam = np.concatenate([np.log(alpha[:-1]) - np.log(sigma[:-1]), [0.0]])
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  return SolverGrid(jnp.asarray(t, jnp.int32), f32(alpha), f32(sigma), f32(lam))


def start_index(t_prime, num_steps: int, num_train_steps: int = 1000):
  """Grid index where img2img from noise level t' (integer step, traced or not) starts:
  n - clip(⌊n·t'/T⌋, 1, n). t' = 500 on 25 steps -> 13 (12 steps); t' = 200 -> 20 (5)."""
  taken = jnp.clip((num_steps * jnp.asarray(t_prime, jnp.int32)) // num_train_steps,
                   1, num_steps)
  return num_steps - taken


def add_noise(g: SolverGrid, x0: jax.Array, noise: jax.Array, index) -> jax.Array:
  """x at grid point `index`: α x0 + σ ε."""
  return g.alpha[index] * x0 + g.sigma[index] * noise


def _step(g: SolverGrid, i, x, d, d_prev, has_prev):
  """One solver step from grid point i to i + 1 (see the module docstring)."""
  last = i == g.timesteps.shape[0] - 1
  h = g.lam[i + 1] - g.lam[i]
  h = jnp.where(last, 1.0, h)                       # finite stand-in; the result is D_i
  ratio = g.sigma[i + 1] / g.sigma[i]
  em1 = jnp.expm1(-h)
  first = ratio * x - g.alpha[i + 1] * em1 * d
  r = jnp.where(has_prev, (g.lam[i] - g.lam[jnp.maximum(i - 1, 0)]) / h, 1.0)
  second = first - 0.5 * g.alpha[i + 1] * em1 * (d - d_prev) / r
  return jnp.where(last, d, jnp.where(has_prev, second, first))


def sample(eps_fn: Callable[[jax.Array, jax.Array], jax.Array], g: SolverGrid,
           x: jax.Array, start, *, mask: Optional[jax.Array] = None,
           noise: Optional[jax.Array] = None) -> jax.Array:
  """Runs steps start..n-1 from x at grid point `start` (int, may be traced) -> x_0.

  eps_fn(x_t [B, h, w, c], t [B] int32) -> guided ε̂ (CFG inside). mask [B, h, w, 1] in [0, 1]
  with noise [B, h, w, c] (the ε that made x) gives DS's masked sampling. Computes in float32.
  """
  if (mask is None) != (noise is None):
    raise ValueError("dpm_solver.sample: masked sampling needs both mask and noise")
  x = x.astype(jnp.float32)

  def body(i, carry):
    x, d_prev, has_prev = carry
    t = jnp.broadcast_to(g.timesteps[i], (x.shape[0],))
    eps = eps_fn(x, t).astype(jnp.float32)
    if mask is not None:
      eps = mask * eps + (1.0 - mask) * noise
    d = (x - g.sigma[i] * eps) / g.alpha[i]
    return _step(g, i, x, d, d_prev, has_prev), d, jnp.bool_(True)

  carry = (x, jnp.zeros_like(x), jnp.bool_(False))
  return jax.lax.fori_loop(start, g.timesteps.shape[0], body, carry)[0]
