"""Score distillation sampling (SDS) and the guidance interface the stages use.

Symbols: x the prior's input (latent or pixels) of a render; t ~ U{t_min, t_max} an integer
timestep; ε ~ N(0, I); ᾱ_t the noise schedule; x_t = √ᾱ_t x + √(1-ᾱ_t) ε; ε̂ the prior's
(guided) noise prediction; w(t) = 1 - ᾱ_t. The SDS gradient is g = w(t)(ε̂ - ε), applied with
the stop-gradient-target trick: loss = ½‖x - sg(x - g)‖²_sum / B, so ∂loss/∂x = g / B exactly
(reference §3.1, "SDS-style gradients"). t_min, t_max are fractions of the T = 1000 steps and
schedules of the training step (timestep annealing). An optional `timestep_map` [T] sends each
drawn t to the step the prior is queried at (Stable Diffusion standing in for IF: the SD step
of the same SNR, priors/noise_schedule.snr_matched_timesteps); ᾱ and w are then the prior's
at the mapped step.
"""

import dataclasses
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax.core import schedules
from dc3d_jax.core.types import Camera


class Prior(Protocol):
  """A diffusion model as seen by score distillation. Implementations are frozen dataclasses
  (static under jit); their weights live in `params`, passed separately and never donated."""

  def alphas_cumprod(self) -> np.ndarray:
    """[T] ᾱ_t."""

  def encode(self, params, images: jax.Array, key: jax.Array) -> jax.Array:
    """[B, H, W, 3] renders in [0, 1] -> [B, h, w, c] model input x (differentiable; `key`
    for a latent prior's posterior sample)."""

  def condition(self, params, cameras: Camera) -> Any:
    """Per-view conditioning (prompt embeddings, relative pose, a target render...)."""

  def predict_noise(self, params, x_t: jax.Array, t: jax.Array, cond) -> jax.Array:
    """Guided ε̂ (classifier-free guidance etc. applied), same shape as x_t."""


def sample_timesteps(key, batch: int, t_min: jax.Array, t_max: jax.Array,
                     num_steps: int) -> jax.Array:
  """[B] int32 t ~ U{⌊T·t_min⌋, ..., ⌊T·t_max⌋} (both ends included, as the reference),
  clipped to the valid steps 0..T-1."""
  lo = jnp.clip(jnp.floor(num_steps * t_min).astype(jnp.int32), 0, num_steps - 1)
  hi = jnp.clip(jnp.floor(num_steps * t_max).astype(jnp.int32), lo, num_steps - 1)
  return jax.random.randint(key, (batch,), lo, hi + 1)


def score_distillation(x: jax.Array, eps_fn: Callable[[jax.Array, jax.Array], jax.Array],
                       t: jax.Array, noise: jax.Array, alphas_cumprod: jax.Array):
  """SDS loss whose gradient w.r.t. x is w(t)(ε̂ - ε)/B. Returns (loss, g)."""
  a = alphas_cumprod[t].reshape((-1,) + (1,) * (x.ndim - 1))
  x_t = jnp.sqrt(a) * x + jnp.sqrt(1.0 - a) * noise
  eps_hat = jax.lax.stop_gradient(eps_fn(jax.lax.stop_gradient(x_t), t))
  grad = (1.0 - a) * (eps_hat - noise)
  target = jax.lax.stop_gradient(x - grad)
  loss = 0.5 * jnp.sum((x - target) ** 2) / x.shape[0]
  return loss, grad


@dataclasses.dataclass(frozen=True)
class SDSGuidance:
  """One guidance term: a prior plus its annealed timestep range (fractions of T), and
  optionally timestep_map: T ints, the prior's step for each drawn step (a tuple, so the
  guidance stays hashable and static under jit)."""
  prior: Any
  t_min: schedules.Schedule = 0.02
  t_max: schedules.Schedule = 0.98
  timestep_map: tuple | None = None

  def loss(self, params, images: jax.Array, cameras: Camera, step, key):
    """[B, H, W, 3] renders of `cameras` -> (scalar loss, metrics dict)."""
    k_t, k_noise, k_encode = jax.random.split(key, 3)
    alphas = jnp.asarray(self.prior.alphas_cumprod())
    x = self.prior.encode(params, images, k_encode)
    n_steps = alphas.shape[0] if self.timestep_map is None else len(self.timestep_map)
    t = sample_timesteps(k_t, x.shape[0], schedules.scalar(self.t_min, step),
                         schedules.scalar(self.t_max, step), n_steps)
    if self.timestep_map is not None:
      t = jnp.asarray(self.timestep_map, jnp.int32)[t]
    cond = self.prior.condition(params, cameras)
    noise = jax.random.normal(k_noise, x.shape, x.dtype)
    eps_fn = lambda x_t, tt: self.prior.predict_noise(params, x_t, tt, cond)
    loss, grad = score_distillation(x, eps_fn, t, noise, alphas)
    return loss, {"t": jnp.mean(t.astype(jnp.float32)),        # the prior's (mapped) step
                  "grad_norm": jnp.sqrt(jnp.sum(grad ** 2) / x.shape[0])}
