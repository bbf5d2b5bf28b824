"""Real weight loading for Stable Diffusion and Zero123 into diffusers' / transformers' Flax.

    load_stable_diffusion(model, *, dtype)                 -> StableDiffusionModels
    load_zero123(model, *, dtype, image_encoder=None)      -> Zero123Models

`model` is a diffusers folder, a model id in the local Hugging Face cache (`resolve.py`),
or, for Zero123, an original LDM checkpoint (`stable_zero123.ckpt`, `zero123-xl.ckpt`, or a
`.safetensors` of the same keys). Nothing is downloaded.

Every source is first reduced to PyTorch-layout state dicts with diffusers / transformers
key names (numpy arrays, storage dtype kept); one builder then converts them with the
libraries' own PyTorch -> Flax converters, checks that every parameter is present, and
casts floating parameters to the compute dtype.
"""

import dataclasses
import json
import math
import pickle
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax.priors import resolve
from dc3d_jax.priors.models import NoiseScheduleConfig, StableDiffusionModels, Zero123Models
from dc3d_jax.priors.resolve import ModelNotFoundError
from dc3d_jax.priors.torch_semantics import quiet_libraries

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_VAE_SCALING = 0.18215
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")   # noise_schedule.py


class UnsupportedModelError(ValueError):
  """A model whose configuration the Flax classes cannot represent."""


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
      vae_scaling_factor=float(vae_config.get("scaling_factor") or DEFAULT_VAE_SCALING),
      source=str(found.path))


def load_zero123(model: str, *, dtype=jnp.float32,
                 image_encoder: str | None = None) -> Zero123Models:
  """Zero123 from a diffusers folder, a cached id, or an LDM `.ckpt` / `.safetensors`.

  image_encoder: a CLIP vision folder or cached id (CLIPVisionModelWithProjection or a full
  CLIPModel such as openai/clip-vit-large-patch14); required when an LDM checkpoint holds
  no `cond_stage_model.model.visual.*`, and used instead of the bundled encoder if given.
  """
  found = resolve.resolve_model(model, "zero123")
  source = zero123_from_ldm(found.path) if found.format == "ldm" else zero123_from_folder(found)
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


# ----------------------------------------------------------------------- reading files

def read_json(path) -> dict:
  return json.loads(Path(path).read_text())


def read_state_dict(path) -> dict:
  """A weights file -> {name: numpy array} in its storage dtype (bf16 via ml_dtypes)."""
  path = Path(path)
  if path.suffix == ".safetensors":
    import safetensors.numpy
    return safetensors.numpy.load_file(str(path))
  state = torch_load(path)
  if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
    state = state["state_dict"]   # Lightning checkpoints keep the weights under "state_dict"
  return {k: _torch_to_numpy(v) for k, v in state.items() if _is_tensor(v)}


def torch_load(path: Path):
  """torch.load without arbitrary code execution (weights_only), memory-mapped if possible."""
  import torch
  try:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except RuntimeError as err:
    if "mmap" not in str(err):   # old (non-zip) serialization cannot be memory-mapped
      raise
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as err:
    raise UnsupportedModelError(
        f"{path}: torch.load(weights_only=True) refused the file, which pickles more than "
        "tensors. If you trust it, re-save only its weights, e.g. "
        "safetensors.torch.save_file(torch.load(p, weights_only=False)['state_dict'], "
        f"'model.safetensors'), and pass that file.\n({err})") from None


def _is_tensor(value) -> bool:
  import torch
  return isinstance(value, torch.Tensor)


def _torch_to_numpy(tensor) -> np.ndarray:
  import torch
  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:   # numpy has no bf16; reinterpret the bits exactly
    import ml_dtypes
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def read_schedule(path) -> NoiseScheduleConfig:
  """scheduler_config.json -> NoiseScheduleConfig; absent: Zero123's (§3.2) scaled-linear."""
  if path is None:
    return NoiseScheduleConfig()
  config = read_json(path)
  schedule = NoiseScheduleConfig(
      beta_schedule=config.get("beta_schedule", "linear"),
      beta_start=float(config.get("beta_start", 0.0001)),
      beta_end=float(config.get("beta_end", 0.02)),
      num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
      prediction_type=config.get("prediction_type", "epsilon"))
  if schedule.prediction_type != "epsilon":
    raise UnsupportedModelError(
        f"{path}: prediction_type={schedule.prediction_type!r}; only 'epsilon' models are "
        "supported (score distillation here uses ε predictions, e.g. SD 2.1-base, not the "
        "v-prediction SD 2.1 768)")
  if schedule.beta_schedule not in BETA_SCHEDULES or config.get("trained_betas"):
    raise UnsupportedModelError(
        f"{path}: beta_schedule={schedule.beta_schedule!r} / trained_betas not supported; "
        f"expected one of {BETA_SCHEDULES}")
  return schedule


# ---------------------------------------------------------------- PyTorch state -> Flax

class _TensorLike:
  """diffusers' converter calls `.numpy()` on each value, as on a torch tensor."""
  __slots__ = ("value",)

  def __init__(self, value):
    self.value = value

  def numpy(self):
    return self.value


def _flat_keys(tree) -> dict:
  from flax.traverse_util import flatten_dict
  return flatten_dict(dict(tree))


def check_param_names(params, expected, what: str) -> dict:
  """Raises if a parameter is missing or unknown (the library converters pass both)."""
  got, want = _flat_keys(params), _flat_keys(expected)
  missing = sorted(".".join(k) for k in want.keys() - got.keys())
  unknown = sorted(".".join(k) for k in got.keys() - want.keys())
  if missing or unknown:
    raise UnsupportedModelError(
        f"{what}: weights do not match the model config: {len(missing)} missing "
        f"{missing[:8]}, {len(unknown)} unexpected {unknown[:8]}")
  return params


def diffusers_to_flax(state: dict, module, what: str) -> dict:
  """A diffusers PyTorch state dict -> params of the Flax `module` (checked)."""
  from diffusers.models.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax
  # The converter only reads the names and shapes of a random init; eval_shape gives
  # them without running the init (seconds and gigabytes for the real UNet).
  expected = jax.eval_shape(module.init_weights, jax.random.PRNGKey(0))
  shapes_only = types.SimpleNamespace(init_weights=lambda rng: expected)
  params = convert_pytorch_state_dict_to_flax(
      {k: _TensorLike(v) for k, v in state.items()}, shapes_only)
  return check_param_names(params, expected, what)


def transformers_to_flax(state: dict, model, what: str) -> dict:
  """A transformers PyTorch state dict -> params of the Flax `model` (built _do_init=False)."""
  from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax
  expected = jax.eval_shape(lambda rng: model.init_weights(rng, model.input_shape),
                            jax.random.PRNGKey(0))
  shapes_only = types.SimpleNamespace(base_model_prefix=model.base_model_prefix,
                                      params=expected)
  params = convert_pytorch_state_dict_to_flax(dict(state), shapes_only)
  return check_param_names(params, expected, what)


def cast_floating(tree, dtype):
  """Floating leaves -> dtype (diffusers' to_bf16 calls the removed jax.tree_map)."""
  def cast(x):
    x = jnp.asarray(x)
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree_util.tree_map(cast, tree)


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


@dataclasses.dataclass(frozen=True)
class ClipVisionSource:
  """A CLIP image encoder in transformers' PyTorch layout, and its input normalisation."""
  config: object          # transformers.CLIPVisionConfig
  state: dict             # vision_model.* and visual_projection.weight
  mean: tuple = OPENAI_CLIP_MEAN
  std: tuple = OPENAI_CLIP_STD
  size: int = 224


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


def zero123_from_folder(found: resolve.ResolvedModel) -> Zero123Source:
  """A diffusers Zero1to3 folder (unet, vae, image_encoder, cc_projection, scheduler)."""
  f = found.files
  schedule = read_schedule(f["scheduler_config"])   # cheap checks before reading weights
  unet_config = check_flax_unet_config(read_json(f["unet_config"]))
  vae_config = read_json(f["vae_config"])
  return Zero123Source(
      unet_config=unet_config, unet_state=read_state_dict(f["unet_weights"]),
      vae_config=vae_config, vae_state=read_state_dict(f["vae_weights"]),
      clip=clip_vision_from_folder(found.path / "image_encoder", f["feature_extractor"]),
      cc_projection=_cc_projection(read_state_dict(f["cc_projection_weights"]),
                                   f["cc_projection_weights"]),
      schedule=schedule,
      vae_scaling_factor=float(vae_config.get("scaling_factor") or DEFAULT_VAE_SCALING))


def _cc_projection(state: dict, where) -> dict:
  # The public conversions save CCProjection(Linear) as projection.*; accept a bare Linear.
  for prefix in ("projection.", "cc_projection.", ""):
    if f"{prefix}weight" in state and f"{prefix}bias" in state:
      return {"weight": state[f"{prefix}weight"], "bias": state[f"{prefix}bias"]}
  raise UnsupportedModelError(f"{where}: no cc_projection weights (expected projection.weight "
                              f"and projection.bias, or weight and bias); has {sorted(state)}")


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
      cc_projection=_cc_projection({k: v for k, v in state.items()
                                    if k.startswith("cc_projection.")}, path),
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
  layers = 1 + max(int(k.split(".")[2]) for k in visual if k.startswith("transformer.resblocks."))
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
  mean, std = state.get("cond_stage_model.mean"), state.get("cond_stage_model.std")
  return ClipVisionSource(
      config, out,
      mean=tuple(np.asarray(mean, np.float64).ravel()) if mean is not None else OPENAI_CLIP_MEAN,
      std=tuple(np.asarray(std, np.float64).ravel()) if std is not None else OPENAI_CLIP_STD,
      size=config.image_size)
