"""Zero123 in PyTorch layout with diffusers / transformers key names, from any source, and
the conversion of original LDM checkpoints (`stable_zero123.ckpt`, `zero123-xl.ckpt`).

The UNet and VAE go through diffusers' own LDM converters; the OpenAI-CLIP image encoder is
mapped to transformers' CLIPVisionModel names here; cc_projection is a plain Linear.
"""

import dataclasses
import math
from pathlib import Path

import numpy as np

from dc3d_jax.priors.models import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, NoiseScheduleConfig
from dc3d_jax.priors.state_dicts import DEFAULT_VAE_SCALING, UnsupportedModelError, read_state_dict
from dc3d_jax.priors.torch_semantics import quiet_libraries


@dataclasses.dataclass(frozen=True)
class ClipVisionSource:
  """A CLIP image encoder in transformers' PyTorch layout, and its input normalisation."""
  config: object          # transformers.CLIPVisionConfig
  state: dict             # vision_model.* and visual_projection.weight
  mean: tuple = OPENAI_CLIP_MEAN
  std: tuple = OPENAI_CLIP_STD
  size: int = 224


@dataclasses.dataclass(frozen=True)
class Zero123Source:
  """Zero123 in PyTorch layout with diffusers / transformers names, whatever the file format."""
  unet_config: dict
  unet_state: dict
  vae_config: dict
  vae_state: dict
  clip: ClipVisionSource | None
  cc_projection: dict     # {"weight": [out, in], "bias": [out]}
  schedule: NoiseScheduleConfig
  vae_scaling_factor: float = DEFAULT_VAE_SCALING


def cc_projection_weights(state: dict, where) -> dict:
  # The public conversions save CCProjection(Linear) as projection.*; accept a bare Linear.
  for prefix in ("projection.", "cc_projection.", ""):
    if f"{prefix}weight" in state and f"{prefix}bias" in state:
      return {"weight": state[f"{prefix}weight"], "bias": state[f"{prefix}bias"]}
  raise UnsupportedModelError(f"{where}: no cc_projection weights (expected projection.weight "
                              f"and projection.bias, or weight and bias); has {sorted(state)}")


# ------------------------------------------------------------- Zero123 LDM checkpoints

LDM_UNET = "model.diffusion_model."
LDM_VAE = "first_stage_model."
LDM_VISUAL = "cond_stage_model.model.visual."
# sd-objaverse-finetune-c_concat-256.yaml facts that tensor shapes cannot tell:
LDM_NUM_HEADS = 8            # num_heads (the same at every level)
LDM_LATENT_SIZE = 32         # image_size: 256 px / 8
LDM_NORM_GROUPS = 32


def zero123_from_ldm(path: Path) -> Zero123Source:
  """An original Zero123 LatentDiffusion checkpoint -> Zero123Source (diffusers names)."""
  from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint,
                                                   convert_ldm_vae_checkpoint)
  state = read_state_dict(path)
  unet = ldm_unet_weights(state, path)
  vae = {k[len(LDM_VAE):]: v for k, v in state.items() if k.startswith(LDM_VAE)}
  if not vae:
    raise UnsupportedModelError(f"{path}: no {LDM_VAE}* keys (the kl-f8 VAE)")
  unet_config, vae_config = ldm_unet_config(unet), ldm_vae_config(vae)
  with quiet_libraries():
    unet_state = convert_ldm_unet_checkpoint({LDM_UNET + k: v for k, v in unet.items()},
                                             unet_config)
    vae_state = convert_ldm_vae_checkpoint({LDM_VAE + k: v for k, v in vae.items()},
                                           vae_config)
  visual = {k[len(LDM_VISUAL):]: v for k, v in state.items() if k.startswith(LDM_VISUAL)}
  return Zero123Source(
      unet_config=unet_config, unet_state=unet_state, vae_config=vae_config,
      vae_state=vae_state, clip=openai_visual_to_hf(visual, state) if visual else None,
      cc_projection=cc_projection_weights(
          {k: v for k, v in state.items() if k.startswith("cc_projection.")}, path),
      schedule=NoiseScheduleConfig(),   # linear_start/end 0.00085/0.012, 1000 steps
      vae_scaling_factor=DEFAULT_VAE_SCALING)


def ldm_unet_weights(state: dict, path) -> dict:
  """The UNet's weights without prefix, EMA copies preferred (§3.2: the EMA weights are
  copied in). As LitEma.copy_to, a weight without an EMA copy keeps its raw value."""
  unet = {k[len(LDM_UNET):]: v for k, v in state.items() if k.startswith(LDM_UNET)}
  if not unet:
    raise UnsupportedModelError(f"{path}: no {LDM_UNET}* keys; not a LatentDiffusion "
                                "checkpoint")
  # LitEma keeps each parameter under its name without dots: model_ema.diffusion_model...
  return {k: state.get("model_ema." + f"diffusion_model.{k}".replace(".", ""), v)
          for k, v in unet.items()}


def ldm_unet_config(unet: dict) -> dict:
  """A diffusers UNet config from openaimodel.UNetModel weight shapes (+ the yaml facts)."""
  blocks = 1 + max(int(k.split(".")[1]) for k in unet if k.startswith("input_blocks."))
  levels = 1 + sum(k.endswith(".op.weight") for k in unet)
  if (blocks - levels) % levels:
    raise UnsupportedModelError("LDM UNet with unequal num_res_blocks per level: not "
                                "representable in diffusers")
  layers = (blocks - levels) // levels
  first = [1 + level * (layers + 1) for level in range(levels)]
  channels = tuple(int(unet[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0]) for i in first)
  attention = [f"input_blocks.{i}.1.proj_in.weight" in unet for i in first]
  if "middle_block.1.proj_in.weight" not in unet:
    raise UnsupportedModelError("LDM UNet without middle-block attention: not an SD UNet")
  proj_in = unet["middle_block.1.proj_in.weight"]
  context = next(v for k, v in unet.items() if k.endswith("attn2.to_k.weight")).shape[1]
  depth = 1 + max(int(k.split(".")[3]) for k in unet
                  if k.startswith("middle_block.1.transformer_blocks."))
  return dict(
      sample_size=LDM_LATENT_SIZE, in_channels=int(unet["input_blocks.0.0.weight"].shape[1]),
      out_channels=int(unet["out.2.weight"].shape[0]),
      down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
      up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D"
                           for a in reversed(attention)),
      block_out_channels=channels, layers_per_block=layers,
      attention_head_dim=LDM_NUM_HEADS,   # diffusers' name for the head count
      cross_attention_dim=int(context), use_linear_projection=proj_in.ndim == 2,
      transformer_layers_per_block=depth, norm_num_groups=LDM_NORM_GROUPS,
      flip_sin_to_cos=True, freq_shift=0)   # LDM timestep_embedding: [cos, sin], no shift


def ldm_vae_config(vae: dict) -> dict:
  """A diffusers AutoencoderKL config from ldm AutoencoderKL weight shapes (kl-f8 facts)."""
  levels = 1 + max(int(k.split(".")[2]) for k in vae if k.startswith("encoder.down."))
  layers = 1 + max(int(k.split(".")[4]) for k in vae if k.startswith("encoder.down.0.block."))
  channels = tuple(int(vae[f"encoder.down.{i}.block.0.conv2.weight"].shape[0])
                   for i in range(levels))
  return dict(
      in_channels=int(vae["encoder.conv_in.weight"].shape[1]),
      out_channels=int(vae["decoder.conv_out.weight"].shape[0]),
      down_block_types=("DownEncoderBlock2D",) * levels,
      up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=channels,
      layers_per_block=layers, latent_channels=int(vae["post_quant_conv.weight"].shape[0]),
      norm_num_groups=LDM_NORM_GROUPS, sample_size=8 * LDM_LATENT_SIZE,
      scaling_factor=DEFAULT_VAE_SCALING, act_fn="silu")


_OPENAI_LAYER_TO_HF = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1",
                       "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def openai_visual_to_hf(visual: dict, state: dict) -> ClipVisionSource:
  """OpenAI CLIP `visual.*` weights -> CLIPVisionModelWithProjection names and config."""
  from transformers import CLIPVisionConfig
  conv1, pos = visual["conv1.weight"], visual["positional_embedding"]
  width, patch = conv1.shape[0], conv1.shape[-1]
  layers = 1 + max(int(k.split(".")[2]) for k in visual
                   if k.startswith("transformer.resblocks."))
  config = CLIPVisionConfig(
      hidden_size=width, num_hidden_layers=layers,
      intermediate_size=visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
      num_attention_heads=max(1, width // 64),   # OpenAI CLIP: heads = width / 64
      image_size=patch * math.isqrt(pos.shape[0] - 1), patch_size=patch,
      num_channels=conv1.shape[1], projection_dim=visual["proj"].shape[1],
      hidden_act="quick_gelu", layer_norm_eps=1e-5)
  p = "vision_model."
  out = {p + "embeddings.patch_embedding.weight": conv1,
         p + "embeddings.class_embedding": visual["class_embedding"],
         p + "embeddings.position_embedding.weight": pos,
         "visual_projection.weight": np.ascontiguousarray(visual["proj"].T)}
  for openai, hf in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
    for leaf in ("weight", "bias"):
      out[f"{p}{hf}.{leaf}"] = visual[f"{openai}.{leaf}"]
  for i in range(layers):
    src, dst = f"transformer.resblocks.{i}.", f"{p}encoder.layers.{i}."
    for leaf in ("weight", "bias"):   # nn.MultiheadAttention fuses q, k, v row-wise
      for name, part in zip("qkv", np.split(visual[f"{src}attn.in_proj_{leaf}"], 3)):
        out[f"{dst}self_attn.{name}_proj.{leaf}"] = part
      for openai, hf in _OPENAI_LAYER_TO_HF.items():
        out[f"{dst}{hf}.{leaf}"] = visual[f"{src}{openai}.{leaf}"]
  def stored(name, default):   # the embedder's normalisation buffers, when saved
    value = state.get(f"cond_stage_model.{name}")
    return default if value is None else tuple(np.asarray(value, np.float64).ravel())
  return ClipVisionSource(config, out, mean=stored("mean", OPENAI_CLIP_MEAN),
                          std=stored("std", OPENAI_CLIP_STD), size=config.image_size)
