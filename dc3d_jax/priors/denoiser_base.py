"""The frozen base model a trained prior copy is fine-tuned from (BSD, reference §4).

A base is an ε-prediction network as a pure function plus a codec between renders and the
network's space, and its DDPM schedule. Conditioning is an opaque pytree the base defines,
batch-major on every leaf (classifier-free guidance concatenates rows):
  LatentUNet     Stable Diffusion: x = s_vae · VAE posterior sample of the render resized to
                 render_size² (s_vae = 0.18215); cond = text embeddings [N, L, D]; an optional
                 class embedding [N, D_t] is added to the UNet's time embedding
                 (camera_embedding.py, DS's camera conditioning).
  PixelDenoiser  any pixel-space ε network `apply_fn(params, x_t, t, cond) -> ε` on a DDPM
                 schedule (the tests' stand-ins): x = 2·render - 1 resized to size², decode
                 the inverse; no class embedding.
  TestbedBase    (priors/testbed_base.py) the project's v-prediction testbed model, its ε
                 from v, its cosine schedule, and per-view conditions (`view_conditions`:
                 reference image + relative camera) instead of a prompt table.
Layouts: x, ε NHWC; images NHWC in [0, 1]; t [N] int32.
A base may also define `view_conditions(cond_params, cameras) -> (c_vd, u, c_vi)`: then BSD's
per-view conditions come from it (TestbedBase) instead of the prompt table
(stages/texture_steps.bsd_conditions).
"""

import dataclasses
from typing import Any, Callable, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax.errors import ConfigError, ModelError
from dc3d_jax.priors import camera_embedding, latents, noise_schedule
from dc3d_jax.priors.models import NoiseScheduleConfig
from dc3d_jax.priors.torch_semantics import torch_semantics


class DenoiserBase(Protocol):
  """What BSD needs from a base model. Implementations are frozen dataclasses (static under
  jit); `params` (the network's, the part a trained copy replaces or adapts) and
  `codec_params` (VAE or nothing) are separate pytrees passed at call time."""
  # Width of the time embedding a class embedding adds to; None if unsupported.
  class_embed_dim: Optional[int]

  def alphas_cumprod(self) -> np.ndarray:
    """[T] ᾱ_t."""

  def apply(self, params, x_t: jax.Array, t: jax.Array, cond: Any,
            class_emb: Optional[jax.Array] = None) -> jax.Array:
    """[N, h, w, c] x_t, [N] t, cond with N rows -> [N, h, w, c] ε (x_t's dtype)."""

  def encode(self, codec_params, images: jax.Array, key: jax.Array) -> jax.Array:
    """[B, H, W, 3] renders in [0, 1] -> [B, h, w, c] x (differentiable)."""

  def decode(self, codec_params, x: jax.Array) -> jax.Array:
    """[B, h, w, c] x -> [B, H, W, 3] images in [0, 1]."""


def check_epsilon(schedule: NoiseScheduleConfig, what: str) -> None:
  if schedule.prediction_type != "epsilon":
    raise ModelError(f"{what}: BSD trains ε-prediction models; this one predicts "
                     f"{schedule.prediction_type!r} (config texture.prior.model: use SD "
                     "2.1-base, not the 768 v-model)")


@dataclasses.dataclass(frozen=True)
class LatentUNet:
  """Stable Diffusion's UNet (diffusers FlaxUNet2DConditionModel) and VAE (FlaxAutoencoderKL).
  params: the UNet's; codec_params: the VAE's."""
  unet: Any
  vae: Any
  schedule: NoiseScheduleConfig = NoiseScheduleConfig()
  vae_scaling_factor: float = 0.18215
  render_size: int = 512

  def __post_init__(self):
    check_epsilon(self.schedule, "LatentUNet")

  @property
  def class_embed_dim(self) -> int:
    return 4 * self.unet.block_out_channels[0]      # diffusers' time_embed_dim

  def alphas_cumprod(self) -> np.ndarray:
    return noise_schedule.of_config(self.schedule)

  def apply(self, params, x_t, t, cond, class_emb=None):
    if class_emb is None:
      return latents.unet_noise(self.unet, params, x_t, t, cond)
    with camera_embedding.added_to_time_embedding(class_emb):
      return latents.unet_noise(self.unet, params, x_t, t, cond)

  def encode(self, codec_params, images, key):
    return latents.encode_renders(self.vae, codec_params, images, key, size=self.render_size,
                                  scaling=self.vae_scaling_factor)

  def decode(self, codec_params, x):
    """Latents -> images: VAE decode of x / s_vae, (y + 1)/2 clipped to [0, 1] (as the
    reference's `_sample`), float32."""
    z = jnp.transpose(x / self.vae_scaling_factor, (0, 3, 1, 2)).astype(self.vae.dtype)
    with torch_semantics():
      y = self.vae.apply({"params": codec_params}, z, method=self.vae.decode).sample
    y = jnp.transpose(y, (0, 2, 3, 1)).astype(jnp.float32)
    return jnp.clip(0.5 * y + 0.5, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class PixelDenoiser:
  """A pixel-space ε network `apply_fn(params, x_t, t, cond)`; codec_params are unused."""
  apply_fn: Callable
  size: int
  schedule: NoiseScheduleConfig = NoiseScheduleConfig()
  class_embed_dim: Optional[int] = None

  def __post_init__(self):
    check_epsilon(self.schedule, "PixelDenoiser")

  def alphas_cumprod(self) -> np.ndarray:
    return noise_schedule.of_config(self.schedule)

  def apply(self, params, x_t, t, cond, class_emb=None):
    if class_emb is not None:
      raise ConfigError("config texture.bsd.camera_condition=True, but a pixel-space base has "
                        "no class embedding; set it False")
    return self.apply_fn(params, x_t, t, cond).astype(x_t.dtype)

  def encode(self, codec_params, images, key):
    b, _, _, c = images.shape
    return 2.0 * jax.image.resize(images, (b, self.size, self.size, c), "bilinear",
                                  antialias=False) - 1.0

  def decode(self, codec_params, x):
    return jnp.clip(0.5 * x.astype(jnp.float32) + 0.5, 0.0, 1.0)
