"""Score distillation under known denoisers: an affine ε̂, diffusers' schedules, the oracle prior.

Symbols as in guidance/sds.py: x_t = √ᾱ_t x + √(1-ᾱ_t) ε, w(t) = 1 - ᾱ_t, g = w(t)(ε̂ - ε),
loss = ½‖g‖²/B with ∂loss/∂x = g/B.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax import cameras
from dc3d_jax.core import schedules
from dc3d_jax.geometry import rasterize
from dc3d_jax.guidance import sds
from dc3d_jax.priors import noise_schedule, oracle

ALPHAS = noise_schedule.alphas_cumprod()          # Stable Diffusion's scaled-linear ᾱ_t
T_MIN = (0, 0.7, 0.2, 200)                        # coarse NeRF annealing, reference §3.1
T_MAX = (0, 0.85, 0.5, 200)


def test_score_distillation_gradient_under_an_affine_denoiser():
  rng = np.random.default_rng(0)
  shape = (2, 4, 5, 3)
  x = rng.normal(size=shape)
  noise = rng.normal(size=shape)
  a_mat, b_vec = rng.normal(size=shape[1:]), rng.normal(size=shape[1:])
  t = np.array([120, 870])

  def eps_fn(x_t, tt):                            # ε̂ = A·x_t + b (elementwise), depends on x
    return jnp.asarray(a_mat, jnp.float32) * x_t + jnp.asarray(b_vec, jnp.float32)

  def loss_fn(xx):
    return sds.score_distillation(xx, eps_fn, jnp.asarray(t), jnp.asarray(noise, jnp.float32),
                                  jnp.asarray(ALPHAS))

  (loss, g), grad = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(x, jnp.float32))
  a = ALPHAS[t].astype(np.float64).reshape(-1, 1, 1, 1)
  x_t = np.sqrt(a) * x + np.sqrt(1 - a) * noise
  want_g = (1 - a) * (a_mat * x_t + b_vec - noise)
  np.testing.assert_allclose(np.asarray(g), want_g, rtol=1e-4, atol=1e-5)
  # No gradient through ε̂: exactly g / B, not g/B + (A-terms).
  np.testing.assert_allclose(np.asarray(grad), want_g / 2, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(loss), 0.5 * np.sum(want_g**2) / 2, rtol=1e-4)
  # w(t) differs per item: the large-t item gets the larger weight.
  assert 1 - a[1, 0, 0, 0] > 5 * (1 - a[0, 0, 0, 0])


def test_score_distillation_is_zero_for_a_perfect_denoiser():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(3, 4, 4, 3)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  eps_fn = lambda x_t, tt: noise                  # predicts exactly the noise that was added
  loss, g = sds.score_distillation(x, eps_fn, jnp.array([1, 500, 999]), noise,
                                   jnp.asarray(ALPHAS))
  assert float(loss) == 0.0 and float(jnp.abs(g).max()) == 0.0


@functools.partial(jax.jit, static_argnums=(1, 4))
def _timesteps(key, batch, t_min, t_max, num_steps):
  return sds.sample_timesteps(key, batch, t_min, t_max, num_steps)


@pytest.mark.parametrize("t_min,t_max", [(0.2, 0.5), (0.02, 0.98), (0.3, 0.3)])
def test_sample_timesteps_covers_the_closed_range(t_min, t_max):
  t = np.asarray(_timesteps(jax.random.key(0), 20000, jnp.float32(t_min), jnp.float32(t_max),
                            1000))
  lo, hi = int(1000 * t_min + 1e-9), int(1000 * t_max + 1e-9)
  assert t.dtype == np.int32
  assert t.min() == lo and t.max() == hi
  counts = np.bincount(t - lo, minlength=hi - lo + 1)
  assert np.all(counts > 0)                                 # every step can be drawn
  np.testing.assert_allclose(t.mean(), 0.5 * (lo + hi), atol=4 * (hi - lo + 1) / np.sqrt(12 * 2e4))


def test_annealed_t_min_reaches_the_reference_bound():
  # The reference draws t ~ U{int(1000·0.2), ..., int(1000·0.5)} once the ramp has ended.
  step = jnp.int32(1000)
  t = np.asarray(_timesteps(jax.random.key(1), 20000, schedules.scalar(T_MIN, step),
                            schedules.scalar(T_MAX, step), 1000))
  assert t.min() == 200 and t.max() == 500


@pytest.mark.parametrize("kind", ["scaled_linear", "linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_match_diffusers(kind):
  import diffusers
  scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind,
                                      beta_start=0.00085, beta_end=0.012)
  want = scheduler.alphas_cumprod.numpy()
  got = noise_schedule.alphas_cumprod(kind, 0.00085, 0.012, 1000)
  assert got.shape == (1000,) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert np.all(np.diff(got) < 0) and 0 < got[-1] < got[0] < 1


def test_unknown_beta_schedule_is_an_error():
  with pytest.raises(ValueError, match="cosine"):
    noise_schedule.betas("cosine", 0.1, 0.2, 10)


# ------------------------------------------------------------------------------- oracle

RES = 16
PRIOR = oracle.OraclePrior(resolution=RES)
PARAMS = oracle.oracle_params(oracle.ground_truth_mesh("primitives"))


def _cams(elevations, azimuths):
  return cameras.make_camera(jnp.asarray(elevations), jnp.asarray(azimuths), 3.8, 20.0, RES, RES)


@jax.jit
def _gt_images(cams):
  return jax.vmap(lambda c: rasterize.render_mesh(PARAMS["mesh"], c)["rgb"])(cams)


_encode = jax.jit(lambda images: PRIOR.encode(PARAMS, images))
_condition = jax.jit(lambda cams: PRIOR.condition(PARAMS, cams))


@functools.partial(jax.jit, static_argnums=(0,))
def _guidance(guidance, images, cams, step, key):
  """((loss, metrics), ∂loss/∂images) of one guidance term: one compile for all its tests."""
  loss_fn = lambda im: guidance.loss(PARAMS, im, cams, step, key)
  return jax.value_and_grad(loss_fn, has_aux=True)(images)


def test_oracle_predicts_the_true_noise_for_the_ground_truth_render():
  cams = _cams([0.0, 25.0], [0.0, 120.0])
  images = _gt_images(cams)
  x, x0 = _encode(images), _condition(cams)
  np.testing.assert_allclose(np.asarray(x), np.asarray(x0), atol=1e-6)
  assert float(jnp.std(x0)) > 0.1                           # the object is in view
  noise = jax.random.normal(jax.random.key(0), x.shape)
  t = jnp.array([50, 900])
  a = jnp.asarray(ALPHAS)[t].reshape(-1, 1, 1, 1)
  eps_hat = PRIOR.predict_noise(PARAMS, jnp.sqrt(a) * x + jnp.sqrt(1 - a) * noise, t, x0)
  np.testing.assert_allclose(np.asarray(eps_hat), np.asarray(noise), atol=1e-4)


def test_oracle_sds_gradient_is_proportional_to_the_image_error():
  cams = _cams([0.0, 10.0], [0.0, -60.0])
  x0 = _condition(cams)
  x = jax.random.uniform(jax.random.key(1), x0.shape, minval=-1.0, maxval=1.0)
  noise = jax.random.normal(jax.random.key(2), x.shape)
  t = jnp.array([30, 760])
  eps_fn = lambda x_t, tt: PRIOR.predict_noise(PARAMS, x_t, tt, x0)
  _, g = sds.score_distillation(x, eps_fn, t, noise, jnp.asarray(PRIOR.alphas_cumprod()))
  a = ALPHAS[np.asarray(t)].astype(np.float64).reshape(-1, 1, 1, 1)
  want = np.sqrt(a * (1 - a)) * (np.asarray(x) - np.asarray(x0))
  np.testing.assert_allclose(np.asarray(g), want, rtol=1e-3, atol=1e-5)


GUIDANCE = sds.SDSGuidance(prior=PRIOR, t_min=T_MIN, t_max=T_MAX)


def test_guidance_loss_is_zero_on_the_ground_truth_and_closed_form_on_white():
  cams = _cams([0.0], [45.0])
  images = _gt_images(cams)
  (loss, _), grad = _guidance(GUIDANCE, images, cams, jnp.int32(0), jax.random.key(3))
  assert float(loss) < 1e-8 and float(jnp.abs(grad).max()) < 1e-4
  white = jnp.ones_like(images)
  (loss, metrics), grad = _guidance(GUIDANCE, white, cams, jnp.int32(0), jax.random.key(3))
  t = int(metrics["t"])
  a = float(ALPHAS[t])
  diff = 1.0 - np.asarray(_condition(cams), np.float64)   # x - x0 with x = 2·1 - 1
  # B = 1: loss = ½ ᾱ(1-ᾱ)‖x - x0‖², and ∂loss/∂image = 2 √(ᾱ(1-ᾱ)) (x - x0) (x = 2·image - 1).
  np.testing.assert_allclose(float(loss), 0.5 * a * (1 - a) * np.sum(diff**2), rtol=1e-4)
  assert float(loss) > 0.1
  np.testing.assert_allclose(float(metrics["grad_norm"]), np.sqrt(a * (1 - a) * np.sum(diff**2)),
                             rtol=1e-4)
  np.testing.assert_allclose(np.asarray(grad), 2 * np.sqrt(a * (1 - a)) * diff, rtol=1e-3,
                             atol=1e-6)


@pytest.mark.parametrize("step,lo,hi", [(0, 700, 850), (100, 450, 675), (1000, 200, 500)])
def test_guidance_anneals_the_timestep_range(step, lo, hi):
  cams = _cams([0.0], [0.0])
  images = jnp.full((1, RES, RES, 3), 0.5)
  ts = [float(_guidance(GUIDANCE, images, cams, jnp.int32(step), jax.random.key(k))[0][1]["t"])
        for k in range(12)]
  assert all(lo <= t <= hi and t == int(t) for t in ts), ts
  assert max(ts) - min(ts) > 0.3 * (hi - lo)                # the draws spread over the range


def test_timesteps_stay_inside_the_schedule():
  t = np.asarray(_timesteps(jax.random.key(2), 4000, jnp.float32(0.98), jnp.float32(1.0), 1000))
  assert t.min() == 980 and t.max() == 999
