"""Discrete DDPM noise schedules: β_t for t = 0..T-1 and ᾱ_t = Π_{s≤t} (1 - β_s).

Kinds follow diffusers' names: "linear", "scaled_linear" (Stable Diffusion, Zero123:
β from 0.00085 to 0.012) and "squaredcos_cap_v2" (DeepFloyd IF).
"""

import math

import numpy as np


def betas(kind: str, beta_start: float, beta_end: float, num_steps: int) -> np.ndarray:
  if kind == "linear":
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
  if kind == "scaled_linear":
    return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=np.float64) ** 2
  if kind == "squaredcos_cap_v2":
    def f(t):
      return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f((i + 1) / num_steps) / f(i / num_steps), 0.999)
                     for i in range(num_steps)], dtype=np.float64)
  raise ValueError(f"unknown beta schedule {kind!r}; expected linear, scaled_linear or "
                   "squaredcos_cap_v2")


def alphas_cumprod(kind: str = "scaled_linear", beta_start: float = 0.00085,
                   beta_end: float = 0.012, num_steps: int = 1000) -> np.ndarray:
  """[T] float32 ᾱ_t."""
  return np.cumprod(1.0 - betas(kind, beta_start, beta_end, num_steps)).astype(np.float32)


def of_config(schedule) -> np.ndarray:
  """[T] float32 ᾱ_t of a models.NoiseScheduleConfig (a loaded model's training schedule)."""
  return alphas_cumprod(schedule.beta_schedule, schedule.beta_start, schedule.beta_end,
                        schedule.num_train_timesteps)
