"""Deterministic DDIM sampling (Song et al. 2021, η = 0).

Symbols: ᾱ_t the training schedule; a denoiser gives (x̂_0, ε̂) at (x_t, t); x̂_0 is clipped to
[-1, 1] (pixel-space models) and ε̂ recomputed to match it; then x_{t'} = √ᾱ_{t'} x̂_0 +
√(1−ᾱ_{t'}) ε̂ for the next (smaller) timestep t', with ᾱ = 1 after the last step.
Timesteps are "trailing": t_i = ⌊(i+1)T/n⌋ − 1 for i = n−1, ..., 0, so the first step starts
from t = T − 1 (pure noise, as in training).

`eps_denoiser` adapts an ε-prediction model (x̂_0 = (x_t − √(1−ᾱ) ε̂)/√ᾱ, which amplifies
errors where ᾱ → 0); v-prediction models give x̂_0 = √ᾱ x_t − √(1−ᾱ) v̂ directly
(`v_denoiser`), well conditioned at every t.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Denoiser = Callable[[jax.Array, jax.Array], tuple]   # (x_t [B, ...], t [B]) -> (x̂_0, ε̂)


def _alpha(alphas, t, x):
  return jnp.asarray(alphas, jnp.float32)[t].reshape((-1,) + (1,) * (x.ndim - 1))


def eps_denoiser(eps_fn, alphas_cumprod) -> Denoiser:
  def denoise(x, t):
    a, eps = _alpha(alphas_cumprod, t, x), eps_fn(x, t)
    return (x - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a), eps
  return denoise


def v_denoiser(v_fn, alphas_cumprod) -> Denoiser:
  """v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022)."""
  def denoise(x, t):
    a, v = _alpha(alphas_cumprod, t, x), v_fn(x, t)
    return jnp.sqrt(a) * x - jnp.sqrt(1.0 - a) * v, jnp.sqrt(1.0 - a) * x + jnp.sqrt(a) * v
  return denoise


def timesteps(num_steps: int, num_train_timesteps: int) -> np.ndarray:
  """[n] int32 timesteps, descending, the first T − 1."""
  i = np.arange(num_steps)[::-1]
  return ((i + 1) * num_train_timesteps // num_steps - 1).astype(np.int32)


def sample(denoise: Denoiser, noise: jax.Array, alphas_cumprod, num_steps: int,
           clip: float | None = 1.0) -> jax.Array:
  """noise x_T [B, ...] -> x̂_0 [B, ...] after num_steps DDIM steps."""
  alphas = jnp.asarray(alphas_cumprod, jnp.float32)
  ts = jnp.asarray(timesteps(num_steps, alphas.shape[0]))
  prev = jnp.concatenate([alphas[ts[1:]], jnp.ones((1,), jnp.float32)])

  def step(x, inputs):
    t, a_prev = inputs
    a = alphas[t]
    x0, eps = denoise(x, jnp.full((x.shape[0],), t, jnp.int32))
    if clip is not None:
      x0 = jnp.clip(x0, -clip, clip)
      eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)   # ε consistent with the clipped x̂_0
    return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps, None

  x, _ = jax.lax.scan(step, noise, (ts, prev))
  return x
