"""Discrete DDPM noise schedules: β_t for t = 0..T-1 and ᾱ_t = Π_{s≤t} (1 - β_s), and the
map between two schedules that matches their signal-to-noise ratios SNR_t = ᾱ_t / (1 - ᾱ_t).

Kinds follow diffusers' names: "linear", "scaled_linear" (Stable Diffusion, Zero123:
β from 0.00085 to 0.012) and "squaredcos_cap_v2" (DeepFloyd IF).

`snr_matched_timesteps(ᾱ_IF, ᾱ_SD)` is how Stable Diffusion stands in for IF (reference §10:
at the same t SD's ᾱ is far lower, e.g. t = 500: 0.28 vs 0.49): each step t drawn from the
reference's IF t range becomes the SD step t' with ᾱ_SD(t') ≈ ᾱ_IF(t), so SD sees inputs as
noisy as IF did and w(t') = 1 - ᾱ_SD(t') ≈ 1 - ᾱ_IF(t). The table is in docs/ARCHITECTURE.md.
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


def deepfloyd_if_alphas_cumprod() -> np.ndarray:
  """[1000] ᾱ_t of DeepFloyd IF stage I (the reference's 2D prior): diffusers' cosine
  schedule "squaredcos_cap_v2" over 1000 steps."""
  return alphas_cumprod("squaredcos_cap_v2", num_steps=1000)


def log_snr(alphas: np.ndarray) -> np.ndarray:
  """[T] log(ᾱ / (1 - ᾱ)) in float64, ᾱ clipped to (0, 1) so both ends stay finite."""
  a = np.clip(np.asarray(alphas, np.float64), 1e-12, 1.0 - 1e-12)
  return np.log(a) - np.log1p(-a)


def snr_matched_timesteps(source: np.ndarray, target: np.ndarray) -> np.ndarray:
  """[T_src] int32: for each source step t, the target step t' whose signal-to-noise ratio
  ᾱ/(1 - ᾱ) is nearest to the source's in log space (ties to the smaller t'), i.e.
  ᾱ_target(t') ≈ ᾱ_source(t). Both schedules must decrease in t."""
  src, dst = log_snr(source), log_snr(target)
  if np.any(np.diff(dst) >= 0) or np.any(np.diff(src) > 0):
    raise ValueError("snr_matched_timesteps: ᾱ must decrease with t in both schedules")
  # -dst increases: searchsorted finds the first t' with dst(t') <= src(t).
  right = np.clip(np.searchsorted(-dst, -src, side="left"), 0, len(dst) - 1)
  left = np.maximum(right - 1, 0)
  closer_left = np.abs(dst[left] - src) <= np.abs(dst[right] - src)
  return np.where(closer_left, left, right).astype(np.int32)
