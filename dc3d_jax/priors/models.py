"""Loaded diffusion models: Flax module definitions (static) plus their parameter pytrees.

These containers are what `priors/loading.py` returns and what the guidance priors
(`stable_diffusion.py`, `zero123.py`) and stage 0 consume. Modules are diffusers' /
transformers' Flax classes; params are plain pytrees of jnp arrays (cast to the compute dtype
by the loader), so they can be passed into jitted steps as frozen, non-donated arguments.

Layout conventions at this boundary (docs/ARCHITECTURE.md): images NHWC in [0, 1]; latents NHWC. The
diffusers Flax VAE takes NCHW pixels in [-1, 1] and returns NHWC latents; its decoder returns
NCHW. Conversion happens in the priors, nowhere else.
"""

import dataclasses
from typing import Any

# OpenAI CLIP's input normalisation (ViT-L/14), the default of every CLIP image encoder here.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class NoiseScheduleConfig:
  """The DDPM training schedule of a model (diffusers scheduler_config.json fields)."""
  beta_schedule: str = "scaled_linear"
  beta_start: float = 0.00085
  beta_end: float = 0.012
  num_train_timesteps: int = 1000
  prediction_type: str = "epsilon"


@dataclasses.dataclass(frozen=True, eq=False)
class StableDiffusionModels:
  """Stable Diffusion (2.1-base in the reference): UNet, VAE, CLIP text encoder, tokenizer.

  unet: diffusers.FlaxUNet2DConditionModel; vae: diffusers.FlaxAutoencoderKL;
  text_encoder: transformers.FlaxCLIPTextModel (params kept apart in `params`);
  tokenizer: transformers.CLIPTokenizer; params: {"unet", "vae", "text_encoder"}.
  """
  unet: Any
  vae: Any
  text_encoder: Any
  tokenizer: Any
  params: dict
  schedule: NoiseScheduleConfig
  vae_scaling_factor: float = 0.18215
  source: str = ""            # where the weights came from (for logs and metrics.json)


@dataclasses.dataclass(frozen=True, eq=False)
class Zero123Models:
  """Zero123 (Stable-Zero123 / zero123-xl): 8-channel UNet, VAE, CLIP image encoder with its
  projection, and the 772 -> 768 cc_projection.

  image_encoder: transformers.FlaxCLIPVisionModel; params: {"unet", "vae", "image_encoder",
  "visual_projection" ({"kernel": [hidden, 768]}, no bias), "cc_projection" ({"kernel":
  [772, 768], "bias": [768]})}. clip_mean / clip_std / clip_size: the image encoder's input
  normalisation (OpenAI CLIP's by default).
  """
  unet: Any
  vae: Any
  image_encoder: Any
  params: dict
  schedule: NoiseScheduleConfig
  vae_scaling_factor: float = 0.18215
  clip_mean: tuple = OPENAI_CLIP_MEAN
  clip_std: tuple = OPENAI_CLIP_STD
  clip_size: int = 224
  source: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class DeepFloydModels:
  """DeepFloyd IF stage I (IF-I-XL in the reference): the pixel-space UNet and where its T5
  encoder lives. The encoder (4.7 B parameters for T5-XXL) is not kept: deepfloyd.py loads it
  only to embed prompts found in no cache, then lets it go.

  unet: deepfloyd_unet.IFUNet; params: {"unet"} in `dtype`; text_encoder: {"config_path",
  "weights_path", "tokenizer_dir"} (t5_encoder.load_t5's arguments).
  """
  unet: Any
  params: dict
  schedule: NoiseScheduleConfig
  text_encoder: dict
  dtype: Any = None
  source: str = ""
