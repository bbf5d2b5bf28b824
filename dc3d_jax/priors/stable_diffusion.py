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

Text embeddings are computed once per (model source, prompt), outside jit: in an explicit
`TextEmbeddingCache` the caller owns, and on disk as `<cache_dir>/<sha256>.npy`.
Layouts: latents NHWC inside dc3d_jax; latents.py converts for the NCHW Flax UNet and VAE.
"""

import dataclasses
import hashlib
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax.core.types import Camera
from dc3d_jax.priors import latents, noise_schedule, prompts
from dc3d_jax.priors.models import NoiseScheduleConfig, StableDiffusionModels

PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclasses.dataclass
class TextEmbeddingCache:
  """In-memory text embeddings keyed by `embedding_key`; `encoded` counts prompts that went
  through the text encoder (a cache hit leaves it unchanged)."""
  entries: dict = dataclasses.field(default_factory=dict)
  encoded: int = 0


def embedding_key(source: str, prompt: str) -> str:
  """sha256 of (model source, prompt): the cache key and the on-disk file name."""
  return hashlib.sha256(f"{source}\x00{prompt}".encode("utf-8")).hexdigest()


def _load_cached(cache: TextEmbeddingCache, cache_dir, key: str) -> Optional[np.ndarray]:
  if key not in cache.entries and cache_dir is not None:
    path = os.path.join(cache_dir, key + ".npy")
    if os.path.exists(path):
      cache.entries[key] = np.load(path)
  return cache.entries.get(key)


def _store(cache: TextEmbeddingCache, cache_dir, key: str, value: np.ndarray) -> None:
  cache.entries[key] = value
  if cache_dir is not None:
    os.makedirs(cache_dir, exist_ok=True)
    # Write then rename, so a concurrent run never reads a half-written file.
    tmp = os.path.join(cache_dir, f"{key}.{os.getpid()}.tmp.npy")
    np.save(tmp, value)
    os.replace(tmp, os.path.join(cache_dir, key + ".npy"))


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
  if cache_dir is not None and not models.source:
    raise ValueError("text_embeddings: an on-disk cache needs models.source to name the "
                     "weights; otherwise embeddings of different models would collide")
  cache = TextEmbeddingCache() if cache is None else cache
  keys = [embedding_key(models.source, p) for p in texts]
  missing = {k: p for k, p in zip(keys, texts) if _load_cached(cache, cache_dir, k) is None}
  if missing:
    values = encode_prompts(models, list(missing.values()))
    cache.encoded += len(missing)
    for key, value in zip(missing, values):
      _store(cache, cache_dir, key, value)
  return np.stack([cache.entries[k] for k in keys])


@dataclasses.dataclass(frozen=True)
class StableDiffusionPrior:
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

  def condition(self, params, cameras: Camera) -> dict:
    """[B] cameras -> {"context": [k·B, L, D]} with rows [cond, uncond] (k = 2), or with
    Perp-Neg rows [pos, uncond, neg_1, neg_2] (k = 4) plus "neg_weight" [B, 2]."""
    table = params["embeddings"]
    e, a = cameras.elevation_deg, cameras.azimuth_deg
    uncond = jnp.broadcast_to(table[prompts.UNCOND], e.shape + table.shape[1:])
    if not self.perp_neg:
      index = prompts.view_direction(e, a, front_threshold=self.front_threshold,
                                     back_threshold=self.back_threshold,
                                     overhead_threshold=self.overhead_threshold)
      return {"context": jnp.concatenate([table[index], uncond], 0)}
    pos_mix, neg_index, neg_weight = prompts.perp_neg_terms(e, a, self.overhead_threshold)
    n_dir = len(prompts.DIRECTIONS)
    pos = jnp.einsum("bk,kld->bld", pos_mix, table[:n_dir].astype(jnp.float32))
    negs = table[neg_index]
    context = jnp.concatenate([pos.astype(table.dtype), uncond, negs[:, 0], negs[:, 1]], 0)
    return {"context": context, "neg_weight": neg_weight}

  def predict_noise(self, params, x_t: jax.Array, t: jax.Array, cond: dict) -> jax.Array:
    """[B, h, w, 4] x_t, [B] t -> guided ε̂ [B, h, w, 4]; one UNet call on all k·B rows."""
    b = x_t.shape[0]
    k = cond["context"].shape[0] // b
    steps = jnp.tile(jnp.broadcast_to(jnp.asarray(t), (b,)), k)
    eps = self.raw_noise(params, jnp.tile(x_t, (k, 1, 1, 1)), steps, cond["context"])
    branches = eps.reshape((k, b) + x_t.shape[1:])
    if not self.perp_neg:
      return prompts.classifier_free_guidance(branches[1], branches[0], self.guidance_scale)
    negs = jnp.moveaxis(branches[2:], 0, 1)                      # [B, 2, h, w, 4]
    return prompts.perp_neg_combine(branches[1], branches[0], negs, cond["neg_weight"],
                                    self.guidance_scale)

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
