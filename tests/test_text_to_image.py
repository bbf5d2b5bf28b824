"""Tests for stage 0's text-to-image (dc3d_jax.priors.text_to_image) on tiny random models.

Random weights give noise images: these tests check the plumbing (shapes, range, seeds, step
count, guidance, size checks), not image quality.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest

from dc3d_jax.priors import text_to_image
from dc3d_jax.priors.models import NoiseScheduleConfig, StableDiffusionModels

SIZE = 16          # tiny VAE (2 blocks) and UNet (2 blocks): multiples of 4 are valid
MAX_TOKENS = 16
WORDS = ("a", "photo", "of", "red", "toy", "blurry")


def _write_tokenizer_files(directory) -> tuple:
  """A hand-made CLIP BPE: every letter (also word-final), plus whole WORDS via merges."""
  letters = sorted(set("".join(WORDS)) | set("abcdefghijklmnopqrstuvwxyz"))
  vocab = ["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters]
  merges = []
  for word in WORDS:
    piece = word[0]
    for i, char in enumerate(word[1:], start=1):
      nxt = char + ("</w>" if i == len(word) - 1 else "")
      merges.append(f"{piece} {nxt}")
      piece += nxt
      vocab.append(piece)
  vocab = list(dict.fromkeys(vocab + [w + "</w>" for w in WORDS if len(w) == 1]))
  merges = list(dict.fromkeys(merges))
  vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
  vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
  merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
  return vocab_file, merges_file


def _random_params(init_fn, seed: int):
  """Params shaped as init_fn's, drawn in NumPy: running the real initialisers eagerly costs
  tens of seconds on two cores. Norm scales are 1; everything else is N(0, 0.05²)."""
  shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(seed))
  draw = np.random.default_rng(seed)

  def fill(path, leaf):
    if getattr(path[-1], "key", None) == "scale":
      return np.ones(leaf.shape, leaf.dtype)
    return (0.05 * draw.standard_normal(leaf.shape)).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _tiny_text_encoder(vocab_size: int):
  from transformers import CLIPTextConfig, FlaxCLIPTextModel
  config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37,
                          num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=MAX_TOKENS, projection_dim=32)
  model = FlaxCLIPTextModel(config, _do_init=False)
  return model, _random_params(lambda key: model.init_weights(key, (1, MAX_TOKENS)), 0)


def _tiny_unet_and_vae():
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
  unet = FlaxUNet2DConditionModel(
      sample_size=SIZE // 2, in_channels=4, out_channels=4, block_out_channels=(32, 64),
      layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
      attention_head_dim=8)
  vae = FlaxAutoencoderKL(
      in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
      latent_channels=4, norm_num_groups=32, sample_size=SIZE)
  return unet, _random_params(unet.init_weights, 1), vae, _random_params(vae.init_weights, 2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  from diffusers.utils import logging as diffusers_logging
  from transformers import CLIPTokenizer
  level = diffusers_logging.get_verbosity()
  diffusers_logging.set_verbosity_error()
  try:
    files = _write_tokenizer_files(tmp_path_factory.mktemp("tokenizer"))
    tokenizer = CLIPTokenizer(*map(str, files), model_max_length=MAX_TOKENS)
    text_encoder, text_params = _tiny_text_encoder(len(tokenizer))
    unet, unet_params, vae, vae_params = _tiny_unet_and_vae()
  finally:
    diffusers_logging.set_verbosity(level)
  return StableDiffusionModels(
      unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
      params={"unet": unet_params, "vae": vae_params, "text_encoder": text_params},
      schedule=NoiseScheduleConfig(), source="tiny random (test)")


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


def test_generate_image_is_one_sampler_call(models, sampler):
  image = text_to_image.generate_image(models, PROMPT, steps=2, size=SIZE, seed=3)
  np.testing.assert_array_equal(image, _generate(sampler, seed=3))


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
