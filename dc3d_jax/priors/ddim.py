"""Deterministic DDIM sampling (Song et al. 2021, η = 0) for an ε-prediction model.

Symbols: ᾱ_t the training schedule; x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t, clipped to [-1, 1]
(pixel-space models); x_{t'} = √ᾱ_{t'} x̂_0 + √(1−ᾱ_{t'}) ε̂ for the next (smaller) timestep
t', with ᾱ = 1 after the last step. Timesteps are "trailing": t_i = ⌊(i+1)T/n⌋ − 1 for
i = n−1, ..., 0, so the first step starts from t = T − 1 (pure noise, as in training).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def timesteps(num_steps: int, num_train_timesteps: int) -> np.ndarray:
  """[n] int32 timesteps, descending, the first T − 1."""
  i = np.arange(num_steps)[::-1]
  return ((i + 1) * num_train_timesteps // num_steps - 1).astype(np.int32)


def sample(eps_fn: Callable[[jax.Array, jax.Array], jax.Array], noise: jax.Array,
           alphas_cumprod, num_steps: int, clip: float | None = 1.0) -> jax.Array:
  """eps_fn(x_t [B, ...], t [B]) -> ε̂; noise x_T [B, ...] -> x̂_0 [B, ...] after num_steps."""
  alphas = jnp.asarray(alphas_cumprod, jnp.float32)
  ts = jnp.asarray(timesteps(num_steps, alphas.shape[0]))
  prev = jnp.concatenate([alphas[ts[1:]], jnp.ones((1,), jnp.float32)])

  def step(x, inputs):
    t, a_prev = inputs
    a = alphas[t]
    eps = eps_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
    x0 = (x - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)
    x0 = x0 if clip is None else jnp.clip(x0, -clip, clip)
    eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)    # ε consistent with the clipped x̂_0
    return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps, None

  x, _ = jax.lax.scan(step, noise, (ts, prev))
  return x
