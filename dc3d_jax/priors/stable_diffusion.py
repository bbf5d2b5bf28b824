"""Stable Diffusion as the 2D text-guided SDS prior (SD 2.1-base standing in for DeepFloyd IF).

Symbols: x = s_vae·z, the VAE posterior sample z of a render (bilinear to 512², in [-1, 1])
scaled by s_vae = 0.18215; x_t its noisy version at integer timestep t; ᾱ_t the DDPM schedule;
ε̂ the guided noise prediction with guidance scale s. Conditioning is a CLIP text embedding
[77, D] per view, picked (or, with Perp-Neg, interpolated) from a table of five prompts:
DIRECTIONS ("<p>, side view", front, back, overhead) and UNCOND (the negative prompt).
  CFG:      ε̂ = ε_u + s(ε_c - ε_u)                               UNet batch 2B: [c, u]
  Perp-Neg: ε̂ = ε_u + s[(ε_p - ε_u) + Σ_i w_i ⊥(ε_n_i - ε_u, ε_p - ε_u)]
                                                         UNet batch 4B: [p, u, n_1, n_2]
(reference §3.1; prompts.py holds the direction rules and weights).

Text embeddings are computed once per (model source, prompt), outside jit (text_cache.py): in
an explicit `TextEmbeddingCache` the caller owns, and on disk as `<cache_dir>/<sha256>.npy`.
Layouts: latents NHWC inside dc3d_jax; latents.py converts for the NCHW Flax UNet and VAE.
"""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax.priors import latents, noise_schedule, prompts, text_cache
from dc3d_jax.priors.text_cache import TextEmbeddingCache
from dc3d_jax.priors.models import NoiseScheduleConfig, StableDiffusionModels

PREDICTION_TYPES = ("epsilon", "v_prediction")


def encode_prompts(models: StableDiffusionModels, texts: list) -> np.ndarray:
  """[N] prompts -> [N, L, D] float32 last_hidden_state of the CLIP text encoder (padded to
  L = 77, truncated; no attention mask, as SD's pipelines). L is the tokenizer's
  model_max_length, capped by the encoder's positions: a tokenizer folder without
  tokenizer_config.json reports an unbounded length."""
  tok = models.tokenizer
  length = min(tok.model_max_length, models.text_encoder.config.max_position_embeddings)
  ids = tok(list(texts), padding="max_length", max_length=length, truncation=True,
            return_tensors="np").input_ids
  # One compile instead of op-by-op dispatch; a local jit, so no cache outlives the call
  # holding on to the encoder.
  run = jax.jit(lambda params, x: models.text_encoder(x, params=params).last_hidden_state)
  return np.asarray(run(models.params["text_encoder"], jnp.asarray(ids)), np.float32)


def text_embeddings(models: StableDiffusionModels, texts: list, *, cache_dir=None,
                    cache: Optional[TextEmbeddingCache] = None) -> np.ndarray:
  """[N] prompts -> [N, L, D] float32 embeddings, each computed once per (models.source,
  prompt): looked up in `cache` (memory), then in `cache_dir` (disk), else encoded."""
  return text_cache.cached_embeddings(models.source, texts,
                                      lambda missing: encode_prompts(models, missing),
                                      cache_dir=cache_dir, cache=cache)


@dataclasses.dataclass(frozen=True)
class StableDiffusionPrior(prompts.ViewPromptedPrior):
  """The Prior protocol (guidance/sds.py) for Stable Diffusion with view-dependent prompts.

  params: {"unet", "vae", "embeddings" [5, L, D] rows DIRECTIONS + UNCOND}
  (make_stable_diffusion_prior). Thresholds in degrees, conventions in prompts.py.
  """
  unet: Any
  vae: Any
  schedule: NoiseScheduleConfig
  vae_scaling_factor: float = 0.18215
  guidance_scale: float = 20.0
  perp_neg: bool = True
  front_threshold: float = 45.0
  back_threshold: float = 45.0
  overhead_threshold: float = 60.0
  render_size: int = 512

  def __post_init__(self):
    if self.schedule.prediction_type not in PREDICTION_TYPES:
      raise ValueError(f"stable diffusion prediction_type {self.schedule.prediction_type!r}; "
                       f"expected one of {PREDICTION_TYPES}")

  def alphas_cumprod(self) -> np.ndarray:
    return noise_schedule.of_config(self.schedule)

  def encode(self, params, images: jax.Array, key: jax.Array) -> jax.Array:
    """[B, H, W, 3] renders in [0, 1] -> [B, S/f, S/f, 4] scaled posterior sample x
    (S = render_size, f the VAE's downsampling factor)."""
    return latents.encode_renders(self.vae, params["vae"], images, key, size=self.render_size,
                                  scaling=self.vae_scaling_factor)

  def raw_noise(self, params, x_t: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
    """[N, h, w, 4] x_t, [N] t, [N, L, D] -> [N, h, w, 4] ε (float32 like x_t)."""
    out = latents.unet_noise(self.unet, params["unet"], x_t, t, context)
    if self.schedule.prediction_type == "epsilon":
      return out
    # v-prediction (SD 2.1 at 768 px): ε = √ᾱ_t v + √(1-ᾱ_t) x_t.
    a = jnp.asarray(self.alphas_cumprod())[t].reshape((-1, 1, 1, 1))
    return jnp.sqrt(a) * out + jnp.sqrt(1.0 - a) * x_t


def direction_table(models: StableDiffusionModels, prompt: str, negative_prompt: str = "",
                    *, cache_dir=None, cache: Optional[TextEmbeddingCache] = None):
  """[5, L, D] float32 embeddings: prompts.directional_prompts(prompt), then negative_prompt."""
  texts = list(prompts.directional_prompts(prompt)) + [negative_prompt]
  return text_embeddings(models, texts, cache_dir=cache_dir, cache=cache)


def make_stable_diffusion_prior(models: StableDiffusionModels, prompt: str, *,
                                guidance_scale: float, perp_neg: bool,
                                negative_prompt: str = "", front_threshold: float = 45.0,
                                back_threshold: float = 45.0, overhead_threshold: float = 60.0,
                                render_size: int = 512, cache_dir=None,
                                cache: Optional[TextEmbeddingCache] = None):
  """Loaded SD + a prompt -> (StableDiffusionPrior, params). The five embeddings are encoded
  once (or read from the caches) and stored in the UNet's dtype."""
  prior = StableDiffusionPrior(
      unet=models.unet, vae=models.vae, schedule=models.schedule,
      vae_scaling_factor=models.vae_scaling_factor, guidance_scale=guidance_scale,
      perp_neg=perp_neg, front_threshold=front_threshold, back_threshold=back_threshold,
      overhead_threshold=overhead_threshold, render_size=render_size)
  table = direction_table(models, prompt, negative_prompt, cache_dir=cache_dir, cache=cache)
  params = {"unet": models.params["unet"], "vae": models.params["vae"],
            "embeddings": jnp.asarray(table, models.unet.dtype)}
  return prior, params
