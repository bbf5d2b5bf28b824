"""DeepFloyd IF stage I as the 2D text-guided SDS prior (the reference's, §3.1).

Symbols: x = 2·B(r) - 1, the render r (or normal map, in [0, 1]) bilinearly resized to 64²
without antialiasing (B) and scaled to [-1, 1]; pixel-space diffusion, no VAE. x_t = √ᾱ_t x +
√(1-ᾱ_t) ε with IF's own schedule (diffusers' cosine "squaredcos_cap_v2", 1000 steps); the
stages' t ranges are IF's, so the drawn step is queried as it is (no SNR mapping: the
Stable Diffusion stand-in's guidance.sd_t_schedule does not apply here). The UNet returns 6
channels: ε (0-2) and the learned variance interpolation (3-5, unused by SDS).
Conditioning is the T5 encoder's [77, E] states per view, from a table of five prompts
(prompts.DIRECTIONS + the negative prompt) picked or Perp-Neg-interpolated by
prompts.view_context; ε̂ = prompts.guided_noise of the UNet's ε on the k·B rows (CFG 20 with
Perp-Neg's four rows in the reference).

The T5 states are computed once per (model folder, prompt) and cached in memory and under the
run's cache/ (text_cache.py); the encoder is loaded only for prompts found in neither, and
dropped after encoding.
"""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax.priors import noise_schedule, prompts, t5_encoder, text_cache
from dc3d_jax.priors.models import DeepFloydModels, NoiseScheduleConfig

RESOLUTION = 64             # IF stage I's image size


def encode_prompts(models: DeepFloydModels, texts: list) -> np.ndarray:
  """[N] prompts -> [N, 77, E] float32 T5 states; the encoder is loaded for this call only."""
  encoder = t5_encoder.load_t5(**models.text_encoder, dtype=models.dtype or jnp.float32)
  return t5_encoder.encode_texts(encoder, texts)


def text_embeddings(models: DeepFloydModels, texts: list, *, cache_dir=None,
                    cache: Optional[text_cache.TextEmbeddingCache] = None) -> np.ndarray:
  """[N] prompts -> [N, 77, E] float32, each encoded once per (models.source, prompt)."""
  return text_cache.cached_embeddings(models.source, texts,
                                      lambda missing: encode_prompts(models, missing),
                                      cache_dir=cache_dir, cache=cache)


def direction_table(models: DeepFloydModels, prompt: str, negative_prompt: str = "", *,
                    cache_dir=None, cache=None) -> np.ndarray:
  """[5, 77, E]: prompts.directional_prompts(prompt), then negative_prompt."""
  texts = list(prompts.directional_prompts(prompt)) + [negative_prompt]
  return text_embeddings(models, texts, cache_dir=cache_dir, cache=cache)


@dataclasses.dataclass(frozen=True)
class DeepFloydPrior(prompts.ViewPromptedPrior):
  """The Prior protocol (guidance/sds.py) for IF stage I with view-dependent prompts.

  params: {"unet", "embeddings" [5, 77, E] rows DIRECTIONS + UNCOND} (make_deepfloyd_prior).
  """
  unet: Any
  schedule: NoiseScheduleConfig
  guidance_scale: float = 20.0
  perp_neg: bool = True
  front_threshold: float = 45.0
  back_threshold: float = 45.0
  overhead_threshold: float = 60.0
  resolution: int = RESOLUTION      # IF-I's 64; smaller only to shrink smoke tests

  def alphas_cumprod(self) -> np.ndarray:
    return noise_schedule.of_config(self.schedule)

  def encode(self, params, images: jax.Array, key: jax.Array) -> jax.Array:
    """[B, H, W, 3] renders in [0, 1] -> [B, R, R, 3] x in [-1, 1], R = resolution (64; `key`
    unused: no VAE).
    Bilinear without antialiasing, as the reference's F.interpolate(align_corners=False)."""
    del key
    b, _, _, c = images.shape
    size = (b, self.resolution, self.resolution, c)
    return 2.0 * jax.image.resize(images, size, "bilinear", antialias=False) - 1.0

  def raw_noise(self, params, x_t: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
    """[N, 64, 64, 3] x_t, [N] t, [N, 77, E] T5 states -> [N, 64, 64, 3] ε (x_t's dtype): the
    first 3 of the UNet's 6 output channels."""
    out = self.unet.apply({"params": params["unet"]}, x_t.astype(self.unet.dtype), t,
                          context.astype(self.unet.dtype))
    return out[..., :x_t.shape[-1]].astype(x_t.dtype)


def make_deepfloyd_prior(models: DeepFloydModels, prompt: str, *, guidance_scale: float,
                         perp_neg: bool, negative_prompt: str = "",
                         front_threshold: float = 45.0, back_threshold: float = 45.0,
                         overhead_threshold: float = 60.0, resolution: int = RESOLUTION,
                         cache_dir=None, cache=None):
  """Loaded IF + a prompt -> (DeepFloydPrior, params). The five T5 embeddings are encoded
  once (or read from the caches) and stored in the UNet's dtype."""
  prior = DeepFloydPrior(unet=models.unet, schedule=models.schedule,
                         guidance_scale=guidance_scale, perp_neg=perp_neg,
                         front_threshold=front_threshold, back_threshold=back_threshold,
                         overhead_threshold=overhead_threshold, resolution=resolution)
  table = direction_table(models, prompt, negative_prompt, cache_dir=cache_dir, cache=cache)
  params = {"unet": models.params["unet"], "embeddings": jnp.asarray(table, models.unet.dtype)}
  return prior, params
