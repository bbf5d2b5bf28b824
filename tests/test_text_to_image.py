"""Tests for stage 0's text-to-image (dc3d_jax.priors.text_to_image) on tiny random models
(experiments/tiny_models.flax_stable_diffusion, a 2-block VAE).

Random weights give noise images: these tests check the plumbing (shapes, range, seeds, step
count, guidance, size checks), not image quality.
"""

import dataclasses

import jax
import numpy as np
import pytest

from dc3d_jax.core import rng
from dc3d_jax.priors import text_to_image
from dc3d_jax.priors.models import NoiseScheduleConfig
from dc3d_jax.priors.torch_semantics import torch_semantics
from experiments import tiny_models

SIZE = 16          # tiny VAE (2 blocks) and UNet (2 blocks): multiples of 4 are valid
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  from diffusers.utils import logging as diffusers_logging
  level = diffusers_logging.get_verbosity()
  diffusers_logging.set_verbosity_error()
  try:
    return tiny_models.flax_stable_diffusion(tmp_path_factory.mktemp("tokenizer"),
                                             vae_blocks=2, max_tokens=MAX_TOKENS)
  finally:
    diffusers_logging.set_verbosity(level)


@pytest.fixture(scope="module")
def sampler(models):
  return text_to_image.TextToImage(models)   # compiled once, shared by the tests below


PROMPT = "a photo of a red toy"


def _generate(sampler, **kwargs):
  return sampler(PROMPT, **{"steps": 2, "size": SIZE, **kwargs})


def test_tokenizer_knows_the_prompt_words(models):
  ids = models.tokenizer(PROMPT).input_ids
  assert len(ids) == 2 + 6  # start, six whole-word tokens, end: the BPE merges work


def test_image_shape_range_and_determinism(sampler):
  image = _generate(sampler, seed=0)
  assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.float32
  assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
  assert image.std() > 1e-3                           # not a constant image
  np.testing.assert_array_equal(_generate(sampler, seed=0), image)
  assert np.abs(_generate(sampler, seed=1) - image).max() > 1e-3


def test_sampler_equals_diffusers_public_call(models, sampler):
  """The sampler's plumbing (prompt and negative-prompt ids, one guidance scale per prompt,
  the seed's key key_for(root_key(seed), "text_to_image", 0)) against diffusers' documented
  FlaxStableDiffusionPipeline.__call__(jit=True): pmap over one device with replicated
  params and a sharded key, a separate compiled program."""
  from flax import jax_utils
  image = _generate(sampler, negative_prompt="blurry", guidance_scale=5.0, seed=3)
  pipe, params = text_to_image.make_pipeline(models)
  ids, negative = pipe.prepare_inputs([PROMPT]), pipe.prepare_inputs(["blurry"])
  key = rng.key_for(rng.root_key(3), "text_to_image", 0)
  with torch_semantics():
    out = pipe(ids[None], jax_utils.replicate(params), key[None], 2, SIZE, SIZE, 5.0,
               neg_prompt_ids=negative[None], jit=True)
  assert out.images.shape == (1, 1, SIZE, SIZE, 3)
  np.testing.assert_allclose(image, np.asarray(out.images)[0, 0], atol=1e-5)


def test_steps_are_honoured(models, monkeypatch):
  from diffusers import FlaxDPMSolverMultistepScheduler
  calls = []
  original = FlaxDPMSolverMultistepScheduler.step

  def counting_step(self, state, model_output, timestep, sample, *args, **kwargs):
    # Runs once per executed loop iteration (the fori_loop body is traced only once).
    jax.debug.callback(lambda t: calls.append(int(t)), timestep, ordered=True)
    return original(self, state, model_output, timestep, sample, *args, **kwargs)

  monkeypatch.setattr(FlaxDPMSolverMultistepScheduler, "step", counting_step)
  text_to_image.generate_image(models, PROMPT, steps=3, size=SIZE)
  jax.effects_barrier()
  assert len(calls) == 3
  assert calls == sorted(calls, reverse=True) and calls[0] > 900   # starts near pure noise


def test_negative_prompt_only_matters_with_guidance(sampler):
  # ε̂ = ε_u + s(ε_c − ε_u): at s = 1 the negative-prompt branch ε_u cancels out.
  plain = _generate(sampler, guidance_scale=1.0)
  negative = _generate(sampler, guidance_scale=1.0, negative_prompt="blurry")
  np.testing.assert_allclose(negative, plain, atol=1e-4)
  guided = _generate(sampler, guidance_scale=7.5)
  guided_negative = _generate(sampler, guidance_scale=7.5, negative_prompt="blurry")
  assert np.abs(guided_negative - guided).max() > 1e-3


@pytest.mark.parametrize("size", [18, 2, 0])
def test_bad_size_is_refused(models, sampler, size):
  assert text_to_image.size_multiple(models) == 4
  with pytest.raises(ValueError, match="multiple of 4"):
    _generate(sampler, size=size)


def test_bad_steps_and_prompt_are_refused(sampler):
  with pytest.raises(ValueError, match="steps"):
    _generate(sampler, steps=0)
  with pytest.raises(ValueError, match="prompt"):
    sampler("  ", size=SIZE)


def test_sampler_uses_the_model_schedule():
  schedule = NoiseScheduleConfig(beta_start=0.001, beta_end=0.02, num_train_timesteps=500)
  scheduler, state = text_to_image.make_scheduler(schedule)
  betas = np.linspace(0.001 ** 0.5, 0.02 ** 0.5, 500) ** 2   # scaled_linear
  np.testing.assert_allclose(np.asarray(state.common.alphas_cumprod), np.cumprod(1 - betas),
                             rtol=1e-5)
  assert scheduler.config.prediction_type == "epsilon"


def test_vae_scaling_factor_must_agree(models):
  # The pipeline unscales latents with vae.config.scaling_factor, the priors with the field.
  mismatched = dataclasses.replace(models, vae_scaling_factor=0.13025)
  with pytest.raises(ValueError, match="scaling_factor"):
    text_to_image.generate_image(mismatched, PROMPT, steps=2, size=SIZE)
