"""Stage 0: a text prompt -> the reference image, with diffusers' FlaxStableDiffusionPipeline.

The pipeline is assembled from already-loaded `StableDiffusionModels` (no download, no second
copy of the weights). It samples with classifier-free guidance,
ε̂ = ε_u + s·(ε_c − ε_u), s = guidance_scale, where ε_u is the prediction for the negative
prompt ("" by default).

Sampler: DPM-Solver++ (2nd-order multistep) on the model's own training β schedule: the
sampler the reference's stage 3 uses. Not PNDM: with skip_prk_steps the Flax PNDM lays out
steps + 1 timesteps while the Flax pipeline loops exactly `steps` times.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax.core import rng
from dc3d_jax.priors.models import NoiseScheduleConfig, StableDiffusionModels
from dc3d_jax.priors.torch_semantics import torch_semantics


def make_scheduler(schedule: NoiseScheduleConfig) -> tuple:
  """(FlaxDPMSolverMultistepScheduler, its state) with the model's training schedule."""
  from diffusers import FlaxDPMSolverMultistepScheduler
  scheduler = FlaxDPMSolverMultistepScheduler(
      num_train_timesteps=schedule.num_train_timesteps, beta_start=schedule.beta_start,
      beta_end=schedule.beta_end, beta_schedule=schedule.beta_schedule,
      prediction_type=schedule.prediction_type)
  return scheduler, scheduler.create_state()


def size_multiple(models: StableDiffusionModels) -> int:
  """Pixels per latent cell times the UNet's total down-sampling (64 for SD: 8 · 2³)."""
  vae_factor = 2 ** (len(models.vae.config.block_out_channels) - 1)
  unet_factor = 2 ** (len(models.unet.config.block_out_channels) - 1)
  return vae_factor * unet_factor


def _check_arguments(models: StableDiffusionModels, prompt, steps: int, size: int) -> None:
  multiple = size_multiple(models)
  if size < multiple or size % multiple:
    raise ValueError(f"text-to-image size {size} must be a positive multiple of {multiple} "
                     "(the VAE's and the UNet's down-sampling); e.g. 512 for Stable Diffusion")
  if steps < 1:
    raise ValueError(f"text-to-image steps must be >= 1, got {steps}")
  if not isinstance(prompt, str) or not prompt.strip():
    raise ValueError(f"text-to-image needs a non-empty prompt string, got {prompt!r}")
  if abs(models.vae.config.scaling_factor - models.vae_scaling_factor) > 1e-9:
    # The pipeline unscales latents with the VAE's config; the rest of the project uses
    # models.vae_scaling_factor. They must be the same number.
    raise ValueError(f"VAE config scaling_factor {models.vae.config.scaling_factor} differs "
                     f"from models.vae_scaling_factor {models.vae_scaling_factor}")


def make_pipeline(models: StableDiffusionModels) -> tuple:
  """(FlaxStableDiffusionPipeline, params incl. the scheduler state), no safety checker."""
  from diffusers import FlaxStableDiffusionPipeline
  scheduler, scheduler_state = make_scheduler(models.schedule)
  pipe = FlaxStableDiffusionPipeline(
      vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer,
      unet=models.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None)
  params = {name: models.params[name] for name in ("unet", "vae", "text_encoder")}
  return pipe, {**params, "scheduler": scheduler_state}


class TextToImage:
  """Stage 0's sampler for one set of models: prompt -> [size, size, 3] float32 in [0, 1].

  Holds the assembled pipeline and its sampler compiled as one jitted program, so images
  with other prompts, seeds or guidance scales reuse the compilation; a new (steps, size)
  compiles again.
  """

  def __init__(self, models: StableDiffusionModels):
    self.models = models
    with torch_semantics():
      self._pipe, self._params = make_pipeline(models)
    # The pipeline's own sampler (`_generate`: CFG denoising loop, VAE decode), jitted whole.
    # Not `pipe(..., jit=False)`: that runs the text encoder and VAE decoder op by op, so each
    # process compiles hundreds of small kernels (15-20 s for a tiny model on 2 CPU cores)
    # that the persistent compilation cache cannot keep. Not `jit=True`: it pmaps and needs
    # the params replicated, a second copy of the weights. diffusers is pinned at 0.39.0,
    # its last release with Flax, so this private method cannot change under us.
    self._generate = jax.jit(self._pipe._generate, static_argnums=(3, 4, 5))

  def __call__(self, prompt: str, *, negative_prompt: str = "", steps: int = 50,
               guidance_scale: float = 7.5, size: int = 512, seed: int = 0) -> np.ndarray:
    _check_arguments(self.models, prompt, steps, size)
    prompt_ids = self._pipe.prepare_inputs([prompt])
    negative_ids = self._pipe.prepare_inputs([negative_prompt])
    key = rng.key_for(rng.root_key(seed), "text_to_image", 0)
    # As pipe.__call__ does: one float32 guidance scale per prompt.
    guidance = jnp.full((prompt_ids.shape[0],), guidance_scale, jnp.float32)
    with torch_semantics():
      images = self._generate(prompt_ids, self._params, key, steps, size, size, guidance, None,
                              negative_ids)
    image = np.asarray(jax.device_get(images), np.float32)[0]
    if not np.isfinite(image).all():
      raise FloatingPointError("text-to-image produced NaN/Inf pixels (check the weights' "
                               "dtype)")
    return image


def generate_image(models: StableDiffusionModels, prompt: str, *, negative_prompt: str = "",
                   steps: int = 50, guidance_scale: float = 7.5, size: int = 512,
                   seed: int = 0) -> np.ndarray:
  """One image for `prompt`: [size, size, 3] float32 in [0, 1] (straight RGB, no alpha).

  The initial latent noise comes from key_for(root_key(seed), "text_to_image", 0), so a seed
  always gives the same image. One image on the default device (no pmap). For several
  images from the same models, build one TextToImage and call it.
  """
  return TextToImage(models)(prompt, negative_prompt=negative_prompt, steps=steps,
                             guidance_scale=guidance_scale, size=size, seed=seed)
