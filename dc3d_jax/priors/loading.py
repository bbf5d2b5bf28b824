"""Real weight loading for Stable Diffusion and Zero123 into diffusers' / transformers' Flax.

    load_stable_diffusion(model, *, dtype)                 -> StableDiffusionModels
    load_zero123(model, *, dtype, image_encoder=None)      -> Zero123Models
    load_deepfloyd(model, *, dtype)                        -> DeepFloydModels
    load_deepfloyd_unet(folder, *, dtype)                  -> (IFUNet, params)

`model` is a diffusers folder, a model id in the local Hugging Face cache (`resolve.py`),
or, for Zero123, an original LDM checkpoint (`stable_zero123.ckpt`, `zero123-xl.ckpt`, or a
`.safetensors` of the same keys). Nothing is downloaded.

Every source is first reduced to PyTorch-layout state dicts with diffusers / transformers
key names (numpy arrays, storage dtype kept; file reading in `state_dicts.py`, LDM
checkpoints in `ldm_checkpoint.py`); one builder then converts them with the libraries' own
PyTorch -> Flax converters, checks that every parameter is present, and casts floating
parameters to the compute dtype.
"""

import dataclasses
from pathlib import Path

import jax.numpy as jnp

from dc3d_jax.priors import deepfloyd_unet, ldm_checkpoint, resolve
from dc3d_jax.priors.ldm_checkpoint import ClipVisionSource, Zero123Source
from dc3d_jax.priors.models import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, DeepFloydModels,
                                    StableDiffusionModels, Zero123Models)
from dc3d_jax.priors.resolve import ModelNotFoundError
from dc3d_jax.priors.state_dicts import (UnsupportedModelError, cast_floating,
                                         diffusers_to_flax, read_json, read_schedule,
                                         read_state_dict, transformers_to_flax, vae_scaling)
from dc3d_jax.priors.torch_semantics import quiet_libraries

# ---------------------------------------------------------------------------- public API

def load_stable_diffusion(model: str, *, dtype=jnp.float32) -> StableDiffusionModels:
  """Stable Diffusion (UNet, VAE, CLIP text encoder, tokenizer) from a folder or cached id."""
  from transformers import CLIPTokenizer
  found = resolve.resolve_model(model, "stable_diffusion")
  f = found.files
  schedule = read_schedule(f["scheduler_config"])   # cheap checks before reading weights
  unet_config = check_flax_unet_config(read_json(f["unet_config"]))
  with quiet_libraries():
    unet, unet_params = build_unet(unet_config, read_state_dict(f["unet_weights"]), dtype)
    vae_config = read_json(f["vae_config"])
    vae, vae_params = build_vae(vae_config, read_state_dict(f["vae_weights"]), dtype)
    text_encoder, text_params = build_clip_text(
        f["text_encoder_config"].parent, read_state_dict(f["text_encoder_weights"]), dtype)
    tokenizer = CLIPTokenizer.from_pretrained(str(found.path / "tokenizer"),
                                              local_files_only=True)
  params = {"unet": unet_params, "vae": vae_params, "text_encoder": text_params}
  return StableDiffusionModels(
      unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
      params=cast_floating(params, dtype), schedule=schedule,
      vae_scaling_factor=vae_scaling(vae_config), source=str(found.path))


def load_zero123(model: str, *, dtype=jnp.float32,
                 image_encoder: str | None = None) -> Zero123Models:
  """Zero123 from a diffusers folder, a cached id, or an LDM `.ckpt` / `.safetensors`.

  image_encoder: a CLIP vision folder or cached id (CLIPVisionModelWithProjection or a full
  CLIPModel such as openai/clip-vit-large-patch14); required when an LDM checkpoint holds
  no `cond_stage_model.model.visual.*`, and used instead of the bundled encoder if given.
  """
  found = resolve.resolve_model(model, "zero123")
  if found.format == "ldm":
    source = ldm_checkpoint.zero123_from_ldm(found.path)
  else:
    source = zero123_from_folder(found)
  if image_encoder is not None:
    source = dataclasses.replace(source, clip=clip_vision_from_folder(
        resolve.resolve_model(image_encoder, "clip_vision").path))
  if source.clip is None:
    raise ModelNotFoundError(
        f"zero123 checkpoint {model!r} holds no CLIP image encoder "
        "(no cond_stage_model.model.visual.* keys; the original code downloads OpenAI's "
        "ViT-L/14 at run time). Pass image_encoder= a local folder or cached model id of a "
        "CLIP vision model with projection, e.g. openai/clip-vit-large-patch14, holding:\n"
        + resolve.expected_files("clip_vision"))
  with quiet_libraries():
    return build_zero123(source, dtype, origin=str(found.path))


def load_deepfloyd(model: str, *, dtype=jnp.float32) -> DeepFloydModels:
  """DeepFloyd IF stage I (e.g. DeepFloyd/IF-I-XL-v1.0) from a folder or cached id: the UNet
  now, the T5 encoder's files for deepfloyd.text_embeddings (read only if prompts need it)."""
  found = resolve.resolve_model(model, "deepfloyd")
  f = found.files
  schedule = read_schedule(f["scheduler_config"])   # cheap checks before reading weights
  config = deepfloyd_unet.config_from_diffusers(read_json(f["unet_config"]), f["unet_config"])
  if schedule.prediction_type != "epsilon" or config.out_channels != 2 * config.in_channels:
    raise UnsupportedModelError(
        f"{found.path}: prediction_type={schedule.prediction_type!r}, UNet channels "
        f"{config.in_channels} -> {config.out_channels}; IF stage I predicts ε and a learned "
        "variance (3 -> 6 channels)")
  with quiet_libraries():
    unet, params = build_deepfloyd_unet(config, read_state_dict(f["unet_weights"]), dtype,
                                        f["unet_weights"])
  text = {"config_path": f["text_encoder_config"], "weights_path": f["text_encoder_weights"],
          "tokenizer_dir": found.path / "tokenizer"}
  return DeepFloydModels(unet=unet, params={"unet": params}, schedule=schedule,
                         text_encoder=text, dtype=dtype, source=str(found.path))


def load_deepfloyd_unet(folder, *, dtype=jnp.float32):
  """DeepFloyd IF stage I's UNet from its diffusers `unet/` folder (config.json and
  diffusion_pytorch_model[.fp16].safetensors|.bin) -> (deepfloyd_unet.IFUNet, params)."""
  found = resolve.resolve_model(str(folder), "deepfloyd_unet")
  config = deepfloyd_unet.config_from_diffusers(read_json(found.files["config"]),
                                                found.files["config"])
  weights = found.files["weights"]
  return build_deepfloyd_unet(config, read_state_dict(weights), dtype, weights)


def build_deepfloyd_unet(config, state: dict, dtype, origin):
  """(IFUNet, params cast to dtype) from an IFUNetConfig and a diffusers PyTorch state dict;
  ModelError naming `origin` (the weights file) on a missing, unknown or misshapen weight."""
  unet = deepfloyd_unet.IFUNet(config, dtype=dtype)
  try:
    params = diffusers_to_flax(state, unet, str(origin))
  except ValueError as err:   # the converter's shape check
    if isinstance(err, UnsupportedModelError):
      raise
    raise UnsupportedModelError(f"{origin}: {err}") from None
  return unet, cast_floating(params, dtype)


# ------------------------------------------------------------------ UNet and VAE (diffusers)

# UNet2DConditionModel options the Flax UNet does not have: only these values are representable.
_FLAX_UNET_FIXED = dict(
    center_input_sample=False, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, encoder_hid_dim=None,
    encoder_hid_dim_type=None, dual_cross_attention=False, class_embed_type=None,
    num_class_embeds=None, resnet_time_scale_shift="default", resnet_skip_time_act=False,
    resnet_out_scale_factor=1.0, time_embedding_type="positional", time_embedding_dim=None,
    time_embedding_act_fn=None, timestep_post_act=None, time_cond_proj_dim=None,
    conv_in_kernel=3, conv_out_kernel=3, attention_type="default",
    class_embeddings_concat=False, mid_block_only_cross_attention=None,
    cross_attention_norm=None, reverse_transformer_layers_per_block=None)
_FLAX_UNET_BLOCKS = dict(
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
_FLAX_VAE_FIXED = dict(act_fn="silu", use_quant_conv=True, use_post_quant_conv=True,
                       mid_block_add_attention=True, shift_factor=None, latents_mean=None,
                       latents_std=None)


def check_flax_unet_config(config: dict) -> dict:
  """The config, or UnsupportedModelError naming the key FlaxUNet2DConditionModel cannot hold."""
  for key, value in _FLAX_UNET_FIXED.items():
    if config.get(key, value) != value:
      raise UnsupportedModelError(
          f"unet config {key}={config[key]!r}: diffusers' FlaxUNet2DConditionModel supports "
          f"only {key}={value!r} (SD 1.x/2.x and Zero123 UNets)")
  for key, allowed in _FLAX_UNET_BLOCKS.items():
    bad = [b for b in config.get(key, ()) if b not in allowed]
    if bad:
      raise UnsupportedModelError(f"unet config {key} has {bad}; the Flax UNet has only "
                                  f"{allowed}")
  rules = (("mid_block_type", lambda v: v in ("UNetMidBlock2DCrossAttn", None)),
           ("addition_embed_type", lambda v: v in (None, "text_time")),
           ("layers_per_block", lambda v: isinstance(v, int)),
           ("cross_attention_dim", lambda v: isinstance(v, int)))
  for key, ok in rules:
    if key in config and not ok(config[key]):
      raise UnsupportedModelError(
          f"unet config {key}={config[key]!r} cannot be represented by the Flax UNet")
  return config


def _tuples(config: dict) -> dict:
  # Flax modules are hashable dataclasses: list-valued options become tuples.
  return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def build_unet(config: dict, state: dict, dtype):
  """(FlaxUNet2DConditionModel, params) from a diffusers UNet config and PyTorch state."""
  from diffusers import FlaxUNet2DConditionModel
  check_flax_unet_config(config)
  unet = FlaxUNet2DConditionModel.from_config(_tuples(config), dtype=dtype)
  return unet, diffusers_to_flax(state, unet, "unet")


def build_vae(config: dict, state: dict, dtype):
  """(FlaxAutoencoderKL, params) from a diffusers AutoencoderKL config and PyTorch state."""
  from diffusers import FlaxAutoencoderKL
  for key, value in _FLAX_VAE_FIXED.items():
    if config.get(key, value) != value:
      raise UnsupportedModelError(f"vae config {key}={config[key]!r}: FlaxAutoencoderKL "
                                  f"supports only {key}={value!r}")
  vae = FlaxAutoencoderKL.from_config(_tuples(config), dtype=dtype)
  return vae, diffusers_to_flax(state, vae, "vae")


# ----------------------------------------------------------------------- CLIP encoders

def _tower(state: dict, prefix: str) -> dict:
  """One CLIP tower's weights: drops the other tower, projections, logit_scale and the
  position_ids buffer that older checkpoints saved."""
  return {k: v for k, v in state.items()
          if k.startswith(prefix) and not k.endswith("position_ids")}


def build_clip_text(folder: Path, state: dict, dtype):
  """(FlaxCLIPTextModel, params) from a CLIPTextModel folder's config and PyTorch state."""
  from transformers import CLIPTextConfig, FlaxCLIPTextModel
  config = CLIPTextConfig.from_pretrained(str(folder), local_files_only=True)
  model = FlaxCLIPTextModel(config, dtype=dtype, _do_init=False)
  return model, transformers_to_flax(_tower(state, "text_model."), model, "text_encoder")


def clip_vision_from_folder(folder: Path, preprocessor: Path | None = None) -> ClipVisionSource:
  """A CLIPVisionModelWithProjection (or full CLIPModel) folder -> ClipVisionSource."""
  from transformers import CLIPVisionConfig
  found = resolve.resolve_model(str(folder), "clip_vision")
  # from_pretrained takes vision_config out of a full CLIPModel config.
  config = CLIPVisionConfig.from_pretrained(str(found.path), local_files_only=True)
  state = read_state_dict(found.files["weights"])
  if "visual_projection.weight" not in state:
    raise UnsupportedModelError(
        f"{found.files['weights']}: no visual_projection.weight; Zero123 needs the projected "
        "CLIP image embedding (a CLIPVisionModelWithProjection or CLIPModel checkpoint)")
  preprocessor = preprocessor or found.path / "preprocessor_config.json"
  mean, std, size = _clip_preprocessing(preprocessor, config.image_size)
  return ClipVisionSource(config, state, mean, std, size)


def _clip_preprocessing(path: Path, default_size: int):
  """(mean, std, crop size) of a CLIPImageProcessor config, OpenAI's when absent."""
  if path is None or not Path(path).is_file():
    return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, default_size
  config = read_json(path)
  crop = config.get("crop_size", default_size)
  size = crop.get("height", default_size) if isinstance(crop, dict) else int(crop)
  return (tuple(config.get("image_mean", OPENAI_CLIP_MEAN)),
          tuple(config.get("image_std", OPENAI_CLIP_STD)), size)


def build_clip_vision(source: ClipVisionSource, dtype):
  """(FlaxCLIPVisionModel, params, visual_projection params {"kernel": [hidden, proj]})."""
  from transformers import FlaxCLIPVisionModel
  model = FlaxCLIPVisionModel(source.config, dtype=dtype, _do_init=False)
  params = transformers_to_flax(_tower(source.state, "vision_model."), model, "image_encoder")
  # No Flax CLIPVisionModelWithProjection exists: the projection (no bias) is kept apart.
  projection = {"kernel": jnp.asarray(source.state["visual_projection.weight"]).T}
  return model, params, projection


# --------------------------------------------------------------------------- Zero123

def zero123_from_folder(found: resolve.ResolvedModel) -> Zero123Source:
  """A diffusers Zero1to3 folder (unet, vae, image_encoder, cc_projection, scheduler)."""
  f = found.files
  schedule = read_schedule(f["scheduler_config"])   # cheap checks before reading weights
  if schedule.prediction_type != "epsilon":
    raise UnsupportedModelError(
        f"{f['scheduler_config']}: prediction_type={schedule.prediction_type!r}; Zero123 "
        "models predict ε (the Zero123 prior has no v -> ε conversion)")
  unet_config = check_flax_unet_config(read_json(f["unet_config"]))
  vae_config = read_json(f["vae_config"])
  cc_file = f["cc_projection_weights"]
  return Zero123Source(
      unet_config=unet_config, unet_state=read_state_dict(f["unet_weights"]),
      vae_config=vae_config, vae_state=read_state_dict(f["vae_weights"]),
      clip=clip_vision_from_folder(found.path / "image_encoder", f["feature_extractor"]),
      cc_projection=ldm_checkpoint.cc_projection_weights(read_state_dict(cc_file), cc_file),
      schedule=schedule, vae_scaling_factor=vae_scaling(vae_config))


def build_zero123(source: Zero123Source, dtype, origin: str) -> Zero123Models:
  """Flax modules and params (cast to dtype) from a Zero123Source."""
  config = source.unet_config
  if config.get("in_channels") != 2 * config.get("out_channels", 4):
    raise UnsupportedModelError(
        f"zero123 unet in_channels={config.get('in_channels')}: Zero123 concatenates the "
        "reference latent to x_t, so in_channels must be 2 x out_channels (8)")
  unet, unet_params = build_unet(config, source.unet_state, dtype)
  vae, vae_params = build_vae(source.vae_config, source.vae_state, dtype)
  encoder, encoder_params, projection = build_clip_vision(source.clip, dtype)
  cc = {"kernel": jnp.asarray(source.cc_projection["weight"]).T,
        "bias": jnp.asarray(source.cc_projection["bias"])}
  expected = (projection["kernel"].shape[1] + 4, config["cross_attention_dim"])
  if cc["kernel"].shape != expected:
    raise UnsupportedModelError(
        f"cc_projection maps {cc['kernel'].shape[0]} -> {cc['kernel'].shape[1]}; expected "
        f"CLIP embedding + 4 pose numbers -> cross-attention dim, {expected[0]} -> {expected[1]}")
  params = {"unet": unet_params, "vae": vae_params, "image_encoder": encoder_params,
            "visual_projection": projection, "cc_projection": cc}
  return Zero123Models(
      unet=unet, vae=vae, image_encoder=encoder, params=cast_floating(params, dtype),
      schedule=source.schedule, vae_scaling_factor=source.vae_scaling_factor,
      clip_mean=tuple(map(float, source.clip.mean)), clip_std=tuple(map(float, source.clip.std)),
      clip_size=int(source.clip.size), source=origin)


