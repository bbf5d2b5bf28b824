"""DPM-Solver++(2M) (priors/dpm_solver.py) against diffusers' PyTorch DPMSolverMultistepScheduler.

Both run the same fixed ε function (a smooth non-linear map of x_t and t, NumPy and jnp
twins) from the same noised latent: from pure noise (t' = 999) and from the img2img starts
the BSD augmentation uses (t' = 500 and 200: 12 and 5 steps of the 25-step grid). The masked
form (DS) is checked against its closed form: where m = 0 the sample returns to x_0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from dc3d_jax.priors import dpm_solver, noise_schedule

STEPS = 25
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
W = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32) * 0.3


def eps_np(x, t):
  return np.tanh(x @ W) * (1.0 + t / 1000.0) + 0.1 * np.sin(x)


def eps_jnp(x, t):
  return jnp.tanh(x @ W) * (1.0 + t[:, None, None, None] / 1000.0) + 0.1 * jnp.sin(x)


def diffusers_scheduler():
  # SD 2.1-base's scheduler config, as the reference builds DPMSolverMultistepScheduler.from_config.
  s = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                  beta_end=0.012, num_train_timesteps=1000, steps_offset=1)
  s.set_timesteps(STEPS)
  return s


@pytest.fixture(scope="module")
def grid():
  return dpm_solver.grid(noise_schedule.alphas_cumprod(), STEPS)


@pytest.fixture(scope="module")
def run():
  return jax.jit(lambda g, x, s, m, n: dpm_solver.sample(eps_jnp, g, x, s, mask=m, noise=n))


def test_grid_and_start_indices_match_diffusers(grid):
  np.testing.assert_array_equal(grid.timesteps, diffusers_scheduler().timesteps.numpy())
  # reference §4: t' = 500 -> 12 denoising steps, t' = 200 -> 5; at least one step always.
  assert [int(dpm_solver.start_index(t, STEPS)) for t in (999, 500, 200, 20)] == [1, 13, 20, 24]


@pytest.mark.parametrize("t_prime", [999, 500, 200])
def test_img2img_sampling_matches_diffusers(grid, run, t_prime):
  rng = np.random.default_rng(t_prime)
  x0 = rng.standard_normal((1, 8, 8, 4)).astype(np.float32)
  noise = rng.standard_normal((1, 8, 8, 4)).astype(np.float32)
  start = int(dpm_solver.start_index(t_prime, STEPS))
  sched = diffusers_scheduler()
  ts = sched.timesteps
  lat = sched.add_noise(torch.tensor(x0), torch.tensor(noise), ts[start:start + 1])
  for t in ts[start:]:
    lat = sched.step(torch.tensor(eps_np(lat.numpy(), float(t))), t, lat).prev_sample
  ours = run(grid, dpm_solver.add_noise(grid, x0, noise, start), jnp.int32(start),
             jnp.ones((1, 8, 8, 1)), jnp.asarray(noise))   # mask 1: plain sampling
  ref = lat.numpy()
  err = np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref))
  print(f"dpm-solver++ vs diffusers, t'={t_prime}: max rel err {err:.1e}")
  assert err < 1e-5


def test_masked_sampling_keeps_the_seen_region(grid, run):
  """m = 0 (seen from the reference view): ε̂ is replaced by the noise that made x_t, so
  those pixels retrace x_0's noising path and end at x_0; m = 1 pixels are re-synthesised."""
  rng = np.random.default_rng(3)
  x0 = rng.standard_normal((1, 8, 8, 4)).astype(np.float32)
  noise = rng.standard_normal((1, 8, 8, 4)).astype(np.float32)
  mask = np.zeros((1, 8, 8, 1), np.float32)
  mask[:, :, 4:] = 1.0                                    # right half unseen
  start = int(dpm_solver.start_index(500, STEPS))
  out = np.asarray(run(grid, dpm_solver.add_noise(grid, x0, noise, start), jnp.int32(start),
                       jnp.asarray(mask), jnp.asarray(noise)))
  np.testing.assert_allclose(out[:, :, :4], x0[:, :, :4], atol=2e-5)
  assert np.max(np.abs(out[:, :, 4:] - x0[:, :, 4:])) > 0.1
