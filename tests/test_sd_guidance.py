"""Stable Diffusion 2D guidance prior (priors/stable_diffusion.py, priors/prompts.py).

View directions and Perp-Neg terms against the reference §3.1 formulas evaluated by hand;
Perp-Neg's combination against a NumPy per-item implementation; the prior on a tiny random SD
(experiments/tiny_models.flax_stable_diffusion: Flax UNet, VAE with downsampling factor
F = 8, CLIP text encoder, a hand-written BPE vocabulary): the UNet batch order against
per-branch calls, encode's shape and gradient, SDS under jit, and the text-embedding caches.
"""

import dataclasses
import math
import types

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from dc3d_jax.core.types import Camera
from dc3d_jax.guidance import sds
from dc3d_jax.priors import prompts, stable_diffusion as sd, text_cache
from dc3d_jax.priors.models import NoiseScheduleConfig, StableDiffusionModels
from experiments import tiny_models

diffusers.utils.logging.set_verbosity_error()
transformers.logging.set_verbosity_error()

WIDTH = 32                  # CLIP hidden size = UNet cross_attention_dim
F = 8                       # the tiny VAE's downsampling factor (4 blocks)
RENDER = 128                # sds_run's render_size (SD's 512 costs seconds with the tiny VAE)
SIDE, FRONT, BACK, OVERHEAD, UNCOND = 0, 1, 2, 3, 4
TERMS = jax.jit(prompts.perp_neg_terms)         # Perp-Neg terms, as used inside a step


# ----------------------------------------------------------------------------- pure functions

def test_directional_prompts():
  assert prompts.directional_prompts("a cat") == (
      "a cat, side view", "a cat, front view", "a cat, back view", "a cat, overhead view")


@pytest.mark.parametrize("elevation, azimuth, want", [
    (0.0, 0.0, FRONT), (0.0, 44.9, FRONT), (0.0, -44.9, FRONT),
    (0.0, 45.0, SIDE), (0.0, -45.0, SIDE),              # |a| < 45 is strict
    (0.0, 90.0, SIDE), (0.0, -90.0, SIDE),
    (0.0, 134.9, SIDE), (0.0, -134.9, SIDE),
    (0.0, 135.0, SIDE), (0.0, -135.0, SIDE),            # |a| > 135 is strict
    (0.0, 135.1, BACK), (0.0, -135.1, BACK), (0.0, 180.0, BACK), (0.0, -180.0, BACK),
    (0.0, 360.0, FRONT), (0.0, 540.0, BACK),            # wrapped to (-180, 180]
    (59.9, 0.0, FRONT), (60.0, 0.0, FRONT),             # e > 60 is strict
    (60.1, 0.0, OVERHEAD), (60.1, 180.0, OVERHEAD), (60.1, 90.0, OVERHEAD),
])
def test_view_direction_boundaries(elevation, azimuth, want):
  assert int(prompts.view_direction(elevation, azimuth)) == want


def test_view_direction_is_vectorised_under_jit_with_thresholds():
  fn = jax.jit(lambda e, a: prompts.view_direction(e, a, front_threshold=30.0,
                                                   back_threshold=30.0, overhead_threshold=70.0))
  e = jnp.array([0.0, 0.0, 0.0, 65.0, 70.1])
  a = jnp.array([29.9, 30.0, 150.1, 0.0, 0.0])
  np.testing.assert_array_equal(fn(e, a), [FRONT, SIDE, BACK, FRONT, OVERHEAD])


def _expected_terms(az: float):
  """Reference §3.1 by hand: (pos_mix over side/front/back/overhead, neg_index, neg_weight)."""
  a = abs(az)
  if a < 90:
    r = 1 - a / 90
    return ([1 - r, r, 0, 0], [FRONT, SIDE],
            [-(4 * math.exp(-0.5 * r) - 2.426), -(4 * math.exp(-0.5 * (1 - r)) - 2.426)])
  r = 2 - a / 90
  return ([r, 0, 1 - r, 0], [SIDE, FRONT],
          [-(math.exp(-0.5 * r) - 0.606), -(math.exp(-0.5 * r) + 0.967)])


def test_perp_neg_terms_match_the_reference_formulas():
  azimuths = [0.0, 30.0, -30.0, 90.0, 120.0, 180.0]
  pos, index, weight = TERMS(jnp.zeros(len(azimuths)), jnp.array(azimuths))
  for i, az in enumerate(azimuths):
    want_pos, want_index, want_weight = _expected_terms(az)
    np.testing.assert_allclose(pos[i], want_pos, atol=1e-6)
    np.testing.assert_array_equal(index[i], want_index)
    np.testing.assert_allclose(weight[i], want_weight, rtol=1e-5, atol=1e-6)
  # Spot values at the ends: az 0 (r = 1, pure front) and az 180 (r = 0, pure back).
  np.testing.assert_allclose(weight[0], [-(4 * math.exp(-0.5) - 2.426), -(4 - 2.426)],
                             atol=1e-6)
  np.testing.assert_allclose(weight[5], [-(1 - 0.606), -(1 + 0.967)], atol=1e-6)


def test_perp_neg_terms_overhead():
  pos, index, weight = TERMS(jnp.array([60.1, 60.0]), jnp.array([30.0, 30.0]))
  np.testing.assert_allclose(pos[0], [0, 0, 0, 1])
  np.testing.assert_array_equal(index[0], [UNCOND, UNCOND])
  np.testing.assert_allclose(weight[0], [0.0, 0.0])
  np.testing.assert_allclose(pos[1], _expected_terms(30.0)[0], atol=1e-6)  # 60 is not overhead


def _perp_neg_numpy(eps_u, eps_p, eps_negs, weights, scale):
  out = np.empty_like(eps_u)
  for b in range(eps_u.shape[0]):
    e_pos = (eps_p[b] - eps_u[b]).ravel()
    total = e_pos.copy()
    for i in range(eps_negs.shape[1]):
      x = (eps_negs[b, i] - eps_u[b]).ravel()
      perp = x - (x @ e_pos) / max(e_pos @ e_pos, 1e-6) * e_pos
      total += weights[b, i] * perp
    out[b] = eps_u[b] + scale * total.reshape(eps_u.shape[1:])
  return out


def _random_eps(seed: int, batch: int = 3, shape=(4, 5, 2)):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(batch,) + shape), rng.normal(size=(batch,) + shape),
          rng.normal(size=(batch, 2) + shape), rng.uniform(-2, 0, size=(batch, 2)))


def test_perp_neg_combine_matches_numpy_per_item():
  eps_u, eps_p, eps_negs, w = _random_eps(0)
  got = prompts.perp_neg_combine(*map(jnp.asarray, (eps_u, eps_p, eps_negs, w)), 20.0)
  want = _perp_neg_numpy(eps_u, eps_p, eps_negs, w, 20.0)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # The perpendicular part is orthogonal to ε_p - ε_u item by item (a projection with inner
  # products over the whole batch would not be).
  x, y = jnp.asarray(eps_negs[:, 0] - eps_u), jnp.asarray(eps_p - eps_u)
  dots = jnp.sum(prompts.perpendicular(x, y) * y, axis=(1, 2, 3))
  np.testing.assert_allclose(dots, 0.0, atol=1e-3)


def test_perp_neg_with_zero_weights_is_cfg():
  eps_u, eps_p, eps_negs, _ = _random_eps(1)
  got = prompts.perp_neg_combine(jnp.asarray(eps_u), jnp.asarray(eps_p), jnp.asarray(eps_negs),
                                 jnp.zeros((3, 2)), 7.5)
  np.testing.assert_allclose(got, eps_u + 7.5 * (eps_p - eps_u), rtol=1e-5, atol=1e-5)


def test_classifier_free_guidance():
  got = prompts.classifier_free_guidance(jnp.array([1.0, -2.0]), jnp.array([3.0, 0.0]), 7.5)
  np.testing.assert_allclose(got, [1.0 + 7.5 * 2.0, -2.0 + 7.5 * 2.0])


# ----------------------------------------------------------------------------- tiny SD

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> StableDiffusionModels:
  return tiny_models.flax_stable_diffusion(tmp_path_factory.mktemp("tokenizer"), seed=1)


def _cameras(elevations, azimuths) -> Camera:
  """Views for the prior, which reads only elevation and azimuth (c2w left as identity)."""
  n = len(elevations)
  return Camera(c2w=np.tile(np.eye(4, dtype=np.float32), (n, 1, 1)),
                fovy=np.full(n, np.deg2rad(20.0), np.float32),
                elevation_deg=np.asarray(elevations, np.float32),
                azimuth_deg=np.asarray(azimuths, np.float32),
                distance=np.full(n, 3.8, np.float32), height=16, width=16)


def _branch_table(table: np.ndarray, az: float) -> list:
  """[pos, uncond, neg_1, neg_2] embeddings of one view, by the hand formulas."""
  pos_mix, index, _ = _expected_terms(az)
  pos = np.einsum("k,kld->ld", np.asarray(pos_mix), table[:4])
  return [pos, table[UNCOND], table[index[0]], table[index[1]]]


def test_tokenizer_and_embedding_table(models):
  tok = models.tokenizer
  ids = tok(["a cat, front view"], padding="max_length", max_length=77).input_ids
  assert len(ids[0]) == 77 and ids[0][0] == tok.bos_token_id and tok.eos_token_id in ids[0]
  assert models.tokenizer.convert_tokens_to_ids("view</w>") in ids[0]   # merges applied
  table = sd.direction_table(models, "a cat")
  assert table.shape == (5, 77, WIDTH) and np.isfinite(table).all()
  # The four direction prompts and "" differ after the shared "a cat," prefix.
  assert all(not np.allclose(table[i, 4:], table[j, 4:]) for i in range(5) for j in range(i))


def test_text_embeddings_are_computed_once_and_cached_on_disk(models, tmp_path):
  cache = sd.TextEmbeddingCache()
  first = sd.text_embeddings(models, ["a cat", "a cat, side view"], cache_dir=tmp_path,
                             cache=cache)
  assert cache.encoded == 2
  second = sd.text_embeddings(models, ["a cat, side view", "a cat"], cache_dir=tmp_path,
                              cache=cache)
  assert cache.encoded == 2                                          # both from memory
  np.testing.assert_array_equal(second, first[::-1])
  np.testing.assert_allclose(first, sd.encode_prompts(models, ["a cat", "a cat, side view"]),
                             atol=1e-6)
  path = tmp_path / (text_cache.embedding_key("tiny-random-sd", "a cat") + ".npy")
  assert path.exists()
  fresh = sd.TextEmbeddingCache()
  reloaded = sd.text_embeddings(models, ["a cat", "a cat, side view"], cache_dir=tmp_path,
                                cache=fresh)
  assert fresh.encoded == 0                                          # both from disk
  np.testing.assert_array_equal(reloaded, first)
  assert text_cache.embedding_key("other-weights", "a cat") != text_cache.embedding_key("tiny-random-sd",
                                                                         "a cat")


def test_disk_cache_needs_a_model_source(models, tmp_path):
  anonymous = dataclasses.replace(models, source="")
  with pytest.raises(ValueError, match="models.source"):
    sd.text_embeddings(anonymous, ["a cat"], cache_dir=tmp_path)


@pytest.fixture(scope="module")
def perp_prior(models):
  return sd.make_stable_diffusion_prior(models, "a cat", guidance_scale=20.0, perp_neg=True)


def test_condition_rows(perp_prior):
  prior, params = perp_prior
  table = np.asarray(params["embeddings"])
  condition = jax.jit(lambda p, c: p.condition(params, c), static_argnums=0)
  cond = condition(prior, _cameras([0.0, 10.0], [30.0, -120.0]))
  context = np.asarray(cond["context"]).reshape(4, 2, 77, WIDTH)
  for b, az in enumerate([30.0, -120.0]):
    for k, want in enumerate(_branch_table(table, az)):
      np.testing.assert_allclose(context[k, b], want, atol=1e-5)
    np.testing.assert_allclose(cond["neg_weight"][b], _expected_terms(az)[2], rtol=1e-5)
  plain = dataclasses.replace(prior, perp_neg=False, front_threshold=30.0)
  cond = condition(plain, _cameras([0.0, 0.0, 70.0], [29.0, 31.0, 0.0]))
  np.testing.assert_array_equal(np.asarray(cond["context"]),
                                table[[FRONT, SIDE, OVERHEAD, UNCOND, UNCOND, UNCOND]])


class _DoublingUNet:
  """Stands in for the UNet: its raw output is 2·sample (NCHW, like diffusers')."""
  dtype = jnp.float32

  def apply(self, variables, sample, t, context, train=False):
    return types.SimpleNamespace(sample=2.0 * sample)


def test_v_prediction_is_converted_to_epsilon(perp_prior):
  prior, params = perp_prior
  v_prior = dataclasses.replace(prior, unet=_DoublingUNet(), schedule=dataclasses.replace(
      prior.schedule, prediction_type="v_prediction"))
  x_t = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3, 3, 4)), jnp.float32)
  t = jnp.array([10, 900])
  got = v_prior.raw_noise(params, x_t, t, jnp.zeros((2, 77, WIDTH)))
  a = prior.alphas_cumprod()[np.asarray(t)].reshape(-1, 1, 1, 1)
  np.testing.assert_allclose(got, np.sqrt(a) * 2.0 * x_t + np.sqrt(1 - a) * x_t, rtol=1e-5)
  with pytest.raises(ValueError, match="prediction_type"):
    dataclasses.replace(prior, schedule=NoiseScheduleConfig(prediction_type="sample"))


# ----------------------------------------------------------------------------- ε̂ and SDS

AZIMUTHS = (30.0, -120.0)       # one front-half and one back-half view, elevation 0


def _hand_context(table: np.ndarray, perp_neg: bool) -> np.ndarray:
  """[k·B, L, D] UNet rows [pos, uncond(, neg_1, neg_2)], each a block of B views."""
  if perp_neg:
    rows = [_branch_table(table, az) for az in AZIMUTHS]
  else:                         # 45° thresholds: 30° is front, -120° is side
    rows = [[table[FRONT], table[UNCOND]], [table[SIDE], table[UNCOND]]]
  return np.concatenate([np.stack([r[k] for r in rows]) for k in range(len(rows[0]))])


@pytest.fixture(scope="module", params=[True, False], ids=["perp_neg", "cfg"])
def noise_run(request, perp_prior):
  """One jitted run at 8² latents: ε̂ = predict_noise(x_t), the latent gradient of
  score_distillation with predict_noise as ε̂, and raw UNet ε of hand-built rows."""
  prior, params = perp_prior
  prior = dataclasses.replace(prior, guidance_scale=5.0, perp_neg=request.param)
  cameras = _cameras([0.0, 0.0], list(AZIMUTHS))
  alphas = jnp.asarray(prior.alphas_cumprod())
  t = jnp.array([250, 800])
  k = 4 if request.param else 2

  @jax.jit
  def run(params, x, noise, context):
    cond = prior.condition(params, cameras)
    eps_fn = lambda x_t, tt: prior.predict_noise(params, x_t, tt, cond)
    g_x = jax.grad(lambda xx: sds.score_distillation(xx, eps_fn, t, noise, alphas)[0])(x)
    a = alphas[t].reshape(-1, 1, 1, 1)
    x_t = jnp.sqrt(a) * x + jnp.sqrt(1 - a) * noise
    raw = prior.raw_noise(params, jnp.tile(x_t, (k, 1, 1, 1)), jnp.tile(t, k), context)
    return dict(eps_hat=eps_fn(x_t, t), g_x=g_x, raw=raw.reshape((k,) + x.shape), a=a,
                noise=noise)

  rng = np.random.default_rng(2)
  x, noise = (jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32) for _ in range(2))
  context = jnp.asarray(_hand_context(np.asarray(params["embeddings"]), request.param))
  return request.param, jax.tree_util.tree_map(np.asarray, run(params, x, noise, context))


def test_predict_noise_equals_per_branch_unet_outputs(noise_run):
  perp_neg, r = noise_run
  eps = r["raw"]
  cfg = eps[1] + 5.0 * (eps[0] - eps[1])
  want = cfg
  if perp_neg:
    weights = np.array([_expected_terms(az)[2] for az in AZIMUTHS])
    want = _perp_neg_numpy(eps[1], eps[0], np.stack([eps[2], eps[3]], 1), weights, 5.0)
    assert np.abs(want - cfg).max() > 0.05 * np.abs(want).max()     # the negatives matter
  np.testing.assert_allclose(r["eps_hat"], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  assert np.abs(eps[0] - eps[1]).max() > 1e-4                       # text conditioning acts


def test_sds_latent_gradient_is_weighted_noise_residual(noise_run):
  _, r = noise_run
  want = (1 - r["a"]) * (r["eps_hat"] - r["noise"]) / 2
  np.testing.assert_allclose(r["g_x"], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
  assert np.abs(r["eps_hat"] - r["noise"]).max() > 1e-3             # not a trivial zero


@pytest.fixture(scope="module")
def sds_run(perp_prior):
  """One jitted run at RENDER² (RENDER/F latents): SDSGuidance's loss and its gradient w.r.t.
  the images for B = 2 cameras, and encode's output under two keys."""
  prior, params = perp_prior
  prior = dataclasses.replace(prior, render_size=RENDER)
  guidance = sds.SDSGuidance(prior=prior, t_min=0.2, t_max=0.98)
  cameras = _cameras([0.0, 20.0], [30.0, 150.0])

  @jax.jit
  def run(params, images, key):
    (loss, metrics), g_images = jax.value_and_grad(guidance.loss, argnums=1, has_aux=True)(
        params, images, cameras, 0, key)
    x = prior.encode(params, images, jax.random.key(7))
    x_other = prior.encode(params, images, jax.random.key(8))
    return dict(loss=loss, metrics=metrics, g_images=g_images, x=x, x_other=x_other)

  images = jax.random.uniform(jax.random.key(6), (2, 64, 64, 3))
  return jax.tree_util.tree_map(np.asarray, run(params, images, jax.random.key(9)))


def test_encode_shape_and_posterior_sample(sds_run):
  x = sds_run["x"]
  assert x.shape == (2, RENDER // F, RENDER // F, 4) and x.dtype == np.float32
  assert np.isfinite(x).all()
  assert not np.allclose(x, sds_run["x_other"])       # a sample: the key matters


def test_sds_loss_runs_under_jit_with_image_gradients(sds_run):
  assert np.isfinite(sds_run["loss"]) and sds_run["loss"] > 0
  assert 0.2 * 1000 <= sds_run["metrics"]["t"] <= 0.98 * 1000
  g = sds_run["g_images"]                              # flows through the VAE encoder
  assert g.shape == (2, 64, 64, 3) and np.isfinite(g).all() and np.abs(g).max() > 0
