"""Stable Diffusion standing in for DeepFloyd IF: the SNR-matched timestep map.

IF's ᾱ table is checked against diffusers' own DDPMScheduler("squaredcos_cap_v2"); the map
against a brute-force search over the two ᾱ tables (every IF step against every SD step);
SDSGuidance against the oracle's closed form at the mapped step; the config choice through
guidance/registry.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax import cameras
from dc3d_jax.errors import ConfigError
from dc3d_jax.guidance import registry, sds
from dc3d_jax.priors import noise_schedule, oracle

IF = noise_schedule.deepfloyd_if_alphas_cumprod()
SD = noise_schedule.alphas_cumprod()          # scaled_linear 0.00085-0.012 (SD 2.1-base)


def brute_force_map(source, target):
  """argmin over every target step of |log SNR difference|; ties to the smaller step."""
  snr = lambda a: np.log(np.asarray(a, np.float64)) - np.log(1.0 - np.asarray(a, np.float64))
  src = snr(np.clip(source, 1e-12, 1 - 1e-12))
  dst = snr(np.clip(target, 1e-12, 1 - 1e-12))
  return np.argmin(np.abs(dst[None, :] - src[:, None]), axis=1)   # first minimum


def test_if_schedule_is_diffusers_cosine():
  import diffusers
  want = diffusers.DDPMScheduler(num_train_timesteps=1000,
                                 beta_schedule="squaredcos_cap_v2").alphas_cumprod.numpy()
  np.testing.assert_allclose(IF, want, atol=1e-6)


def test_snr_map_is_the_brute_force_nearest_step():
  got = noise_schedule.snr_matched_timesteps(IF, SD)
  assert got.shape == (1000,) and got.dtype == np.int32
  np.testing.assert_array_equal(got, brute_force_map(IF, SD))
  assert np.all(np.diff(got) >= 0)
  # The table in docs/ARCHITECTURE.md: IF steps of the reference's t ranges -> SD steps.
  assert [int(got[t]) for t in (20, 200, 500, 700, 850)] == [1, 97, 359, 561, 757]
  used = np.arange(20, 851)   # every IF step the reference's ranges draw (0.02 ... 0.85)
  rel = np.abs(SD[got[used]] - IF[used]) / IF[used]
  assert rel.max() < 0.005   # measured 0.0037: ᾱ_SD(t') = ᾱ_IF(t) to a step's resolution
  # Same step index instead (if_fractions): SD's input is much noisier (§10).
  assert SD[500] < 0.6 * IF[500]


def test_snr_map_refuses_an_increasing_schedule():
  with pytest.raises(ValueError, match="decrease"):
    noise_schedule.snr_matched_timesteps(IF, SD[::-1])


def test_guidance_queries_the_prior_at_the_mapped_step():
  """With the oracle (loss = ½ ᾱ(1-ᾱ)‖x - x0‖², B = 1) the loss must use ᾱ of the mapped step."""
  prior = oracle.OraclePrior(resolution=8)
  params = oracle.oracle_params(oracle.ground_truth_mesh("primitives"))
  cams = cameras.make_camera(jnp.array([0.0]), jnp.array([45.0]), 3.8, 20.0, 8, 8)
  mapping = tuple(range(999, -1, -1))                      # t -> 999 - t
  guidance = sds.SDSGuidance(prior=prior, t_min=(0.3,), t_max=(0.3,), timestep_map=mapping)
  white = jnp.ones((1, 8, 8, 3))
  loss_fn = jax.jit(lambda im: guidance.loss(params, im, cams, 0, jax.random.key(0)))
  loss, metrics = loss_fn(white)
  assert float(metrics["t"]) == 699
  a = float(prior.alphas_cumprod()[699])
  diff = 1.0 - np.asarray(prior.condition(params, cams), np.float64)
  np.testing.assert_allclose(float(loss), 0.5 * a * (1 - a) * np.sum(diff ** 2), rtol=1e-4)


class _SDLike:
  def alphas_cumprod(self):
    return SD


def test_config_choice(tiny_cfg):
  g = tiny_cfg.guidance
  assert g.sd_t_schedule == "snr_matched_if"                     # the default
  mapping = registry.timestep_map("sd", _SDLike(), g)
  np.testing.assert_array_equal(mapping, noise_schedule.snr_matched_timesteps(IF, SD))
  assert registry.timestep_map("oracle", _SDLike(), g) is None   # only SD stands in for IF
  with tiny_cfg.unlocked():
    g.sd_t_schedule = "if_fractions"
  assert registry.timestep_map("sd", _SDLike(), g) is None
  with tiny_cfg.unlocked():
    g.sd_t_schedule = "snr"
  with pytest.raises(ConfigError, match="guidance.sd_t_schedule='snr'"):
    registry.check_kinds(g)
